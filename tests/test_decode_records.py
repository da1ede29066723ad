"""decode.decode_records (the numba decoder of a batch: the small tensors of every encoding in one
kernel call, kernels.decode_records) against decoding each tensor in turn (decode.decode_tensor):
the same arrays for every valid tensor, the same first error (class and message) for damaged ones."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import DczError, decode
from dcformat.encode import encode_codebook, encode_float_planes, encode_raw

sys.path.insert(0, str(Path(__file__).parent))
from test_npdecode import _damaged, _same, _tensors  # noqa: E402 - tensors of every encoding, dtype and lane size


def _more(seed=1):
    """What _tensors lacks: raw tensors of every dtype (bool, ints, -0.0 and NaN in floats), empty and
    scalar tensors, float-planes with stored planes only, tensors past RECORDS_MAX_SYMBOLS (decoded by
    decode_tensor) between small ones, codebook tensors of float16/float64, a sparse one of no entries."""
    rng = np.random.default_rng(seed)
    out = []
    for dt in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
               "uint8"):
        a = (rng.integers(-3, 3, 37) * (rng.random(37) < 0.5)).astype(dt)
        out.append(encode_raw(f"raw.{dt}", a))
    f = np.array([0.0, -0.0, np.nan, 1.0, -np.inf, 0.0], np.float32)
    out.append(encode_raw("raw.signed_zero_nan", f))
    out.append(encode_raw("raw.bool", rng.random(50) < 0.3))
    out.append(encode_raw("raw.empty", np.zeros((0, 3), np.float32)))
    out.append(encode_raw("raw.scalar", np.array(2.5, np.float32)))
    out.append(encode_float_planes("fp.empty", np.zeros((4, 0), np.float32)))
    out.append(encode_float_planes("fp.noise", rng.integers(0, 2**32, 700, dtype=np.uint64).astype(np.uint32)
                                   .view(np.float32)))  # stored planes
    out.append(encode_float_planes("fp.zero", np.zeros(3000, np.float32), lane_size=256))  # one-symbol codes
    out.append(encode_float_planes("fp.big", (rng.standard_normal(decode.RECORDS_MAX_SYMBOLS) * 0.1)
                                   .astype(np.float32)))
    out.append(encode_float_planes("fp.after_big", (rng.standard_normal(999) * 0.1).astype(np.float16)))
    cb = np.sort(rng.standard_normal(20)).astype(np.float32)
    out.append(encode_codebook("dense.big", cb, rng.integers(0, 20, decode.RECORDS_MAX_SYMBOLS), (1 << 17,),
                               encoding="codebook-dense"))
    for dt in ("float16", "float64"):
        out.append(encode_codebook(f"dense.{dt}", cb, rng.integers(0, 20, 3000), (30, 100), dt,
                                   encoding="codebook-dense", lane_size=512))
        out.append(encode_codebook(f"sparse.{dt}", np.concatenate([[0.0], cb[1:]]).astype(np.float32),
                                   rng.integers(0, 20, 3000) * (rng.random(3000) < 0.2), (3000,), dt,
                                   encoding="codebook-sparse", lane_size=512, gap_bits=4))
    out.append(encode_codebook("sparse.none", np.ones(1, np.float32), np.zeros(40, np.int64), (40,),
                               encoding="codebook-sparse"))
    out.append(encode_codebook("dense.one_symbol", cb[:1], np.zeros(2000, np.int64), (2000,),
                               encoding="codebook-dense", lane_size=256))
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "all.dcz"
    dcformat.write(path, _tensors() + _more())
    return path


def _in_turn(path):
    """Every tensor decoded in turn by decode_tensor (reader[name]): arrays, or the first error."""
    try:
        with dcformat.open(path) as r:
            return {n: r[n] for n in r}
    except DczError as e:
        return f"{type(e).__name__}: {e}"


def _records(path, names=None):
    """decode_many on the numba decoder (decode_records for each run of sections)."""
    try:
        with dcformat.open(path) as r:
            got = r.decode_many(list(r) if names is None else names)
            return {n: got[n] for n in r}
    except DczError as e:
        return f"{type(e).__name__}: {e}"


@pytest.fixture(params=["serial", "parallel"])
def numba_decoder(request, monkeypatch):
    """The numba decoder; its batches in one serial kernel call, or in runs decoded in parallel
    (kernels.decode_records_parallel, which a batch of this size does not reach by itself) with the lzma
    tensors on a thread of their own (decode._LzmaThread, which this file's small ones do not reach)."""
    monkeypatch.setenv("DCZ_DECODER", "numba")
    if request.param == "parallel":
        from dcformat import kernels

        monkeypatch.setattr(decode, "RECORDS_PARALLEL", 0)
        monkeypatch.setattr(decode, "LZMA_THREAD_MIN_BYTES", 0)
        monkeypatch.setattr(kernels, "threads", lambda: 3)
    return request.param


def test_records_give_decode_tensor_arrays(sample, numba_decoder):
    want, got = _in_turn(sample), _records(sample)
    assert not isinstance(want, str), want
    assert _same(want, got)
    with dcformat.open(sample) as r:
        names = list(r)
        assert {r.info(n).encoding for n in names} == {"raw", "codebook-dense", "codebook-sparse", "float-planes",
                                                       "lzma"}
        assert got["raw.signed_zero_nan"].tobytes() == r["raw.signed_zero_nan"].tobytes()
        # every small tensor of an encoding the kernel takes went through it (none fell back to decode_tensor)
        batch = [(r.info(n), r._section_bytes(r._tensor_sections[n], n)) for n in names]
    fell = []
    orig = decode.decode_tensor
    try:
        decode.decode_tensor = lambda i, s: fell.append(i.name) or orig(i, s)
        again = decode.decode_records(batch)  # sections copied together (no span)
    finally:
        decode.decode_tensor = orig
    assert _same(want, again)
    assert sorted(fell) == sorted(n for n in names if n.startswith(("lzma", "scaled_dense", "scaled_sparse", "fp.big",
                                                                    "dense.big", "empty", "raw.empty", "fp.empty"))
                                  and not n.endswith("float32")), fell


def test_lzma_thread_decodes_the_lzma_tensors(sample, monkeypatch):
    """Past LZMA_THREAD_MIN_BYTES the lzma tensors of a batch are decoded on a second thread, beside the
    kernels: the same arrays; one whose stream is damaged raises the error decoding in turn raises."""
    import threading

    monkeypatch.setenv("DCZ_DECODER", "numba")
    monkeypatch.setattr(decode, "LZMA_THREAD_MIN_BYTES", 0)
    want = _in_turn(sample)
    threads = set()
    orig = decode._inflate_lzma
    monkeypatch.setattr(decode, "_inflate_lzma", lambda *a: threads.add(threading.current_thread().name) or orig(*a))
    assert _same(want, _records(sample))
    assert threads == {"dcz-lzma"}
    with dcformat.open(sample) as r:
        names = list(r)
        batch = [(r.info(n), r._section_bytes(r._tensor_sections[n], n).copy()) for n in names]
    k = next(i for i, (info, _) in enumerate(batch) if info.encoding == "lzma")
    batch[k][1][-2:] ^= 0xFF  # the end of the stream: an error the in-turn decode names
    with pytest.raises(DczError) as e1:
        decode.decode_tensor(*batch[k])
    with pytest.raises(type(e1.value), match=re.escape(str(e1.value))):
        decode.decode_records(batch)


def test_records_in_any_order_and_subsets(sample, numba_decoder):
    want = _in_turn(sample)
    with dcformat.open(sample) as r:
        names = list(r)
        rng = random.Random(3)
        for _ in range(5):
            pick = rng.sample(names, rng.randrange(1, len(names)))
            got = r.decode_many(pick)
            assert got.keys() == set(pick)
            assert all(got[n].dtype == want[n].dtype and got[n].shape == want[n].shape
                       and got[n].tobytes() == want[n].tobytes() for n in pick)


def test_damaged_tensors_fail_as_in_turn(sample, tmp_path, numba_decoder):
    """Random damage to tensor sections, checksums fixed: decode_records accepts, or raises the error
    decoding in turn raises first."""
    path = tmp_path / "fuzz.dcz"
    outcomes = {"ok": 0, "rejected": 0}
    for trial, data in enumerate(_damaged(sample, "records-fuzz", 200)):
        path.write_bytes(data)
        a, b = _in_turn(path), _records(path)
        assert _same(a, b), f"trial {trial}: in turn {a if isinstance(a, str) else 'ok'} / records {b if isinstance(b, str) else 'ok'}"
        outcomes["rejected" if isinstance(a, str) else "ok"] += 1
    assert outcomes["rejected"] > 80 and outcomes["ok"] > 5


def test_stream_header_checks_match_parse_stream():
    """kernels._parse_stream accepts exactly the stream parts streams.parse_stream accepts, and builds its
    decode table and lane offsets: random code-length tables (complete, over- and under-subscribed, one
    symbol), odd alphabets with the spare nibble set, padding, lane tables."""
    from dcformat import kernels
    from dcformat.streams import encode_stream, parse_stream

    rng = np.random.default_rng(5)
    agree = {True: 0, False: 0}
    for trial in range(400):
        a = int(rng.integers(1, 258))
        n = int(rng.integers(1, 3000))
        lane = int(rng.choice([256, 512, 1024]))
        f = rng.integers(0, 50, a) * (rng.random(a) < 0.6)
        f[int(rng.integers(a))] += 1
        syms = rng.choice(a, n, p=f / f.sum())
        part = encode_stream(syms, a, lane).copy()
        for _ in range(int(rng.choice([0, 0, 1, 2]))):
            head = min(part.size, (a + 1) // 2 + 16)  # mostly the code lengths, padding and first lane offsets
            part[int(rng.integers(head if rng.random() < 0.7 else part.size))] = int(rng.integers(256))
        try:
            ref = parse_stream(part, n, a, lane, "t", 0)
        except DczError:
            ref = None
        offs = np.zeros(-(-n // lane), np.int64)
        table = np.zeros(1 << 15, np.uint16)
        bits, pstart, psize = kernels._parse_stream(part, 0, part.size, n, a, lane, offs, table)
        assert (bits >= 0) == (ref is not None), trial
        agree[ref is not None] += 1
        if ref is not None:
            assert bits == ref.table_bits and np.array_equal(table[: 1 << bits], ref.table)
            assert np.array_equal(offs, ref.lane_offsets) and psize == ref.payload.size and pstart == part.size - psize
    assert agree[True] > 100 and agree[False] > 80

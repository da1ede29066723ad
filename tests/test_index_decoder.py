"""The codebook index decoders' paths (kernels.decode_dense / decode_sparse), each against the array
that was encoded and against the numpy decoder (dcformat/npdecode.py, which shares no code with them).

The kernels decode groups of four lanes interleaved into scratch rows (four full lanes), other lanes
alone; with codes of at most PAIR_MAX_BITS bits (and a stream long enough to pay for the table) up to
three codes a lookup, else one. The reference encoder limits index and gap codes to INDEX_CODE_LENGTH
bits, other writers may use up to 15: Fibonacci symbol counts give the longest codes a limit allows.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import dcformat
from dcformat import kernels
from dcformat.constants import INDEX_CODE_LENGTH, MAX_CODE_LENGTH
from dcformat.streams import parse_stream

FIB = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597])  # 4180 in all
LANE = 256


def _fib_indices(n: int, k: int, rng) -> np.ndarray:
    """n indices over k symbols whose counts follow FIB (the pool repeated or cut to n), shuffled."""
    pool = np.repeat(np.arange(k), np.resize(FIB, k))
    return rng.permutation(np.resize(pool, n))


def _decode_all_ways(tmp_path, monkeypatch, t, want):
    """The tensor decoded by decode_tensor (numba), by decode_many (decode_records, numba) and by the
    numpy decoder, each bit for bit the array that was encoded."""
    path = tmp_path / "t.dcz"
    dcformat.write(path, [t])
    got = []
    for decoder in ("numba", "numpy"):
        monkeypatch.setenv("DCZ_DECODER", decoder)
        with dcformat.open(path) as r:
            got.append(r[t.name])
            got.append(r.decode_many([t.name])[t.name])
    for g in got:
        np.testing.assert_array_equal(g.view(np.uint32), want.view(np.uint32))


def _max_bits(part: np.ndarray, n: int, alphabet: int) -> int:
    return parse_stream(part, n, alphabet, LANE, "t", 0).table_bits


@pytest.mark.parametrize("max_len", [INDEX_CODE_LENGTH, 12, 13, MAX_CODE_LENGTH])
@pytest.mark.parametrize("n", [7, 300, 3 * LANE + 5, 4 * LANE, 9 * LANE + 3, 4180])
def test_dense_paths(tmp_path, monkeypatch, max_len, n):
    monkeypatch.setattr(importlib.import_module("dcformat.encode"), "INDEX_CODE_LENGTH", max_len)
    rng = np.random.default_rng(max_len * 1000 + n)
    k = 17
    idx = _fib_indices(n, k, rng)
    cb = np.linspace(-1.0, 1.0, k).astype(np.float32)
    t = dcformat.encode_codebook("w", cb, idx, (n,), encoding="codebook-dense", lane_size=LANE)
    bits = _max_bits(t.parts["indices"], n, k)
    assert bits <= max_len
    if n == 4180:
        assert bits == max_len  # the longest codes the limit allows
    _decode_all_ways(tmp_path, monkeypatch, t, cb[idx])


@pytest.mark.parametrize("max_len", [INDEX_CODE_LENGTH, MAX_CODE_LENGTH])
@pytest.mark.parametrize("n", [300, 3 * LANE + 5, 4 * LANE, 4 * LANE + 1, 9 * LANE + 3, 8360])
@pytest.mark.parametrize("gap_bits", [1, 3])
def test_sparse_paths(tmp_path, monkeypatch, max_len, n, gap_bits):
    """Gaps wider than the gap bits make filler entries; every lane's entries land from its base."""
    monkeypatch.setattr(importlib.import_module("dcformat.encode"), "INDEX_CODE_LENGTH", max_len)
    rng = np.random.default_rng(max_len * 1000 + n + gap_bits)
    k = 16
    cb = np.linspace(0.25, 4.0, k).astype(np.float32)
    idx = _fib_indices(n, k, rng) + 1  # 1..k: codebook entries; 0 is the zero
    idx[rng.random(n) < 0.5] = 0
    idx[n // 3 : n // 3 + 40] = 0  # a long run of zeros: fillers
    full = np.concatenate([[0.0], cb]).astype(np.float32)
    t = dcformat.encode_codebook("w", full, idx, (n,), encoding="codebook-sparse", gap_bits=gap_bits, lane_size=LANE)
    assert t.info.entries > np.count_nonzero(idx)  # fillers
    _decode_all_ways(tmp_path, monkeypatch, t, full[idx])


def test_sparse_with_a_full_codebook(tmp_path, monkeypatch):
    """256 non-zero entries and the zero: index symbols up to 256, past the scratch rows' bytes
    (decoded one code at a time), in groups of four full lanes and alone."""
    rng = np.random.default_rng(3)
    n = 9 * LANE + 3
    cb = (np.arange(1, 257) / 64.0).astype(np.float32)
    full = np.concatenate([[0.0], cb]).astype(np.float32)
    idx = rng.integers(0, 257, n)
    idx[:256] = np.arange(1, 257)  # every entry used
    t = dcformat.encode_codebook("w", full, idx, (n,), encoding="codebook-sparse", lane_size=LANE)
    assert t.info.codebook_size == 256
    _decode_all_ways(tmp_path, monkeypatch, t, full[idx])


def _streams(t):
    return {name: t.parts[name] for name in ("gaps", "indices") if name in t.parts}


@pytest.mark.parametrize("encoding", ["codebook-dense", "codebook-sparse"])
def test_damaged_streams_same_error_both_decoders(tmp_path, monkeypatch, encoding):
    """Flipped payload bits in a lane of a group of four and in a lone lane: both decoders refuse the
    file with the same error (lane statuses in the same order of precedence), or decode the same values."""
    rng = np.random.default_rng(11)
    n = (9 if encoding == "codebook-dense" else 20) * LANE + 3
    k = 12
    idx = rng.integers(0, k, n)
    if encoding == "codebook-sparse":
        idx[rng.random(n) < 0.6] = 0
    cb = np.linspace(0.5, 6.0, k).astype(np.float32)
    if encoding == "codebook-sparse":
        cb = np.concatenate([[0.0], cb[1:]]).astype(np.float32)
    t = dcformat.encode_codebook("w", cb, idx, (n,), encoding=encoding, gap_bits=2, lane_size=LANE)
    errors = 0
    m = t.info.entries if encoding == "codebook-sparse" else n
    nl = (m + LANE - 1) // LANE
    assert nl >= 5  # a group of four full lanes and a lone one
    for part in _streams(t):
        s = parse_stream(t.parts[part], m, t.info.index_alphabet if part == "indices" else 1 << t.info.gap_bits,
                         LANE, "t", 0)
        for lane, byte, bit in [(lane, byte, bit) for lane in (1, nl - 2) for byte in (1, 7, 20) for bit in (0, 5)]:
            end = int(s.lane_offsets[lane + 1]) if lane + 1 < nl else s.payload.size
            at = t.parts[part].size - s.payload.size + min(int(s.lane_offsets[lane]) + byte, end - 1)
            bad = dcformat.encode_codebook("w", cb, idx, (n,), encoding=encoding, gap_bits=2, lane_size=LANE)
            bad.parts[part] = bad.parts[part].copy()
            bad.parts[part][at] ^= 1 << bit
            path = tmp_path / f"{part}{lane}-{byte}-{bit}.dcz"
            dcformat.write(path, [bad])
            msgs = []
            for decoder in ("numba", "numpy"):
                monkeypatch.setenv("DCZ_DECODER", decoder)
                with dcformat.open(path) as r:
                    try:
                        msgs.append(r["w"].tobytes())  # a flip that decodes: the same (wrong) values
                    except dcformat.DczError as e:
                        msgs.append(str(e))
            assert msgs[0] == msgs[1]
            errors += isinstance(msgs[0], str)
    assert errors >= 2  # a flipped bit can also decode to other valid codes of the same length


@pytest.mark.parametrize("encoding", ["codebook-dense", "codebook-sparse"])
def test_parallel_kernels(tmp_path, monkeypatch, encoding):
    """A tensor of more than PARALLEL_MIN_SYMBOLS symbols goes to the parallel kernels (groups of lanes on
    numba's threads); the default lane size, codes of INDEX_CODE_LENGTH bits."""
    rng = np.random.default_rng(5)
    n = kernels.PARALLEL_MIN_SYMBOLS * 3 + 11
    k = 32
    idx = _fib_indices(n, k, rng)
    cb = np.linspace(-2.0, 2.0, k).astype(np.float32)
    if encoding == "codebook-sparse":
        idx = idx + 1
        idx[rng.random(n) < 0.3] = 0
        cb = np.concatenate([[0.0], cb]).astype(np.float32)
    t = dcformat.encode_codebook("w", cb, idx, (n,), encoding=encoding)
    _decode_all_ways(tmp_path, monkeypatch, t, cb[idx])

"""The load path: the numpy lane decoders (dcformat/npdecode.py) against the numba kernels, batched
reads, the one-walk reference scan, ONNX classes without the onnx package, decode tables.

Both decoders must give the same bytes for every valid tensor and the same first error (class and
message) for every damaged one: a file must not load under one and fail under the other.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import DczError, decode, huffman, npdecode
from dcformat.encode import encode_codebook, encode_float_planes, encode_lzma, encode_raw

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
import make_attacks as ma  # noqa: E402

ROOT = Path(__file__).parent.parent


def _tensors(seed=0):
    """Tensors of every encoding and dtype, lane sizes 256/1024, sizes around lane boundaries."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate([1, 255, 256, 257, 1000, 2048, 5000]):
        lane = 256 if i % 2 else 1024
        for dt in (np.float32, np.float16, np.float64):
            w = (rng.standard_normal(n) * 0.05).astype(dt)
            out.append(encode_float_planes(f"fp{i}.{np.dtype(dt).name}", w, lane_size=lane))
        k = int(rng.integers(1, 40))
        cb = np.sort(rng.standard_normal(k)).astype(np.float32)
        idx = rng.integers(0, k, n)
        out.append(encode_codebook(f"dense{i}", cb, idx, (n,), encoding="codebook-dense", lane_size=lane))
        sparse = np.where(rng.random(n) < 0.3, cb[idx], 0).astype(np.float32)
        if not sparse.any():
            sparse[0] = 1.0
        vals, inv = np.unique(sparse, return_inverse=True)
        out.append(encode_codebook(f"sparse{i}", vals, inv, (n,), encoding="codebook-sparse", lane_size=lane,
                                   gap_bits=int(rng.integers(1, 6))))
        out.append(encode_raw(f"raw{i}", rng.integers(-5, 5, n).astype(np.int32)))
        out.append(encode_lzma(f"lzma{i}", np.repeat(rng.standard_normal(8).astype(np.float32), -(-n // 8))[:n]))
    for i, (shape, axis) in enumerate([((6, 50), 0), ((4, 3, 70), 1), ((300, 5), 1), ((9, 2, 3, 3), 0)]):
        n = int(np.prod(shape))
        cb = np.sort(rng.standard_normal(12)).astype(np.float32)
        idx = rng.integers(0, 12, n)
        scales = (rng.standard_normal(shape[axis]) * 4).astype(np.float32)
        scales[0] = -scales[0]  # a negative channel: its zeros must stay +0.0
        for dt in ("float32", "float16"):
            out.append(encode_codebook(f"scaled_dense{i}.{dt}", cb, idx, shape, dt, encoding="codebook-dense",
                                       lane_size=256, scales=scales, scale_axis=axis))
            cbz = np.concatenate([[0.0], cb[1:]]).astype(np.float32)  # entry 0 is the zero symbol
            out.append(encode_codebook(f"scaled_sparse{i}.{dt}", cbz, idx, shape, dt, encoding="codebook-sparse",
                                       lane_size=256, scales=scales, scale_axis=axis, gap_bits=3))
    out.append(encode_codebook("empty_sparse", np.ones(1, np.float32), np.zeros(0, np.int64), (0,),
                               encoding="codebook-sparse"))
    out.append(encode_codebook("zeros_sparse", np.zeros(1, np.float32), np.zeros(300, np.int64), (300,),
                               encoding="codebook-sparse"))
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("np") / "all.dcz"
    dcformat.write(path, _tensors())
    return path


def _numba(path):
    """Every tensor decoded in turn by the numba kernels (reader[name]): arrays, or the first error."""
    try:
        with dcformat.open(path) as r:
            return {n: r[n] for n in r}
    except DczError as e:
        return f"{type(e).__name__}: {e}"


def _numpy(path):
    try:
        with dcformat.open(path) as r:
            sections = [(r.info(n), r._section_bytes(r._tensor_sections[n], f"tensor {n!r}")) for n in r]
            return npdecode.decode_tensors(sections)
    except DczError as e:
        return f"{type(e).__name__}: {e}"


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.fixture(params=["chunks of 1024", "chunks of 40"])
def chunk(request, monkeypatch):
    """The numpy decoder as shipped, and with chunks short enough that the sample's lanes (256 and 1024
    symbols) are all decoded in speculative chunks (npdecode._speculate), with many chunk boundaries."""
    if request.param == "chunks of 40":
        monkeypatch.setattr(npdecode, "SPEC_CHUNK", 40)
    return request.param


def test_numpy_decoder_gives_the_kernels_bytes(sample, chunk):
    a, b = _numba(sample), _numpy(sample)
    assert not isinstance(a, str), a
    assert _same(a, b)
    encodings = {dcformat.open(sample).info(n).encoding for n in a}
    assert encodings == {"raw", "codebook-dense", "codebook-sparse", "float-planes", "lzma"}


def test_decode_many_either_way(sample, monkeypatch):
    want = _numba(sample)
    for mode in ("numpy", "numba"):
        monkeypatch.setenv("DCZ_DECODER", mode)
        with dcformat.open(sample) as r:
            got = r.decode_many(list(r)[::-1])  # any order
        assert _same(want, got), mode


def _damaged(sample, seed: str, trials: int):
    """``trials`` copies of the file ``sample``, each with 1-3 tensor sections damaged in 1, 2 or 8 random
    bytes, checksums fixed (make_attacks.Dcz.build), as bytes."""
    base = ma.Dcz.load(sample)
    tensors = [i for i, e in enumerate(base.entries) if e["kind"] == "tensor" and e["length"]]
    rng = random.Random(seed)
    for _ in range(trials):
        d = base.copy()
        for i in rng.sample(tensors, rng.choice([1, 1, 2, 3])):
            p = bytearray(d.payloads[i])
            for _ in range(rng.choice([1, 2, 8])):
                p[rng.randrange(len(p))] = rng.randrange(256)
            d.payloads[i] = bytes(p)
        yield d.build()


def test_damaged_tensors_fail_alike(sample, tmp_path, chunk):
    """Random damage to tensor sections, checksums fixed: both decoders accept, or raise the same error."""
    path = tmp_path / "fuzz.dcz"
    outcomes = {"ok": 0, "rejected": 0}
    for trial, data in enumerate(_damaged(sample, "npdecode-fuzz", 150)):
        path.write_bytes(data)
        a, b = _numba(path), _numpy(path)
        assert _same(a, b), f"trial {trial}: numba {a if isinstance(a, str) else 'ok'} / numpy {b if isinstance(b, str) else 'ok'}"
        outcomes["rejected" if isinstance(a, str) else "ok"] += 1
    assert outcomes["rejected"] > 50


def test_status_codes_match_the_kernels():
    from dcformat import kernels

    assert npdecode.STATUS_TEXT == kernels.STATUS_TEXT
    assert npdecode.INDEX_STREAM == kernels.INDEX_STREAM
    assert (npdecode.STATUS_OVERRUN, npdecode.STATUS_UNDERRUN, npdecode.STATUS_PADDING, npdecode.STATUS_OUT_OF_TENSOR,
            npdecode.STATUS_BASE_MISMATCH) == (kernels.STATUS_OVERRUN, kernels.STATUS_UNDERRUN, kernels.STATUS_PADDING,
                                               kernels.STATUS_OUT_OF_TENSOR, kernels.STATUS_BASE_MISMATCH)


def _decode_table_loop(lengths):
    """The decode table built symbol by symbol (the reference the np.repeat version must equal)."""
    codes, bitlen = huffman.canonical_codes(lengths)
    used = np.flatnonzero(lengths)
    if used.size == 1:
        return np.array([int(used[0])], dtype=np.uint16), 0
    bits = int(bitlen.max())
    table = np.zeros(1 << bits, dtype=np.uint16)
    for s in used.tolist():
        ln = int(bitlen[s])
        start = int(codes[s]) << (bits - ln)
        table[start : start + (1 << (bits - ln))] = (ln << 9) | s
    return table, bits


def test_decode_table_matches_the_symbol_loop():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a = int(rng.integers(1, 300))
        f = rng.integers(0, 1000, a) * (rng.random(a) < 0.7)
        f[int(rng.integers(a))] += 1
        lengths = huffman.code_lengths(f, int(rng.integers(9, 16)))
        t1, b1 = _decode_table_loop(lengths)
        t2, b2 = huffman.decode_table(lengths)
        assert b1 == b2 and t1.dtype == t2.dtype and np.array_equal(t1, t2)


def test_onnx_classes_are_onnx_own_and_dtypes_agree():
    code = ("import sys; from dcformat import onnxproto as p; m = p.ModelProto(); assert 'onnx' not in sys.modules; "
            "import onnx; assert type(m) is onnx.ModelProto and p.pb2().TensorProto is onnx.TensorProto; "
            "from onnx import helper; import numpy as np; from dcformat.constants import DTYPES; "
            "assert all(np.dtype(helper.tensor_dtype_to_np_dtype(k)) == DTYPES[v] for k, v in p.ONNX_DTYPE_NAMES.items()); "
            "assert (p.EXTERNAL, p.DEFAULT) == (onnx.TensorProto.EXTERNAL, onnx.TensorProto.DEFAULT); "
            "A = onnx.AttributeProto; assert (p.ATTR_TENSOR, p.ATTR_GRAPH, p.ATTR_TENSORS, p.ATTR_GRAPHS) == "
            "(A.TENSOR, A.GRAPH, A.TENSORS, A.GRAPHS)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def test_scan_lists_what_iter_tensors_refers_to(tmp_path):
    """The one walk lists the references iter_tensors + reference find, in their order."""
    from onnx import TensorProto, helper

    from dcformat.graph import iter_tensors, reference, scan_references, strip_weights

    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2], np.arange(4, dtype=np.float32))
    c = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("", TensorProto.FLOAT, [2],
                                                                         np.ones(2, np.float32)))
    then = helper.make_graph([helper.make_node("Constant", [], ["t"], value=helper.make_tensor(
        "", TensorProto.FLOAT, [3], np.ones(3, np.float32)))], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])])
    cond = helper.make_node("If", ["b"], ["o"], then_branch=then, else_branch=then)
    g = helper.make_graph([c, cond], "g", [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("o", TensorProto.FLOAT, [3])], [w])
    model, _ = strip_weights(helper.make_model(g))
    got = [(t.name, name, node is not None, main) for t, name, node, main in scan_references(model)]
    want = [(t.name, reference(t)) for _, t in iter_tensors(model.graph) if reference(t)]
    assert [x[:2] for x in got] == want and len(want) == 4
    assert [x[2:] for x in got] == [(False, True), (True, False), (False, False), (False, False)]


def test_dcrun_of_a_small_model_imports_neither_onnx_nor_numba(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import onnx
    from numpy_mlp import MLP

    path_onnx, path_dcz = tmp_path / "m.onnx", tmp_path / "m.dcz"
    onnx.save(MLP([64, 300, 10], seed=0).to_onnx(), path_onnx)
    subprocess.run([sys.executable, "-c", "import sys; from converters.cli import main; sys.exit(main())",
                    str(path_onnx), "-o", str(path_dcz), "-q", "--sparsity", "0.5", "--bits", "5"],
                   check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stderr=subprocess.DEVNULL)
    code = ("import sys, atexit; atexit.register(lambda: print('IMPORTED', 'onnx' in sys.modules, 'numba' in sys.modules)); "
            "from dcformat.cli import run_main; run_main([sys.argv[1]])")
    env = {k: v for k, v in os.environ.items() if k != "DCZ_DECODER"}
    p = subprocess.run([sys.executable, "-c", code, str(path_dcz)], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert "output" in p.stdout, p.stdout + p.stderr
    assert "IMPORTED False False" in p.stdout, p.stdout
    # numpy without its huge-page hint (first touch of the decoded weights waits for compaction), unless the
    # user chose: NUMPY_MADVISE_HUGEPAGE is kept, and it is not left set for child processes
    code = ("import sys, os; from dcformat.cli import run_main\n"
            "try:\n    run_main([sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "import numpy\nmod = getattr(numpy, '_core', None) or numpy.core\n"
            "print('HUGEPAGE', mod.multiarray._get_madvise_hugepage(), os.environ.get('NUMPY_MADVISE_HUGEPAGE'))")
    env.pop("NUMPY_MADVISE_HUGEPAGE", None)
    for user, want in ((None, "HUGEPAGE False None"), ("1", "HUGEPAGE True 1")):
        p = subprocess.run([sys.executable, "-c", code, str(path_dcz)], capture_output=True, text=True,
                           env={**env, "PYTHONPATH": str(ROOT), **({"NUMPY_MADVISE_HUGEPAGE": user} if user else {})},
                           cwd=ROOT)
        assert want in p.stdout, p.stdout + p.stderr


def test_path_choice(monkeypatch):
    """The numpy decoder until numba is loaded or its budget is spent; DCZ_DECODER forces one."""
    monkeypatch.delenv("DCZ_DECODER", raising=False)
    calls = []
    monkeypatch.setattr(npdecode, "decode_tensors", lambda batch: calls.append("numpy") or {})
    monkeypatch.setattr(decode, "decode_records", lambda b, span=None: calls.append("numba"))
    monkeypatch.setattr(decode, "_symbols", lambda info: 10)
    monkeypatch.setattr(decode, "_numpy_budget", [1.0])
    monkeypatch.delitem(sys.modules, "dcformat.kernels", raising=False)
    batch = [(type("I", (), {"name": "x", "lane_size": 256, "numel": 1000})(), None)]
    decode.decode_batch(batch)
    decode._numpy_budget[0] = 0.0
    decode.decode_batch(batch)
    decode._numpy_budget[0] = 1.0
    monkeypatch.setenv("DCZ_DECODER", "numba")
    decode.decode_batch(batch)
    assert calls == ["numpy", "numba", "numba"]


def test_scales_without_numba_give_the_kernels_bytes(sample):
    """A fresh process on the numpy decoder applies per-channel scales by numpy (numba never started):
    the same bytes as the numba kernels' decode in this process."""
    code = ("import sys, numpy as np, dcformat\n"
            "with dcformat.open(sys.argv[1]) as r:\n"
            "    names = [n for n in r if n.startswith('scaled')]\n"
            "    got = r.decode_many(names)\n"
            "assert 'dcformat.kernels' not in sys.modules\n"
            "np.savez(sys.argv[2], **got)\n")
    out = sample.parent / "scaled_numpy.npz"
    subprocess.run([sys.executable, "-c", code, str(sample), str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "DCZ_DECODER": "numpy"}, cwd=ROOT)
    got = np.load(out)
    ref = _numba(sample)
    assert len(got.files) == 16
    for name in got.files:
        assert got[name].dtype == ref[name].dtype and got[name].shape == ref[name].shape
        assert got[name].tobytes() == ref[name].tobytes(), name


def test_decode_many_reads_a_section_sharing_its_offset_with_an_empty_one(tmp_path):
    """An all-zero codebook-sparse tensor stores no bytes, so the next section starts at the same offset;
    a run of sections spans to the end of the longest, not of the last one by (offset, name)."""
    path = tmp_path / "shared.dcz"
    raw = np.arange(16, dtype=np.float32).reshape(4, 4)
    dcformat.write(path, [encode_codebook("z.empty", np.zeros(1, np.float32), np.zeros(512, np.int64), (16, 32),
                                          encoding="codebook-sparse"),
                          encode_raw("a.raw", raw)])
    with dcformat.open(path) as r:
        assert r._tensor_sections["z.empty"].length == 0
        assert r._tensor_sections["z.empty"].offset == r._tensor_sections["a.raw"].offset
        got = r.decode_many(list(r))
    assert np.array_equal(got["a.raw"], raw) and not got["z.empty"].any()


# ---------------------------------------------------------------- chunked (speculative) lane decoding
def _random_stream(rng, lane_size):
    """A random stream: alphabet, symbol distribution (uniform: near fixed-length codes, which
    resynchronise badly; skewed: codes up to 15 bits; one symbol: 0-bit codes), n around lane multiples."""
    from dcformat.streams import encode_stream, parse_stream

    a = int(rng.choice([1, 2, 3, 16, 32, 129, 256, 512]))
    kind = rng.choice(["uniform", "geometric", "skewed", "one"])
    n = int(rng.choice([1, lane_size - 1, lane_size, lane_size + 1, 3 * lane_size + int(rng.integers(0, lane_size))]))
    if kind == "uniform":
        sym = rng.integers(0, a, n)
    elif kind == "geometric":
        sym = np.minimum(rng.geometric(float(rng.uniform(0.05, 0.6)), n) - 1, a - 1)
    elif kind == "skewed":  # frequencies 2^-k: the longest codes the length limit allows
        p = 0.5 ** np.arange(1, a + 1)
        sym = rng.choice(a, n, p=p / p.sum())
    else:
        sym = np.full(n, int(rng.integers(0, a)))
    part = encode_stream(sym.astype(np.int64), a, lane_size, int(rng.choice([9, 12, 15])))
    return sym, part, (lambda data: parse_stream(data, n, a, lane_size, "s", 0)), n


def _both(jobs):
    ref = npdecode.decode_streams(jobs, speculate=False)
    got = npdecode.decode_streams(jobs)
    for (e1, b1), (e2, b2) in zip(ref, got):
        assert e1.dtype == e2.dtype and np.array_equal(e1, e2) and np.array_equal(b1, b2)
    return ref


@pytest.mark.parametrize("spec_chunk", [1024, 100, 17])
def test_chunked_decoding_equals_lane_by_lane(monkeypatch, spec_chunk):
    """Random streams of every kind decoded together, whole and damaged (bytes of the payload changed,
    so that chunks meet garbage, lanes overrun or stop short): the chunked decoder gives the same
    entries and lane end bits as decoding each lane symbol by symbol, and the symbols encoded."""
    monkeypatch.setattr(npdecode, "SPEC_CHUNK", spec_chunk)
    if spec_chunk == 17:  # lanes decoded in groups of a few chunks, chunks doubled up to 4096
        monkeypatch.setattr(npdecode, "SPEC_WALKERS", 3)
    rng = np.random.default_rng(spec_chunk)
    for trial in range(12):
        lane_size = int(rng.choice([64, 1000, 2048, 4096]))
        streams = [_random_stream(rng, lane_size) for _ in range(int(rng.integers(1, 5)))]
        jobs = [(parse(part), n, lane_size) for _, part, parse, n in streams]
        for (sym, *_), (entries, _) in zip(streams, _both(jobs)):
            assert np.array_equal(entries & 511, sym)
        damaged = []
        for _, part, parse, n in streams:
            s = parse(part)
            pay = s.payload.copy()
            if pay.size:
                for _ in range(int(rng.integers(1, 6))):
                    pay[int(rng.integers(pay.size))] = int(rng.integers(256))
            damaged.append((type(s)(pay, s.lane_offsets, s.table, s.table_bits, 0), n, lane_size))
        _both(damaged)


@pytest.mark.parametrize("walkers", [4096, 8])
def test_chunked_decoding_is_used(monkeypatch, walkers):
    """Long lanes of a typical stream go through the chunks, not symbol by symbol (which would also be
    right, only slower): nothing of a 4-lane stream of 16384-symbol lanes is left to _lockstep; with
    few walkers allowed, in the longest chunks (4096 symbols)."""
    monkeypatch.setattr(npdecode, "SPEC_WALKERS", walkers)
    rng = np.random.default_rng(5)
    from dcformat.streams import encode_stream, parse_stream

    sym = np.minimum(rng.geometric(0.2, 4 * 16384) - 1, 127)
    s = parse_stream(encode_stream(sym, 128, 16384), sym.size, 128, 16384, "s", 0)
    left = []
    real = npdecode._lockstep
    monkeypatch.setattr(npdecode, "_lockstep", lambda win, table, lanes, out: left.append(lanes.cnt.size)
                        or real(win, table, lanes, out))
    (entries, ends), = npdecode.decode_streams([(s, sym.size, 16384)])
    assert np.array_equal(entries & 511, sym) and left == []
    end = np.append(s.lane_offsets[1:], s.payload.size) * 8
    assert np.all((ends <= end) & (ends > end - 8))


def test_chunked_decoding_with_every_code_length(monkeypatch):
    """A code using every length from 1 to 15 bits (frequencies 2^-k), lanes of 4096 and chunks of 100
    and 1024 symbols, whole and with the payload cut short: chunks equal lane by lane, and the symbols."""
    from dcformat.streams import encode_stream, parse_stream

    rng = np.random.default_rng(15)
    counts = [2 ** (14 - k) for k in range(15)] + [1]  # 2^14, ..., 2, 1, 1: lengths 1, 2, ..., 15, 15
    sym = rng.permutation(np.repeat(np.arange(16), counts))
    part = encode_stream(sym, 16, 4096, 15)
    s = parse_stream(part, sym.size, 16, 4096, "s", 0)
    lengths = np.unique(s.table >> 9)
    assert lengths.tolist() == list(range(1, 16))
    for chunk in (100, 1024):
        monkeypatch.setattr(npdecode, "SPEC_CHUNK", chunk)
        (entries, _), = _both([(s, sym.size, 4096)])
        assert np.array_equal(entries & 511, sym)
        short = type(s)(s.payload[: s.payload.size * 3 // 4], np.minimum(s.lane_offsets, s.payload.size * 3 // 4),
                        s.table, s.table_bits, 0)
        _both([(short, sym.size, 4096)])


@pytest.mark.parametrize("alphabet", [2, 32, 256])
def test_chunked_decoding_of_a_fixed_length_code(monkeypatch, alphabet):
    """Uniform symbols of 2^k values: every code has k bits, so a chunk that starts off a multiple of k
    bits never meets the true codes; chunks start at multiples of the lengths' gcd, so none is left to
    _lockstep (and the result is the lanes' own)."""
    from dcformat.streams import encode_stream, parse_stream

    sym = np.random.default_rng(alphabet).permutation(np.arange(4 * 4096 + 300) % alphabet)
    s = parse_stream(encode_stream(sym, alphabet, 4096), sym.size, alphabet, 4096, "s", 0)
    assert np.unique(s.table >> 9).size == 1  # one code length
    (want, want_ends), = npdecode.decode_streams([(s, sym.size, 4096)], speculate=False)
    left = []
    real = npdecode._lockstep
    monkeypatch.setattr(npdecode, "_lockstep", lambda win, table, lanes, out: left.append(int(lanes.cnt.max()))
                        or real(win, table, lanes, out))
    (entries, ends), = npdecode.decode_streams([(s, sym.size, 4096)])
    assert np.array_equal(entries, want) and np.array_equal(ends, want_ends)
    assert np.array_equal(entries & 511, sym)
    assert left == []  # the short last lane (300 symbols) too: the last try cuts lanes of more than SPEC_CHUNK // 8


def test_dcrun_command_line_exits_at_once_with_its_output_and_status(tmp_path):
    """A real command line (run_main() without argv) ends by os._exit after flushing: the whole output
    arrives through a pipe, --output-dir's file is complete, the status is the command's (0, 1 for a
    missing file, 2 for a usage error)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import onnx
    from numpy_mlp import MLP

    path_onnx, path_dcz = tmp_path / "m.onnx", tmp_path / "m.dcz"
    onnx.save(MLP([16, 40, 3], seed=1).to_onnx(), path_onnx)
    subprocess.run([sys.executable, "-c", "import sys; from converters.cli import main; sys.exit(main())",
                    str(path_onnx), "-o", str(path_dcz), "-q"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   cwd=ROOT, stderr=subprocess.DEVNULL)
    code = "import sys; from dcformat.cli import run_main; run_main(); print('NOT REACHED')"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code, str(path_dcz), "--output-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].startswith("outputs saved in") and "NOT REACHED" not in p.stdout
    saved = np.load(tmp_path / "out" / "logits.npy")
    assert saved.shape == (1, 3)
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.dcz")], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    assert p.returncode == 1 and p.stderr.strip().startswith("error:") and p.stdout == ""
    p = subprocess.run([sys.executable, "-c", code, "--no-such-option"], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    assert p.returncode == 2 and "error:" in p.stderr


@pytest.mark.parametrize("alphabet", [200, 100, 48])
def test_chunked_decoding_of_near_fixed_length_codes(monkeypatch, alphabet):
    """Uniform symbols of a non-power-of-two alphabet: codes of two lengths (7/8 bits for 200), which
    resynchronise slowly (a 256-entry codebook's indices are like this: with 48 codes searched, 12 of 16
    such lanes, and most of Magika's, fell back to _lockstep). Every long lane is decoded in chunks."""
    from dcformat.streams import encode_stream, parse_stream

    sym = np.random.default_rng(alphabet).integers(0, alphabet, 16 * 16384).astype(np.int64)
    s = parse_stream(encode_stream(sym, alphabet, 16384), sym.size, alphabet, 16384, "s", 0)
    assert np.unique(s.table >> 9).size == 2
    (want, want_ends), = npdecode.decode_streams([(s, sym.size, 16384)], speculate=False)
    left = []
    real = npdecode._lockstep
    monkeypatch.setattr(npdecode, "_lockstep", lambda win, table, lanes, out: left.append(lanes.cnt.size)
                        or real(win, table, lanes, out))
    (entries, ends), = npdecode.decode_streams([(s, sym.size, 16384)])
    assert np.array_equal(entries, want) and np.array_equal(ends, want_ends)
    assert np.array_equal(entries & 511, sym) and left == []


def test_lanes_whose_chunks_do_not_meet_are_cut_again(monkeypatch):
    """Chunks that search only 3 codes for where they meet fail at many cuts; the lanes that fail are
    tried once more with other cuts before any is decoded symbol by symbol, and the result is the
    lanes' own either way."""
    from dcformat.streams import encode_stream, parse_stream

    monkeypatch.setattr(npdecode, "SPEC_SYNC", 3)
    sym = np.random.default_rng(3).integers(0, 200, 16 * 16384).astype(np.int64)
    s = parse_stream(encode_stream(sym, 200, 16384), sym.size, 200, 16384, "s", 0)
    (want, want_ends), = npdecode.decode_streams([(s, sym.size, 16384)], speculate=False)
    calls = []
    real = npdecode._speculate
    monkeypatch.setattr(npdecode, "_speculate", lambda *a, **k: calls.append(a[2].cnt.size) or real(*a, **k))
    (entries, ends), = npdecode.decode_streams([(s, sym.size, 16384)])
    assert np.array_equal(entries, want) and np.array_equal(ends, want_ends)
    assert len(calls) == 2 and 0 < calls[1] <= calls[0] == 16

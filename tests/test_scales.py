"""Per-channel scales (format 1.2, spec 7.5): round trips against a reference computed from the spec
with numpy alone, bit for bit; the size estimate; versions (1.2 only when used, older readers refuse);
compact mode (Gather, Mul, Add 0 in ONNX Runtime) giving the same bits as the full decode.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat import EncodeError, TensorError, VersionError
from dcformat.constants import DTYPES, SCALED_PARTS, SCALES_MINOR, VERSION_MINOR
from dcformat.encode import CodebookEstimate, estimate_codebook_bytes
from dcformat.reader import DczReader

F32 = np.float32


def reference(codebook, idx, shape, dtype, scales, axis, codebook_dtype="float32", scale_dtype="float32"):
    """Spec 7.5, with numpy: float32(scale) * float32(entry) in binary32, zeros +0.0, convert, zeros +0.0."""
    cb = np.asarray(codebook, np.float64).astype(DTYPES[codebook_dtype]).astype(F32)
    sc = np.asarray(scales, np.float64).astype(DTYPES[scale_dtype]).astype(F32)
    bshape = [1] * len(shape)
    bshape[axis] = -1
    with np.errstate(over="ignore", invalid="ignore"):
        p = cb[np.asarray(idx).reshape(shape)] * sc.reshape(bshape)
    p[p == 0] = 0
    with np.errstate(over="ignore"):
        out = p.astype(DTYPES[dtype])
    out[out == 0] = 0
    return out


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}")


def roundtrip(tmp_path, tensors):
    path = tmp_path / "s.dcz"
    dcformat.write(path, tensors)
    r = dcformat.open(path)
    return r, path


@pytest.mark.parametrize("encoding", ["codebook-dense", "codebook-sparse", "raw", None])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_roundtrip_every_dtype_axis_and_scale_dtype(tmp_path, encoding, dtype):
    rng = np.random.default_rng(1)
    cb = np.array([-2.0, -0.25, 0.0, -0.0, 0.5, 1.0, 3.0], F32)
    shape = (6, 5, 4)
    idx = rng.integers(0, cb.size, shape)
    tensors, want = [], {}
    for axis in (0, 1, 2, -1):
        for sdt in ("float32", "float16"):
            sc = (rng.standard_normal(shape[axis]) * 4).astype(F32)
            sc[0] = 0.0
            sc[-1] = -abs(sc[-1])
            name = f"w.{axis}.{sdt}"
            t = dcformat.encode_codebook(name, cb, idx, dtype=dtype, encoding=encoding, scales=sc, scale_axis=axis,
                                         scale_dtype=sdt, lane_size=256)
            if t.encoding != "raw":
                assert t.info.scaled and t.info.scale_axis == axis % 3 and t.info.scale_dtype == sdt
                assert t.info.scale_count == shape[axis] and t.info.minor == SCALES_MINOR
                assert list(t.info.parts) == list(SCALED_PARTS[t.encoding])
                assert t.info.parts["scales"] == shape[axis] * (4 if sdt == "float32" else 2)
            tensors.append(t)
            want[name] = reference(cb, idx, shape, dtype, sc, axis % 3, scale_dtype=sdt)
    r, path = roundtrip(tmp_path, tensors)
    with r:
        assert r.version == (1, 2 if any(t.encoding != "raw" for t in tensors) else 0)
        for name, w in want.items():
            got = r[name]
            assert got.dtype == w.dtype and got.shape == w.shape
            assert np.array_equal(bits(got), bits(w)), name
            assert not np.any(np.signbit(got[got == 0].astype(np.float64))), "a scaled tensor holds no -0.0"


def test_sparse_zero_symbol_is_plus_zero_under_negative_scales(tmp_path):
    """The zero symbol, unwritten positions, zero entries of either sign and underflowing products: +0.0."""
    cb = np.array([0.0, -0.0, 1e-30, -1.0], F32)
    idx = np.tile(np.arange(4), (3, 1))
    sc = np.array([-1.0, -1e-20, 0.0], F32)
    for enc in ("codebook-dense", "codebook-sparse"):
        t = dcformat.encode_codebook("w", cb, idx, encoding=enc, scales=sc)
        r, _ = roundtrip(tmp_path, [t])
        with r:
            got = r["w"]
        assert bits(got).tolist() == [[0, 0, bits(F32(-1e-30)).item(), bits(F32(1.0)).item()],
                                      [0, 0, 0, bits(F32(1e-20)).item()],
                                      [0, 0, 0, 0]], enc
        assert t.info.nonzeros == 3
    sparse = dcformat.encode_codebook("w", cb, idx, encoding="codebook-sparse", scales=sc)
    assert sparse.info.codebook_size == 2  # the zero entries (both signs) are the zero symbol
    # a zero scale and an underflowing product make +0.0: those elements are not stored
    assert sparse.info.entries == 3


def test_product_is_binary32_for_every_dtype(tmp_path):
    """float64 tensors get float32 products (not float64 ones); float16 ones are rounded twice, by definition."""
    cb = np.array([1.0 + 2.0**-23], F32)  # times 1 + 2^-23: the exact product needs 47 bits
    sc = np.array([1.0 + 2.0**-23], F32)
    t64 = dcformat.encode_codebook("d", cb, [[0]], dtype="float64", scales=sc, encoding="codebook-dense")
    # 1.000000238418579 (float32) * 1.000000238418579 = 1 + 2^-22 + 2^-46: float32 rounds the 2^-46 away
    r, _ = roundtrip(tmp_path, [t64])
    with r:
        assert r["d"][0, 0] == np.float64(1.0 + 2.0**-22)
    # float16: the exact product lies just above the float16 tie 1 + 2^-11 (so rounding it once gives
    # 1 + 2^-10), but within half a float32 ulp of it: binary32 rounds it onto the tie, which float16
    # then rounds to even, 1.0 -- spec 7.5's double rounding, the same in every reader
    cb = np.array([1.0 + 2.0**-11 + 2.0**-23], F32)
    sc = np.array([1.0 - 2.0**-24], F32)
    exact = float(cb[0]) * float(sc[0])  # exact in binary64
    assert np.float16(exact) == np.float16(1.0 + 2.0**-10) and F32(exact) == F32(1.0 + 2.0**-11)
    t16 = dcformat.encode_codebook("h", cb, [[0]], dtype="float16", scales=sc, encoding="codebook-dense",
                                   codebook_dtype="float32")
    r, _ = roundtrip(tmp_path, [t16])
    with r:
        assert r["h"][0, 0] == np.float16(1.0)


def test_unscaled_records_and_files_are_unchanged(tmp_path):
    """No scales: the same bytes as before 1.2, a 1.0 file; scales=None is the default."""
    rng = np.random.default_rng(3)
    cb = np.array([0.0, 0.5, -1.5], F32)
    idx = rng.integers(0, 3, (30, 40))
    for enc in ("codebook-dense", "codebook-sparse", None):
        a = dcformat.encode_codebook("w", cb, idx, encoding=enc)
        b = dcformat.encode_codebook("w", cb, idx, encoding=enc, scales=None, scale_axis=0, scale_dtype=None)
        assert a.info == b.info and all(np.array_equal(a.parts[k], b.parts[k]) for k in a.parts)
        assert "scale_axis" not in a.info.descriptor() and not a.info.scaled and a.info.minor == 0
        dcformat.write(tmp_path / "u.dcz", [a])
        assert (tmp_path / "u.dcz").read_bytes()[8:12] == b"\x01\x00\x00\x00"  # 1.0
        with dcformat.open(tmp_path / "u.dcz") as r:
            assert np.array_equal(bits(dcformat.codebook_values(cb, idx)), bits(r["w"]))
    half = dcformat.codebook_values([1e-30, 0.5, 70000.0], [[0, 1, 2]], dtype="float16", codebook_dtype="float32")
    assert half.dtype == np.float16 and bits(half).tolist() == [[0, 0x3800, 0x7C00]]


def test_estimate_matches_encoding(tmp_path):
    rng = np.random.default_rng(4)
    cb = np.array([0.0, -1.0, -0.5, 0.5, 1.0], F32)
    for density in (0.05, 0.4, 1.0):
        idx = np.where(rng.random((64, 300)) < density, rng.integers(1, 5, (64, 300)), 0)
        sc = np.exp(rng.uniform(-5, 2, 64)).astype(F32)
        for scales in (None, sc):
            for enc in (None, "codebook-dense", "codebook-sparse", "raw"):
                for sdt in ((None,) if scales is None else ("float32", "float16")):
                    kw = dict(encoding=enc, scales=scales, scale_dtype=sdt, lane_size=1024)
                    est = estimate_codebook_bytes(cb, idx, **kw)
                    t = dcformat.encode_codebook("w", cb, idx, **kw)
                    assert isinstance(est, CodebookEstimate)
                    assert est.encoding == t.encoding
                    if t.encoding == "codebook-sparse":
                        assert est.gap_bits == t.info.gap_bits
                    lanes = -(-t.info.numel // 1024)  # each stream within a byte per lane, plus part alignment
                    assert abs(t.nbytes - est.nbytes) <= 2 * lanes + 8, (density, enc, sdt, est, t.nbytes)
                    assert set(est.sizes) == {"raw", "codebook-dense", "codebook-sparse"}
        # the scales' bytes are in the estimate: 64 x 4 (float32) or 64 x 2 (float16), 8-byte aligned
        plain = estimate_codebook_bytes(cb, idx, encoding="codebook-dense")
        f32 = estimate_codebook_bytes(cb, idx, encoding="codebook-dense", scales=sc)
        f16 = estimate_codebook_bytes(cb, idx, encoding="codebook-dense", scales=sc, scale_dtype="float16")
        assert f32.nbytes - plain.nbytes == 256 and f16.nbytes - plain.nbytes == 128


def test_estimate_in_chunks_equals_whole(monkeypatch):
    """The estimate looks at the indices in chunks (bounded memory); the chunk size changes nothing."""
    import importlib

    encode = importlib.import_module("dcformat.encode")
    rng = np.random.default_rng(5)
    cb = np.array([0.0, 1.0, -2.0, 0.25], F32)
    idx = np.where(rng.random((50, 77)) < 0.1, rng.integers(1, 4, (50, 77)), 0)
    cases = [dict(scales=None), dict(scales=rng.standard_normal(50).astype(F32), scale_axis=0),
             dict(scales=rng.standard_normal(77).astype(F32), scale_axis=1)]
    cases[1]["scales"][::9] = 0
    cases[2]["scales"][::5] = 0

    def estimates():
        return [estimate_codebook_bytes(cb, idx, lane_size=256, **kw) for kw in cases]

    whole = estimates()
    assert len({e.sizes["codebook-sparse"] for e in whole}) == 3  # zero scales leave elements out
    for chunk in (100, 7):  # axis 0: one row of 77 per chunk, even when the chunk is smaller than a row
        monkeypatch.setattr(encode, "ESTIMATE_CHUNK", chunk)
        assert estimates() == whole


@pytest.mark.parametrize("kw, match", [
    (dict(scales=[1.0, 2.0]), "shape[0] = 3 values"),
    (dict(scales=np.ones((3, 1))), "one-dimensional"),
    (dict(scales=[1.0, 2.0, 3.0, 4.0], scale_axis=1), "shape[1] = 4"),  # fine: the next one is not
    (dict(scales=[1.0] * 4, scale_axis=2), "scale_axis must be an integer in [-2, 2)"),
    (dict(scales=[1.0] * 3, scale_axis=-3), "scale_axis must be an integer"),
    (dict(scales=[1.0] * 3, scale_axis=1.0), "scale_axis must be an integer"),
    (dict(scales=[1.0] * 3, scale_axis=True), "scale_axis must be an integer"),
    (dict(scales=[1.0, np.nan, 1.0]), "scale 1 is nan"),
    (dict(scales=[1.0, 1.0, -np.inf]), "scale 2 is -inf"),
    (dict(scales=[1.0, 1e5, 1.0], scale_dtype="float16"), "not a finite float16"),
    (dict(scales=[1.0, 1e39, 1.0]), "not a finite float32"),
    (dict(scales=[1.0] * 3, scale_dtype="float64"), "scale_dtype must be one of"),
    (dict(scales=[1.0] * 3, scale_dtype="bfloat16"), "scale_dtype must be one of"),
    (dict(scale_dtype="float16"), "given without scales"),
    (dict(scales=["a", "b", "c"]), "not an array of numbers"),
])
def test_bad_scales_are_refused_by_the_encoder(kw, match):
    if match == "shape[1] = 4":
        dcformat.encode_codebook("w", [0.5, 1.0], np.zeros((3, 4), int), **kw)  # valid
        return
    with pytest.raises(EncodeError, match=re.escape(match)):
        dcformat.encode_codebook("w", [0.5, 1.0], np.zeros((3, 4), int), **kw)
    with pytest.raises(EncodeError):
        estimate_codebook_bytes([0.5, 1.0], np.zeros((3, 4), int), **kw)


def test_scalar_and_empty_tensors():
    with pytest.raises(EncodeError, match="a scalar has no axis"):
        dcformat.encode_codebook("s", [0.5], np.zeros((), int), scales=[2.0])
    t = dcformat.encode_codebook("e", [0.5], np.zeros((0, 3), int), scales=[], encoding="codebook-sparse")
    assert t.info.parts["scales"] == 0 and t.info.scale_count == 0
    t = dcformat.encode_codebook("e", [0.5], np.zeros((2, 0), int), scales=[1.0, -1.0], encoding="codebook-dense")
    assert t.info.parts["scales"] == 8


def test_writer_refuses_non_finite_scales_put_in_by_hand(tmp_path):
    t = dcformat.encode_codebook("w", [0.5, 1.0], np.zeros((3, 4), int), scales=[1.0, 2.0, 3.0],
                                 encoding="codebook-dense")
    t.parts["scales"] = np.array([1.0, np.nan, 3.0], "<f4").view(np.uint8)
    with pytest.raises(EncodeError, match="not finite"):
        dcformat.write(tmp_path / "w.dcz", [t])
    assert not (tmp_path / "w.dcz").exists()


# ---------------------------------------------------------------- versions (spec 2.2)
class Reader11(DczReader):
    """A reader of 1.1: knows float-planes, not per-channel scales."""

    MINOR = 1


def _scaled_file(tmp_path):
    rng = np.random.default_rng(7)
    ts = [dcformat.encode_codebook("scaled", [0.5, -1.0], rng.integers(0, 2, (4, 8)), scales=[1, 2, 3, 4],
                                   encoding="codebook-dense"),
          dcformat.encode("plain", np.arange(6, dtype=F32))]
    path = tmp_path / "v12.dcz"
    dcformat.write(path, ts)
    return path


def test_versions_written(tmp_path):
    path = _scaled_file(tmp_path)
    assert path.read_bytes()[8:12] == bytes([1, 0, SCALES_MINOR, 0])
    with dcformat.open(path) as r:
        assert r.version == (1, 2) and VERSION_MINOR == 2
        assert r["scaled"].shape == (4, 8)


def test_a_1_1_reader_refuses_a_1_2_record_with_version_error(tmp_path):
    path = _scaled_file(tmp_path)
    with pytest.raises(VersionError, match=r"version 1\.2 and this reader reads what 1\.1 defines"):
        Reader11(path)


def test_a_1_1_reader_never_misreads_the_record(tmp_path):
    """What the 1.1 rules do with a scaled record (in a file that claims 1.1, so no VersionError): the
    scale keys are ignored, the 'scales' part fails the parts rule -- refused, never decoded unscaled."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "attacks"))
    import make_attacks as ma

    d = ma.Dcz.parse(_scaled_file(tmp_path).read_bytes())
    d.minor = 1
    p = tmp_path / "claims11.dcz"
    p.write_bytes(d.build())
    with pytest.raises(TensorError, match="'parts' must list codebook, indices in that order"):
        Reader11(p)
    with dcformat.open(p) as r:  # a 1.2 reader reads it (the minor version is not a rule for readers)
        assert r["scaled"].shape == (4, 8)


def test_newer_minor_unknown_encoding_is_a_version_error(tmp_path):
    """A 1.2 reader meeting a record of a later minor version it cannot parse: VersionError."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "attacks"))
    import make_attacks as ma

    d = ma.Dcz.parse(_scaled_file(tmp_path).read_bytes())
    d.minor = VERSION_MINOR + 1
    p = tmp_path / "v13.dcz"
    p.write_bytes(d.build(tamper=lambda h: h["sections"][0]["tensor"].update(encoding="codebook-future")))
    with pytest.raises(VersionError, match="unknown encoding 'codebook-future'"):
        dcformat.open(p)
    d.minor = VERSION_MINOR  # the same record in a 1.2 file: a plain TensorError
    p.write_bytes(d.build(tamper=lambda h: h["sections"][0]["tensor"].update(encoding="codebook-future")))
    with pytest.raises(TensorError, match="unknown encoding") as e:
        dcformat.open(p)
    assert not isinstance(e.value, VersionError)


# ---------------------------------------------------------------- property: bit-exact round trips
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
special = st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, 1.0, -1.0, 65504.0, 6e-8])


@st.composite
def scaled_tensors(draw):
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3)))
    axis = draw(st.integers(0, len(shape) - 1))
    k = draw(st.integers(1, 12))
    cb = draw(st.lists(st.one_of(finite32, special), min_size=k, max_size=k))
    n = int(np.prod(shape))
    zero_heavy = draw(st.booleans())
    idx = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    if zero_heavy:
        cb[0] = 0.0
        idx = [i if i % 3 == 0 else 0 for i in idx]
    scales = draw(st.lists(st.one_of(finite32, special), min_size=shape[axis], max_size=shape[axis]))
    return dict(
        codebook=np.array(cb, F32), indices=np.array(idx, np.int64).reshape(shape), shape=shape, axis=axis,
        scales=np.array(scales, F32), dtype=draw(st.sampled_from(["float32", "float16", "bfloat16", "float64"])),
        encoding=draw(st.sampled_from(["codebook-dense", "codebook-sparse", "raw", None])),
        scale_dtype=draw(st.sampled_from(["float32", "float16"])),
        codebook_dtype=draw(st.sampled_from(["float32", "float16"])),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scaled_tensors())
def test_property_roundtrip_bit_exact(tmp_path, case):
    sdt, cbd = case["scale_dtype"], case["codebook_dtype"]
    with np.errstate(over="ignore"):
        if not np.isfinite(case["scales"].astype(DTYPES[sdt])).all():  # refused (test_bad_scales...)
            sdt = "float32"
    with np.errstate(over="ignore"):
        cb_ok = np.isfinite(case["codebook"].astype(DTYPES[cbd])).all()
    cbd = cbd if cb_ok else "float32"
    t = dcformat.encode_codebook("w", case["codebook"], case["indices"], case["shape"], case["dtype"],
                                 encoding=case["encoding"], scales=case["scales"], scale_axis=case["axis"],
                                 scale_dtype=sdt, codebook_dtype=cbd, lane_size=256)
    want = reference(case["codebook"], case["indices"], case["shape"], case["dtype"], case["scales"], case["axis"],
                     codebook_dtype=cbd, scale_dtype=sdt)
    est = estimate_codebook_bytes(case["codebook"], case["indices"], case["shape"], case["dtype"],
                                  encoding=case["encoding"], scales=case["scales"], scale_axis=case["axis"],
                                  scale_dtype=sdt, codebook_dtype=cbd, lane_size=256)
    assert est.encoding == t.encoding
    path = tmp_path / "p.dcz"
    dcformat.write(path, [t])
    with dcformat.open(path) as r:
        got = r["w"]  # the reader checks nonzeros against the decoded values
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(bits(got), bits(want))
    values = dcformat.codebook_values(case["codebook"], case["indices"], case["shape"], case["dtype"],
                                      scales=case["scales"], scale_axis=case["axis"], scale_dtype=sdt,
                                      codebook_dtype=cbd)
    assert values.dtype == want.dtype and np.array_equal(bits(values), bits(want))


# ---------------------------------------------------------------- compact mode
@pytest.mark.parametrize("encoding", ["codebook-dense", "codebook-sparse"])
def test_compact_mode_gather_mul_matches_full_decode(tmp_path, encoding):
    """Compact mode: Gather, Mul by the scales (and Add 0.0 where a product is -0.0) in ONNX Runtime gives
    the full decode's bits -- subnormal products included -- and the same model outputs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from dcformat import runtime
    from dcformat.graph import strip_weights
    from numpy_mlp import MLP

    rng = np.random.default_rng(6)
    cb = np.array([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0], F32)
    idx = rng.integers(0, 6, (48, 40))
    if encoding == "codebook-sparse":
        idx[rng.random(idx.shape) < 0.7] = 2
    sc = (rng.standard_normal(48) * np.exp(rng.uniform(-8, 3, 48))).astype(F32)
    sc[3], sc[4], sc[5] = 0.0, -1e-39, 3e38  # a pruned channel, a subnormal scale, products past float32
    net = MLP([40, 48, 10], seed=6)
    model = net.to_onnx()
    graph, arrays = strip_weights(model)
    records = [dcformat.encode_codebook("fc1.weight", cb, idx, encoding=encoding, scales=sc)]
    records += [dcformat.encode(k, v) for k, v in arrays.items() if k != "fc1.weight"]
    path = tmp_path / "s.dcz"
    dcformat.write(path, records, graph=graph)
    with dcformat.open(path) as r:
        full = r["fc1.weight"]
        got = runtime.decode_indices(r, "fc1.weight")
    assert got.indices.dtype == np.uint8 and got.scales.shape == (48, 1)
    assert np.array_equal(bits(got.rebuild()), bits(full))
    m = dcformat.to_onnx(path, compact=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops[:4] == ["Cast", "Gather", "Mul", "Add"]  # negative scales times the codebook's 0.0: Add 0
    m.graph.output.append(helper.make_tensor_value_info("fc1.weight", TensorProto.FLOAT, [48, 40]))
    feeds = {"input": rng.standard_normal((6, 40)).astype(F32)}
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"],
                                disabled_optimizers=["ConstantFolding"])
    outs = sess.run(None, feeds)
    assert np.array_equal(bits(outs[1]), bits(full))
    assert np.isinf(full).any() and (full == 0).any() and (np.abs(full[full != 0]) < 1.2e-38).any()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.add_session_config_entry("session.disable_prepacking", "1")
    comp = dcformat.InferenceSession(path, providers=["cpu"], sess_options=so, compact=True).run(None, feeds)
    so2 = ort.SessionOptions()
    so2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so2.add_session_config_entry("session.disable_prepacking", "1")
    ref = dcformat.InferenceSession(path, providers=["cpu"], sess_options=so2).run(None, feeds)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(comp, ref))


def test_compact_mode_without_negative_zero_needs_no_add(tmp_path):
    from dcformat import runtime

    cb = np.array([0.5, 1.0, 2.0], F32)
    t = dcformat.encode_codebook("w", cb, np.random.default_rng(0).integers(0, 3, (40, 40)),
                                 encoding="codebook-dense", scales=np.linspace(0.5, 2, 40).astype(F32))
    dcformat.write(tmp_path / "w.dcz", [t])
    with dcformat.open(tmp_path / "w.dcz") as r:
        got = runtime.decode_indices(r, "w")
        assert not got.needs_plus_zero
        assert np.array_equal(bits(got.rebuild()), bits(r["w"]))
        with pytest.raises(TypeError, match="per-channel scales"):
            values, idx = got


def test_compact_mode_keeps_scaled_float16_tensors_full(tmp_path):
    from dcformat import runtime

    t = dcformat.encode_codebook("w", [0.5, 1.0], np.zeros((40, 40), int), dtype="float16",
                                 encoding="codebook-dense", scales=np.ones(40, F32))
    dcformat.write(tmp_path / "w.dcz", [t])
    with dcformat.open(tmp_path / "w.dcz") as r:
        assert runtime.decode_indices(r, "w") is None


# ---------------------------------------------------------------- dcinspect
def test_dcinspect_shows_per_channel_scales(tmp_path, capsys):
    from dcformat import cli
    from dcformat.inspect import inspect_dcz

    rng = np.random.default_rng(8)
    ts = [dcformat.encode_codebook("conv", np.linspace(-1, 1, 16), rng.integers(0, 16, (32, 8, 3, 3)),
                                   scales=np.linspace(0.5, 2, 32), scale_dtype="float16", encoding="codebook-dense"),
          dcformat.encode_codebook("fc", [0.0, 0.5, -1.0], rng.integers(0, 3, (20, 30)), scales=np.ones(30),
                                   scale_axis=1, encoding="codebook-sparse"),
          dcformat.encode_codebook("plain", [0.5, -1.0], rng.integers(0, 2, (20, 30)), encoding="codebook-dense")]
    path = tmp_path / "s.dcz"
    dcformat.write(path, ts)
    rep = inspect_dcz(path)
    rows = {r["name"]: r for r in rep["tensors"]}
    assert rep["format_version"] == "1.2"
    assert (rows["conv"]["scale_axis"], rows["conv"]["scale_count"], rows["conv"]["scale_dtype"],
            rows["conv"]["scale_bytes"]) == (0, 32, "float16", 64)
    assert (rows["fc"]["scale_axis"], rows["fc"]["scale_count"], rows["fc"]["scale_dtype"]) == (1, 30, "float32")
    assert rows["plain"]["scale_axis"] is None and rows["plain"]["scale_bytes"] is None
    for r in rows.values():  # streams + padding = the section; the scales count as codebook bytes
        assert sum(r[f"{k}_bytes"] for k in ("gap", "index", "codebook", "raw")) + r["padding_bytes"] == r["bytes"]
    assert rows["conv"]["codebook_bytes"] == 16 * 4 + 64 and rows["conv"]["padding_bytes"] == 0
    assert cli._centroids(rows["conv"]) == "16x32@0" and cli._centroids(rows["plain"]) == "2"
    with pytest.raises(SystemExit) as e:
        cli.inspect_main([str(path), "--all"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "16x32@0" in out and "3x30@1" not in out and "2x30@1" in out  # the sparse codebook holds the non-zeros
    assert "per-channel scales: 2 tensors (30 float32 + 32 float16 values, 184 bytes)" in out
    with pytest.raises(SystemExit):
        cli.inspect_main([str(path), "--json"])
    js = __import__("json").loads(capsys.readouterr().out)
    assert {r["name"]: r["scale_count"] for r in js["tensors"]} == {"conv": 32, "fc": 30, "plain": None}

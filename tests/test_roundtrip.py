"""Round trips: encode -> write -> open -> decode gives the same bits, for any input.

Property tests (hypothesis) over dtypes, shapes (0-size and scalar included), sparsity,
codebook sizes, gap widths, encodings and lane sizes, and float-planes and lzma over random bit patterns
of every float dtype; plus the encoders' argument
errors and the writer's duplicate-name, atomicity and file-mode behaviour.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dcformat
from dcformat.constants import DTYPES, FLOAT_DTYPES, UINT_OF_SIZE

ENCS = ("raw", "codebook-dense", "codebook-sparse")
ALL_DTYPES = sorted(DTYPES)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---------------------------------------------------------------- helpers
def as_bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(-1).view(UINT_OF_SIZE.get(a.dtype.itemsize, np.uint8))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(as_bits(got), as_bits(want))


def roundtrip(path, tensors, **kw) -> dict:
    dcformat.write(path, tensors, **kw)
    with dcformat.open(path) as r:
        r.verify()
        assert list(r) == [t.name for t in tensors]
        for t in tensors:
            assert r.info(t.name).encoding == t.encoding
            assert r.info(t.name).nbytes == t.nbytes
        return {name: r[name] for name in r}


def lanes(n: int, lane: int) -> int:
    return (n + lane - 1) // lane


densities = st.one_of(st.sampled_from([0.0, 1.0, 0.001, 0.02]), st.floats(0, 1))
shapes = st.one_of(
    st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple),  # scalar, 0-size, small
    st.integers(200, 3000).map(lambda n: (n,)),  # several lanes of 256
    st.tuples(st.integers(1, 40), st.integers(1, 80)),
)


SPECIAL = {  # -0.0, quiet NaNs with payloads and sign, signalling NaNs, infinities, subnormals
    2: [0x8000, 0x7E00, 0xFE01, 0x7C01, 0x7FC1, 0xFFC0, 0x7F81, 0x7C00, 0x0001],
    4: [0x80000000, 0x7FC00000, 0xFFC12345, 0x7F800001, 0xFF812345, 0x7F800000, 0x00000001],
    8: [1 << 63, 0x7FF8000000000000, 0xFFF8000020000000, 0x7FF0000000000001, 0x7FF0000000000000, 1],
}


def make_array(dtype: str, shape, seed: int, k: int, density: float, values: str) -> np.ndarray:
    """A tensor of ``dtype``: a fraction ``density`` of its elements drawn from k values, the rest 0.

    values: "nice" -- multiples of 1/64, exact in every float dtype's codebook;
            "bits" -- arbitrary bit patterns;
            "special" -- nice values mixed with -0.0, NaNs (payloads, sign, signalling), inf, subnormals.
    """
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    n = int(np.prod(shape, dtype=np.int64))
    u = UINT_OF_SIZE.get(dt.itemsize, np.uint8)
    if dtype == "bool":
        pool = np.array([True, False])
    elif values == "bits" or dtype not in FLOAT_DTYPES:
        pool = rng.integers(0, np.iinfo(u).max, k, dtype=u, endpoint=True).view(dt)
    else:
        pool = (rng.integers(-2048, 2048, k) / 64.0).astype(dt)
        if values == "special":
            special = np.array(SPECIAL[dt.itemsize], np.uint64).astype(u).view(dt)
            pool = np.concatenate([pool, special[rng.random(special.size) < 0.5]])
    a = pool[rng.integers(0, pool.size, n)]
    keep = rng.random(n) < density
    a = np.where(keep, a, np.zeros((), dt)).astype(dt)
    return a.reshape(shape)


def codebook_ok(a: np.ndarray, encoding: str) -> bool:
    """Whether ``encoding`` (a codebook one) can hold ``a`` exactly, by the format's rules."""
    dtype = dcformat.constants.dtype_name(a.dtype)
    if dtype not in FLOAT_DTYPES or a.size == 0:
        return False
    bits = np.unique(as_bits(a))
    nonzero = int((bits != 0).sum())
    if nonzero > 256 or (encoding == "codebook-dense" and bits.size > 256):
        return False
    cbd = np.float16 if dtype == "float16" else np.float32
    with np.errstate(invalid="ignore", over="ignore"):
        back = bits.view(a.dtype).astype(np.float64).astype(cbd).astype(a.dtype)
    return bool(np.array_equal(as_bits(back), bits))


# ---------------------------------------------------------------- encode(): any array, exactly
@settings(max_examples=250, **SETTINGS)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 300),
    density=densities,
    values=st.sampled_from(["nice", "special", "bits"]),
    encoding=st.sampled_from([None, None, *ENCS, "lzma"]),
    gap_bits=st.one_of(st.none(), st.integers(1, 8)),
    lane=st.sampled_from([256, 1024]),
)
def test_encode_roundtrip(tmp_path, dtype, shape, seed, k, density, values, encoding, gap_bits, lane):
    a = make_array(dtype, shape, seed, k, density, values)
    if encoding in ("codebook-dense", "codebook-sparse") and not codebook_ok(a, encoding):
        with pytest.raises(dcformat.EncodeError):
            dcformat.encode("t", a, encoding=encoding, gap_bits=gap_bits, lane_size=lane)
        return
    t = dcformat.encode("t", a, encoding=encoding, gap_bits=gap_bits, lane_size=lane)
    if encoding is not None:
        assert t.encoding == encoding
    if t.encoding == "codebook-sparse" and gap_bits is not None:
        assert t.info.gap_bits == gap_bits
    if t.encoding not in ("raw", "lzma"):
        assert t.info.lane_size == lane
    out = roundtrip(tmp_path / "t.dcz", [t])
    assert_same(out["t"], a)


@settings(max_examples=120, **SETTINGS)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 256),
    density=densities,
    lane=st.sampled_from([256, 1024]),
)
def test_auto_picks_the_smallest(dtype, shape, seed, k, density, lane):
    """encode() with no encoding is never more than a few bytes per lane above any forced choice."""
    a = make_array(dtype, shape, seed, k, density, "nice")
    auto = dcformat.encode("t", a, lane_size=lane)
    alternatives = [dcformat.encode("t", a, encoding="raw")]
    if codebook_ok(a, "codebook-dense"):
        alternatives.append(dcformat.encode("t", a, encoding="codebook-dense", lane_size=lane))
    if codebook_ok(a, "codebook-sparse"):
        alternatives += [dcformat.encode("t", a, encoding="codebook-sparse", gap_bits=b, lane_size=lane)
                         for b in range(1, 9)]
    if a.size:
        alternatives.append(dcformat.encode("t", a, encoding="float-planes", lane_size=lane))
    slack = 8 + 4 * lanes(a.size, lane)
    for alt in alternatives:
        assert auto.nbytes <= alt.nbytes + slack, (auto.encoding, auto.info.gap_bits, alt.encoding, alt.info.gap_bits)
    if auto.encoding == "codebook-sparse":  # its gap width is as good as any other
        best = min(alt.nbytes for alt in alternatives if alt.encoding == "codebook-sparse")
        assert auto.nbytes <= best + slack


# ---------------------------------------------------------------- float-planes (1.1): any bit pattern
def float_array(dtype: str, n: int, seed: int, kind: str) -> np.ndarray:
    """n elements of a float dtype: uniformly random bit patterns (every NaN payload, subnormal,
    infinity and signed zero possible), trained-weight-like values, or weights salted with specials."""
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    u = UINT_OF_SIZE[dt.itemsize]
    if kind == "bits":
        return rng.integers(0, np.iinfo(u).max, n, dtype=u, endpoint=True).view(dt)
    a = (rng.standard_normal(n) * rng.choice([1e-3, 0.05, 3.0])).astype(dt)
    if kind == "special" and n:
        special = np.array(SPECIAL[dt.itemsize], np.uint64).astype(u).view(dt)
        at = rng.integers(0, n, max(1, n // 10))
        a[at] = special[rng.integers(0, special.size, at.size)]
    return a


@settings(max_examples=200, **SETTINGS)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    n=st.one_of(st.integers(0, 40), st.integers(200, 3000)),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["bits", "weights", "special"]),
    planes=st.one_of(st.none(), st.lists(st.sampled_from(["stored", "huffman"]), min_size=8, max_size=8)),
    lane=st.sampled_from([256, 512, 16384]),
)
@example(dtype="float32", n=200, seed=1275991, kind="weights", planes=None, lane=256)  # estimate < n <= measured
def test_float_planes_roundtrip(tmp_path, dtype, n, seed, kind, planes, lane):
    """Every bit pattern of every float dtype comes back exactly, whatever planes are coded."""
    a = float_array(dtype, n, seed, kind)
    w = a.dtype.itemsize
    modes = None if planes is None else planes[:w]
    t = dcformat.encode_float_planes("t", a, planes=modes, lane_size=lane)
    assert t.encoding == "float-planes" and len(t.info.planes) == w and t.info.lane_size == lane
    if modes is not None:
        assert list(t.info.planes) == modes
    else:  # the encoder codes a plane only when that is smaller than storing it
        for k, mode in enumerate(t.info.planes):
            assert (t.info.parts[f"plane{k}"] < n) if mode == "huffman" else (t.info.parts[f"plane{k}"] == n)
    assert t.info.nonzeros == np.count_nonzero(a)
    out = roundtrip(tmp_path / "p.dcz", [t])
    assert_same(out["t"], a)
    auto = dcformat.encode("t", a, lane_size=lane)  # the automatic choice is exact too, and never above raw
    assert auto.nbytes <= a.nbytes
    assert_same(roundtrip(tmp_path / "a.dcz", [auto])["t"], a)


# ---------------------------------------------------------------- lzma (1.3): any dtype, any bit pattern
@settings(max_examples=120, **SETTINGS)
@given(
    dtype=st.sampled_from(ALL_DTYPES),
    n=st.one_of(st.integers(0, 40), st.integers(200, 5000)),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["bits", "repeats", "special"]),
    shape2=st.booleans(),
)
def test_lzma_roundtrip(tmp_path, dtype, n, seed, kind, shape2):
    """Every bit pattern of every dtype comes back exactly through lzma, forced or chosen by encode()."""
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype]
    u = UINT_OF_SIZE.get(dt.itemsize, np.dtype(np.uint8))
    if dtype == "bool":
        a = rng.integers(0, 2, n).astype(bool)
    elif dtype in FLOAT_DTYPES and kind != "repeats":
        a = float_array(dtype, n, seed, "bits" if kind == "bits" else "special")
    else:
        a = rng.integers(0, np.iinfo(u).max, n, dtype=u, endpoint=True).view(dt)
    if kind == "repeats" and n:  # a few random patterns, repeated in runs: what lzma is chosen for
        a = np.tile(a[: max(1, n // 16)], 16)[:n] if dtype != "bool" else a
    if shape2 and n % 2 == 0 and n:
        a = a.reshape(2, -1)
    t = dcformat.encode_lzma("t", a)
    assert t.encoding == "lzma" and t.info.nonzeros == np.count_nonzero(a) and t.info.shape == a.shape
    assert_same(roundtrip(tmp_path / "z.dcz", [t])["t"], a)
    auto = dcformat.encode("t", a)
    assert auto.nbytes <= a.nbytes
    if auto.encoding == "lzma":  # chosen only when it saves a tenth and 64 bytes
        assert auto.nbytes <= 0.9 * a.nbytes - 64
    assert_same(roundtrip(tmp_path / "a.dcz", [auto])["t"], a)


def test_lzma_is_chosen_for_a_dft_basis_and_not_for_weights():
    """encode() picks lzma for an analytic table (a windowed DFT basis: many values, repeated in runs) and
    keeps float-planes for trained-weight-like values, where the probe says LZMA2 cannot win."""
    n = 128
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    ang = np.outer(np.arange(n // 2 + 1), np.arange(n)) * (2 * np.pi / n)
    basis = np.concatenate([win * np.cos(ang), -win * np.sin(ang)]).astype(np.float32)
    t = dcformat.encode("basis", basis)
    assert t.encoding == "lzma"
    assert t.nbytes < 0.5 * dcformat.encode("basis", basis, encoding="float-planes").nbytes
    w = (np.random.default_rng(5).standard_normal(basis.size) * 0.02).astype(np.float32)
    assert dcformat.encode("w", w).encoding == "float-planes"


FIB = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597])  # 4180 in all


@pytest.mark.parametrize("max_len", [11, 12, 13, 15])
@pytest.mark.parametrize("n", [7, 300, 1027, 4180])
def test_float_planes_decoder_paths(tmp_path, monkeypatch, max_len, n):
    """The decoder's paths, each against the plain bytes: codes of at most 12 bits use the two-codes
    table (kernels.PAIR_MAX_BITS), longer ones one code at a time; groups of four full lanes are
    interleaved, other lanes (and every lane's last few codes) decoded alone. Fibonacci symbol counts
    give the longest codes a length limit allows (other writers may use codes up to 15 bits)."""
    import importlib

    from dcformat.streams import parse_stream

    monkeypatch.setattr(importlib.import_module("dcformat.encode"), "PLANE_CODE_LENGTH", max_len)
    rng = np.random.default_rng(max_len * 1000 + n)
    planes = np.stack([rng.permutation(np.repeat(np.arange(FIB.size) * 13 + k, FIB))[:n] for k in range(4)])
    r = planes.astype(np.uint32)
    r = r[0] | (r[1] << 8) | (r[2] << 16) | (r[3] << 24)  # the rotated patterns (spec 7.4) whose planes these are
    a = ((r >> 1) | ((r & 1) << 31)).view(np.float32)
    t = dcformat.encode_float_planes("t", a, planes=["huffman"] * 4, lane_size=256)
    bits = {parse_stream(t.parts[f"plane{k}"], n, 256, 256, "t", 0).table_bits for k in range(4)}
    assert max(bits) == (max_len if n == 4180 else max(bits))  # the longest codes the limit allows
    assert_same(roundtrip(tmp_path / "p.dcz", [t])["t"], a)


@pytest.mark.parametrize("n", [5, 300, 4 * 256, 9 * 256 + 3])
def test_float_planes_single_symbol_planes(tmp_path, n):
    """A plane of one byte value is a single-symbol stream (0-bit codes, empty payload) in the pair
    table path too, in interleaved groups of four lanes and in lone lanes (a regression: the pair
    table was left unfilled for such a plane, and decoding never advanced)."""
    a = np.full(n, 0.375, np.float32)
    a[::7] = -0.375  # the sign lands in plane 0: one symbol in planes 1-3 only
    t = dcformat.encode_float_planes("c", a, planes=["huffman"] * 4, lane_size=256)
    assert_same(roundtrip(tmp_path / "c.dcz", [t])["c"], a)


def test_float_planes_on_weights_code_the_exponent():
    """On weight-like float32 / bfloat16 the encoder codes the exponent plane and beats raw by >15%."""
    rng = np.random.default_rng(3)
    for dt in (np.float32, DTYPES["bfloat16"]):
        a = (rng.standard_normal(50_000) * 0.02).astype(dt)
        t = dcformat.encode("w", a)
        assert t.encoding == "float-planes" and t.info.planes[-1] == "huffman"
        assert t.nbytes < 0.85 * a.nbytes, (dt, t.nbytes / a.nbytes)


def test_float_planes_code_a_plane_only_when_it_saves_two_percent(tmp_path):
    """A plane whose stream would save under 1/PLANE_SAVING_DIVISOR of its bytes is stored (decoding it costs
    more than the bytes are worth), one that saves more is coded; estimate_float_planes_bytes agrees, and the
    tensor still round-trips. Planes built directly: plane k's symbols skewed by skew[k]."""
    import importlib

    from dcformat.constants import PLANE_SAVING_DIVISOR

    enc = importlib.import_module("dcformat.encode")  # the module (dcformat.encode is the function)
    rng = np.random.default_rng(5)
    n = 60_000
    skew = (0.0, 0.5, 0.8, 0.95)  # saves ~0%, ~1.3%, ~5.7%, ~20%
    planes = []
    for a in skew:
        p = np.where(np.arange(256) < 128, 1 + a, 1 - a)
        planes.append(rng.choice(256, n, p=p / p.sum()).astype(np.uint32))
    t = planes[0] | (planes[1] << 8) | (planes[2] << 16) | (planes[3] << 24)  # the rotated pattern
    a = ((t >> 1) | (t << 31)).astype(np.uint32).view(np.float32)
    est = [enc._plane_estimate(plane.astype(np.uint8), 4096) for plane in planes]
    saving = [1 - e / n for e in est]
    assert 0 < saving[1] < 1 / PLANE_SAVING_DIVISOR < saving[2], saving  # the case the rule is about
    got = dcformat.encode_float_planes("w", a)
    assert got.info.planes == ("stored", "stored", "huffman", "huffman"), (got.info.planes, saving)
    assert abs(dcformat.estimate_float_planes_bytes(a) - got.nbytes) <= 2 * (n // 4096 + 1)
    assert_same(roundtrip(tmp_path / "w.dcz", [got])["w"], a)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_count_nonzero_matches_numpy_on_special_values(dtype):
    """decode.count_nonzero (the decoders' check of a record's declared non-zeros) counts what
    np.count_nonzero counts, on every dtype: +0.0 and -0.0 are zero; NaN, infinities, subnormals and
    the sign bit alone in an integer are not."""
    from dcformat.decode import COUNT_CHUNK, count_nonzero

    dt = DTYPES[dtype]
    rng = np.random.default_rng(7)
    w = dt.itemsize
    bits = rng.integers(0, 256, 4000 * w, dtype=np.uint8)
    a = bits.view(dt).copy() if dtype != "bool" else (bits[:4000] & 1).astype(bool)
    if dtype in FLOAT_DTYPES:
        special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45], np.float64).astype(dt)
        a[: special.size] = special
        a[::3] = np.array(-0.0).astype(dt)
        a[1::5] = 0
    else:
        a[::4] = 0
    fill = np.array(-0.0).astype(dt) if dtype in FLOAT_DTYPES else 1
    several_chunks = np.resize(a, 3 * COUNT_CHUNK + 5).reshape(-1, 1)
    for arr in (a, a[:0], a[:1], np.zeros(17, dt), several_chunks, np.full(9, fill, dt)):
        assert count_nonzero(arr) == np.count_nonzero(arr), (dtype, arr[:8])


def test_float_planes_argument_errors():
    a = np.ones(10, np.float32)
    for kwargs in (dict(planes=["huffman"] * 3), dict(planes=["raw"] * 4), dict(planes="huffman"), dict(lane_size=100)):
        with pytest.raises(dcformat.EncodeError):
            dcformat.encode_float_planes("t", a, **kwargs)
    with pytest.raises(dcformat.EncodeError):
        dcformat.encode_float_planes("t", np.arange(4, dtype=np.int32))
    with pytest.raises(dcformat.EncodeError):
        dcformat.encode("t", np.zeros(0, np.float32), encoding="float-planes")


# ---------------------------------------------------------------- encode_codebook(): quantized tensors
@settings(max_examples=200, **SETTINGS)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    codebook_dtype=st.sampled_from([None, "float32", "float16"]),
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 256),
    zero=st.sampled_from([None, "+0", "-0", "tiny"]),
    density=densities,
    encoding=st.sampled_from([None, *ENCS]),
    gap_bits=st.one_of(st.none(), st.integers(1, 8)),
    lane=st.sampled_from([256, 1024]),
)
def test_encode_codebook_roundtrip(tmp_path, dtype, codebook_dtype, shape, seed, k, zero, density, encoding,
                                   gap_bits, lane):
    rng = np.random.default_rng(seed)
    cb = rng.standard_normal(k) * 10.0 ** rng.integers(-6, 4, k)
    if zero is not None:  # one entry is +0.0, -0.0, or a value that rounds to 0 in float16
        cb[0] = {"+0": 0.0, "-0": -0.0, "tiny": 1e-12}[zero]
    n = int(np.prod(shape, dtype=np.int64))
    idx = rng.integers(0, k, n)
    if zero is not None:
        idx = np.where(rng.random(n) < density, idx, 0)
    idx = idx.astype(rng.choice([np.int64, np.int32, np.uint16])).reshape(shape)
    t = dcformat.encode_codebook("q", cb, idx, shape, dtype, encoding=encoding, gap_bits=gap_bits,
                                 codebook_dtype=codebook_dtype, lane_size=lane)
    cbd = codebook_dtype or ("float16" if dtype == "float16" else "float32")
    if encoding is not None:
        assert t.encoding == encoding
    if t.encoding != "raw":
        assert t.info.codebook_dtype == cbd and t.info.lane_size == lane
    if t.encoding == "codebook-sparse" and gap_bits is not None:
        assert t.info.gap_bits == gap_bits
    # element i is codebook[indices[i]], stored in the codebook dtype, cast to the tensor's dtype
    with np.errstate(over="ignore"):
        want = cb.astype(DTYPES[cbd]).astype(DTYPES[dtype])[idx.reshape(-1)].reshape(shape)
    out = roundtrip(tmp_path / "q.dcz", [t])
    assert_same(out["q"], want)


@settings(max_examples=40, **SETTINGS)
@given(
    names=st.lists(st.text(max_size=20), min_size=0, max_size=6, unique=True),
    seed=st.integers(0, 2**32 - 1),
    dtypes=st.lists(st.sampled_from(ALL_DTYPES), min_size=6, max_size=6),
    metadata=st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8),
                                                  max_size=4)),
)
def test_multi_tensor_file_roundtrip(tmp_path, names, seed, dtypes, metadata):
    arrays = {name: make_array(dt, (seed % 7, 3), seed + i, 5, 0.5, "nice")
              for i, (name, dt) in enumerate(zip(names, dtypes))}
    tensors = [dcformat.encode(name, a, lane_size=256) for name, a in arrays.items()]
    out = roundtrip(tmp_path / "m.dcz", tensors, metadata=metadata)
    assert list(out) == names
    for name, a in arrays.items():
        assert_same(out[name], a)
    with dcformat.open(tmp_path / "m.dcz") as r:
        assert r.metadata == (metadata or {})
        assert r.graph is None


def test_encoding_is_deterministic(tmp_path):
    a = make_array("float32", (3000,), 7, 40, 0.3, "nice")
    paths = []
    for i in range(2):
        ts = [dcformat.encode("a", a, lane_size=256), dcformat.encode("b", a, encoding="codebook-dense")]
        paths.append(tmp_path / f"{i}.dcz")
        dcformat.write(paths[-1], ts, metadata={"i": 1})
    assert paths[0].read_bytes() == paths[1].read_bytes()


# ---------------------------------------------------------------- encoder argument errors
CB = np.array([0.0, 0.5, -1.0])


@pytest.mark.parametrize("kwargs", [
    dict(indices=[0, 1, 3], shape=(3,)),  # index past the codebook
    dict(indices=[0, -1, 2], shape=(3,)),  # negative index
    dict(indices=[0.0, 1.0, 2.0], shape=(3,)),  # not integers
    dict(indices=[0, 1, 2], shape=(2, 2)),  # wrong count
    dict(indices=[0, 1], shape=(3,)),
    dict(indices=[0, 1, 2], shape=(3,), gap_bits=0),
    dict(indices=[0, 1, 2], shape=(3,), gap_bits=9),
    dict(indices=[0, 1, 2], shape=(3,), gap_bits=2.5),
    dict(indices=[0, 1, 2], shape=(3,), dtype="int8"),  # codebooks need a float dtype
    dict(indices=[0, 1, 2], shape=(3,), dtype="int32"),
    dict(indices=[0, 1, 2], shape=(3,), dtype="bool"),
    dict(indices=[0, 1, 2], shape=(3,), dtype="complex64"),
    dict(indices=[0, 1, 2], shape=(3,), codebook_dtype="float64"),
    dict(indices=[0, 1, 2], shape=(3,), codebook_dtype="bfloat16"),
    dict(indices=[0, 1, 2], shape=(3,), encoding="huffman"),
    dict(indices=[0, 1, 2], shape=(3,), lane_size=100),
    dict(indices=[0, 1, 2], shape=(3,), lane_size=128),
    dict(indices=[0, 1, 2], shape=(3,), lane_size=0),
    dict(indices=[0, 1, 2], shape=(3,), lane_size=1 << 25),
    dict(codebook=np.arange(1.0, 258.0), indices=[0, 1, 2], shape=(3,), encoding="codebook-dense"),
    dict(codebook=np.arange(1.0, 258.0), indices=[0, 1, 2], shape=(3,), encoding="codebook-sparse"),
    dict(codebook=np.arange(0.0, 257.0), indices=[0, 1, 2], shape=(3,), encoding="codebook-dense"),
    dict(codebook=np.arange(0.0, 258.0), indices=[0, 1, 2], shape=(3,)),  # too many entries for anything
    dict(codebook=[[0.0, 0.5], [1.0, 1.5]], indices=[0, 1, 2], shape=(3,)),  # a 2-D codebook is not flattened
    dict(codebook=0.5, indices=[0, 0, 0], shape=(3,)),
    dict(codebook=["a", "b"], indices=[0, 1, 1], shape=(3,)),
])
def test_encode_codebook_errors(kwargs):
    kwargs = {"codebook": CB, **kwargs}
    with pytest.raises(dcformat.EncodeError) as e:
        dcformat.encode_codebook("t", **kwargs)
    assert isinstance(e.value, dcformat.DczError) and isinstance(e.value, ValueError)


def test_encode_codebook_257_entries_with_zero():
    """256 non-zero values plus 0.0: too many for codebook-dense, fine for codebook-sparse (alphabet 257)."""
    cb = np.arange(0.0, 257.0) / 4
    idx = np.arange(600) % 257
    t = dcformat.encode_codebook("t", cb, idx, (600,), "float32", encoding="codebook-sparse", lane_size=256)
    assert t.info.codebook_size == 256 and t.info.index_alphabet == 257
    assert dcformat.encode_codebook("t", cb, idx, (600,), "float32").encoding != "codebook-dense"


@pytest.mark.parametrize("kwargs", [
    dict(encoding="codebook-dense", array=np.arange(5, dtype=np.int32)),
    dict(encoding="codebook-sparse", array=np.zeros((0, 3), np.float32)),
    dict(encoding="codebook-dense", array=np.arange(300, dtype=np.float32)),  # > 256 distinct values
    dict(encoding="codebook-sparse", array=np.arange(300, dtype=np.float32)),
    dict(encoding="codebook-dense", array=np.array([0.1, 0.2], np.float64)),  # not exact in float32
    dict(encoding="foo", array=np.ones(3, np.float32)),
    dict(gap_bits=0, array=np.ones(3, np.float32)),
    dict(lane_size=1000, array=np.ones(3, np.float32)),
    dict(array=np.ones(3, np.complex64)),
    dict(array=np.array(["a"])),
    dict(name=5, array=np.ones(3, np.float32)),
])
def test_encode_errors(kwargs):
    name = kwargs.pop("name", "t")
    array = kwargs.pop("array")
    with pytest.raises(dcformat.EncodeError):
        dcformat.encode(name, array, **kwargs)


# ---------------------------------------------------------------- the writer
def test_duplicate_names(tmp_path):
    a = dcformat.encode("w", np.ones(3, np.float32))
    b = dcformat.encode("w", np.zeros(2, np.int8))
    path = tmp_path / "d.dcz"
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(path, [a, b])
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_non_tensors(tmp_path):
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(tmp_path / "x.dcz", [np.ones(3)])
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(tmp_path / "x.dcz", [], metadata={"x": object()})
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(tmp_path / "x.dcz", [], graph=object())
    assert list(tmp_path.iterdir()) == []


class Boom(Exception):
    pass


def _failing_tensors():
    yield dcformat.encode("a", np.ones(10, np.float32))
    yield dcformat.encode("b", np.arange(10, dtype=np.int16))
    raise Boom("iterator fails midway")


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "f.dcz"
    with pytest.raises(Boom):
        dcformat.write(path, _failing_tensors())
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.dcz"
    dcformat.write(path, [dcformat.encode("old", np.ones(3, np.float32))])
    before = path.read_bytes()
    with pytest.raises(Boom):
        dcformat.write(path, _failing_tensors())
    assert path.read_bytes() == before

    def boom(*_):
        raise Boom("disk full")

    monkeypatch.setattr(os, "fsync", boom)  # fails after the temporary file is written
    with pytest.raises(Boom):
        dcformat.write(path, [dcformat.encode("new", np.zeros(5, np.float32))])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.dcz"]


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "r.dcz"
    dcformat.write(path, [dcformat.encode("a", np.ones(3, np.float32))])
    size = dcformat.write(path, [dcformat.encode("b", np.zeros(4, np.int64))])
    assert size == path.stat().st_size
    with dcformat.open(path) as r:
        assert list(r) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.dcz"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_file_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "u.dcz"
        dcformat.write(path, [dcformat.encode("a", np.ones(3, np.float32))])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_accepts_str_path_and_no_tensors(tmp_path):
    path = str(tmp_path / "e.dcz")
    dcformat.write(path, [])
    with dcformat.open(path) as r:
        r.verify()
        assert len(r) == 0 and r.metadata == {} and r.graph is None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("pattern", ["neg_zero", "nan_payloads", "signalling"])
def test_special_bit_patterns(tmp_path, dtype, pattern):
    """-0.0 and NaNs (payloads, sign, signalling) come back exactly, whatever encoding is chosen."""
    dt = DTYPES[dtype]
    u = UINT_OF_SIZE[dt.itemsize]
    sign = {2: 0x8000, 4: 0x80000000, 8: 1 << 63}[dt.itemsize]
    if dtype == "float16":
        quiet, snan = [0x7E00, 0x7E01, 0xFF55], [0x7C01, 0xFD00]
    elif dtype == "bfloat16":
        quiet, snan = [0x7FC0, 0x7FC1, 0xFFE5], [0x7F81, 0xFF90]
    elif dtype == "float32":
        quiet, snan = [0x7FC00000, 0x7FC12345, 0xFFE00001], [0x7F800001, 0xFF812345]
    else:
        quiet, snan = [0x7FF8000000000000, 0x7FF8000020000000, 0xFFF8000000000001], [0x7FF0000000000001]
    pats = {"neg_zero": [sign, 0], "nan_payloads": quiet + [sign, 0], "signalling": snan + quiet + [0]}[pattern]
    a = np.array(pats, dtype=np.uint64).astype(u)[np.arange(700) % len(pats)].view(dt).reshape(7, 100)
    for enc in (None, *ENCS, "float-planes"):
        try:
            t = dcformat.encode("x", a, encoding=enc, lane_size=256)
        except dcformat.EncodeError:
            assert enc is not None and enc != "raw" and not codebook_ok(a, enc)
            continue
        out = roundtrip(tmp_path / "s.dcz", [t])
        assert_same(out["x"], a)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_auto_on_small_tensors(dtype):
    """A grid of small tensors (where fixed overheads dominate): auto is within a few bytes of the best."""
    dt = DTYPES[dtype]
    for n in (*range(0, 41), 255, 256, 257, 600):
        for pattern in ("zeros", "one", "half", "dense"):
            a = np.zeros(n, dt)
            if pattern == "one" and n:
                a[n // 2] = 1.5
            elif pattern == "half":
                a[::2] = 0.25
            elif pattern == "dense":
                a[:] = (np.arange(n) % 5 - 2) / 4
            auto = dcformat.encode("t", a, lane_size=256)
            best = dcformat.encode("t", a, encoding="raw").nbytes
            if n:
                best = min(best, dcformat.encode("t", a, encoding="codebook-dense", lane_size=256).nbytes,
                           dcformat.encode("t", a, encoding="float-planes", lane_size=256).nbytes,
                           *(dcformat.encode("t", a, encoding="codebook-sparse", gap_bits=b, lane_size=256).nbytes
                             for b in range(1, 9)))
            assert auto.nbytes <= best + 8 + 4 * lanes(n, 256), (n, pattern, auto.encoding, auto.nbytes, best)

#!/usr/bin/env python3
"""Generate the golden test vectors of the .dcz format into spec/vectors/.

    python tools/gen_vectors.py [--out DIR]

Each vector is a small ``NAME.dcz`` file. The arrays a reader must decode from it are
stored next to it as ``NAME.<i>.npy`` (i = the tensor's position in the file, so that
tensor names need not be valid file names); bfloat16 arrays, which .npy cannot hold, are
stored as their uint16 bit patterns. ``MANIFEST.json`` lists every vector: what it
covers, its size and sha256, its metadata, whether it has a graph, and for each tensor
its name, dtype, shape, encoding (and encoding parameters) and expected-array file.

Everything is deterministic: the inputs are explicit arrays or come from a fixed
splitmix64 sequence (not numpy's RNG, whose streams may change between releases), so
running the script twice gives byte-identical files. The script checks each vector by
reading it back before recording it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dcformat  # noqa: E402
from dcformat.constants import DTYPES, FLOAT_DTYPES, UINT_OF_SIZE  # noqa: E402

BF16 = DTYPES["bfloat16"]
F32, F16, F64 = np.float32, np.float16, np.float64
DEFAULT_OUT = ROOT / "spec" / "vectors"
MANIFEST = "MANIFEST.json"
LANE = 256  # the smallest lane size: many lanes from few elements

# ---------------------------------------------------------------- deterministic inputs
_M64 = (1 << 64) - 1


def splitmix64(seed: int, n: int) -> np.ndarray:
    """n pseudo-random uint64 values: splitmix64 of seed + i * golden (exact, portable)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & _M64) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniform(seed: int, n: int) -> np.ndarray:
    """n floats in [0, 1)."""
    return (splitmix64(seed, n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def randint(seed: int, n: int, k: int) -> np.ndarray:
    """n integers in [0, k)."""
    return (splitmix64(seed, n) % np.uint64(k)).astype(np.int64)


def levels(k: int, dtype=F32, scale: float = 1.0) -> np.ndarray:
    """k distinct non-zero values exactly representable in float16 (and so in every float dtype)."""
    v = (np.arange(k, dtype=np.float64) - k // 2) / 64.0 * scale
    v[v >= 0] += 1 / 64.0 * scale  # skip zero
    assert np.unique(v.astype(F16)).size == k
    return v.astype(dtype)


def quantized(seed: int, shape, k: int, density: float, dtype=F32) -> np.ndarray:
    """A pruned, weight-shared tensor: a fraction ``density`` of non-zeros from k levels."""
    n = int(np.prod(shape, dtype=np.int64))
    vals = levels(k, dtype)[randint(seed, n, k)]
    keep = uniform(seed + 1, n) < density
    return np.where(keep, vals, np.zeros((), dtype)).astype(dtype).reshape(shape)


def bits(values, dtype) -> np.ndarray:
    """An array of ``dtype`` from its unsigned bit patterns."""
    dt = np.dtype(dtype)
    return np.asarray(values, dtype=np.uint64).astype(UINT_OF_SIZE[dt.itemsize]).view(dt)


# ---------------------------------------------------------------- the vectors
VECTORS = []  # (name, covers, builder) in generation order
FILL_BYTES = 1 << 20  # a constant expected array larger than this is given by its value (expected_fill)


def vector(name: str, covers: str):
    def register(fn):
        VECTORS.append((name, covers, fn))
        return fn

    return register


def enc(name, array, **kw):
    """An exact encoding of ``array`` and the array a reader must decode."""
    return dcformat.encode(name, array, **kw), np.asarray(array)


@vector("raw_dtypes", "raw encoding of every dtype: float64/32/16, bfloat16, int64/32/16/8, uint64/32/16/8, bool")
def _raw_dtypes():
    n = 7
    z = splitmix64(1, n)
    arrays = {
        "float64": (uniform(2, n) * 200 - 100).reshape(7),
        "float32": (uniform(3, 12) * 8 - 4).astype(F32).reshape(3, 4),
        "float16": (uniform(4, 6) * 8 - 4).astype(F16).reshape(2, 3),
        "bfloat16": (uniform(5, 10) * 8 - 4).astype(BF16).reshape(5, 2),
        "int64": z.view(np.int64),
        "int32": z.astype(np.uint32).view(np.int32),
        "int16": z.astype(np.uint16).view(np.int16),
        "int8": np.arange(-128, 128, 37, dtype=np.int8),
        "uint64": z,
        "uint32": z.astype(np.uint32),
        "uint16": z.astype(np.uint16),
        "uint8": np.array([[0, 1, 127], [128, 254, 255]], np.uint8),
        "bool": np.array([[True, False, True, True], [False, False, True, False]]),
    }
    return {"tensors": [(dcformat.encode_raw(k, v), v) for k, v in arrays.items()]}


@vector("dense_f32", "codebook-dense float32, 16-entry float32 codebook, default lane size (one lane)")
def _dense_f32():
    w = quantized(10, (24, 40), 16, 1.0)
    return {"tensors": [enc("w", w, encoding="codebook-dense")]}


@vector("sparse_f32", "codebook-sparse float32, ~10% non-zero, 15-entry codebook, gap width chosen by the encoder")
def _sparse_f32():
    w = quantized(20, (32, 48), 15, 0.1)
    return {"tensors": [enc("w", w, encoding="codebook-sparse")]}


@vector("auto", "encoder's own choice (smallest) for a dense-ish, a sparse and an integer tensor, and a "
        "many-valued float tensor stored raw (a 1.0 file: the 1.1 encoder would pick float-planes for it, see auto_v11)")
def _auto():
    many = (uniform(31, 300) * 2 - 1).astype(F32).reshape(20, 15)  # 300 distinct values
    return {"tensors": [
        enc("dense", quantized(32, (30, 30), 8, 0.9)),
        enc("sparse", quantized(33, (30, 30), 8, 0.05)),
        enc("many_values", many, encoding="raw"),
        enc("ints", randint(34, 50, 1000).astype(np.int32)),
    ]}


@vector("codebook_dtypes",
        "codebook encodings of float16 (float16 codebook), bfloat16 and float64 (float32 codebook) tensors, "
        "and a float32 tensor with a float16 codebook")
def _codebook_dtypes():
    out = []
    for dt, tag in ((F16, "f16"), (BF16, "bf16"), (F64, "f64")):
        out.append(enc(f"{tag}.dense", quantized(40, (17, 13), 12, 0.8, dt), encoding="codebook-dense"))
        out.append(enc(f"{tag}.sparse", quantized(41, (17, 13), 12, 0.2, dt), encoding="codebook-sparse"))
    cb = levels(10)  # exactly representable in float16
    for e, density in (("codebook-dense", 1.0), ("codebook-sparse", 0.25)):
        idx = randint(42, 300, 10)
        idx = np.where(uniform(43, 300) < density, idx, 10)  # index 10 is the codebook's 0.0
        full_cb = np.append(cb, F32(0))
        t = dcformat.encode_codebook(f"f32.fp16cb.{e}", full_cb, idx, (300,), "float32",
                                     encoding=e, codebook_dtype="float16")
        out.append((t, full_cb.astype(F16).astype(F32)[idx]))
    return {"tensors": out}


@vector("empty_tensors", "0-element tensors: shape (0, 3) raw, (0,) int64 raw, (5, 0) codebook-dense and "
        "(0, 4) codebook-sparse (empty streams)")
def _empty():
    e = np.zeros((0, 3), F32)
    cb = np.array([0.5, 0.0])
    return {"tensors": [
        enc("empty.raw", e),
        enc("empty.int64", np.zeros((0,), np.int64)),
        (dcformat.encode_codebook("empty.dense", cb, np.zeros(0, np.int64), (5, 0), "float32",
                                  encoding="codebook-dense"), np.zeros((5, 0), F32)),
        (dcformat.encode_codebook("empty.sparse", cb, np.zeros(0, np.int64), (0, 4), "float16",
                                  encoding="codebook-sparse"), np.zeros((0, 4), F16)),
    ]}


@vector("scalars", "shape () tensors: raw float32 and int64, codebook-dense, codebook-sparse with one entry "
        "and with zero entries")
def _scalars():
    return {"tensors": [
        enc("s.raw", np.array(3.25, F32)),
        enc("s.int64", np.array(-7, np.int64)),
        enc("s.dense", np.array(-1.5, F32), encoding="codebook-dense"),
        enc("s.sparse", np.array(0.75, F16), encoding="codebook-sparse"),
        enc("s.sparse_zero", np.array(0.0, F32), encoding="codebook-sparse"),
    ]}


@vector("one_element", "1-element tensors (shapes (1,) and (1, 1, 1)) in each encoding")
def _one_element():
    return {"tensors": [
        enc("one.raw", np.array([2.5], F64)),
        enc("one.dense", np.array([[[0.125]]], F32), encoding="codebook-dense"),
        enc("one.sparse", np.array([-0.25], BF16), encoding="codebook-sparse"),
        enc("one.bool", np.array([True])),
    ]}


@vector("one_symbol", "a single distinct symbol: zero-bit Huffman codes (empty payloads) in codebook-dense "
        "and in both streams of codebook-sparse; 600 elements over 3 lanes of 256")
def _one_symbol():
    return {"tensors": [
        enc("const.dense", np.full((600,), 0.5, F32), encoding="codebook-dense", lane_size=LANE),
        enc("const.sparse", np.full((20, 30), -2.0, F32), encoding="codebook-sparse", lane_size=LANE),
    ]}


@vector("all_zeros", "all elements +0.0: codebook-sparse with 0 entries (no lanes, empty streams), "
        "codebook-dense with a one-entry codebook {0.0}, and a raw zero tensor")
def _all_zeros():
    z = np.zeros((16, 32), F32)
    return {"tensors": [
        enc("zeros.sparse", z, encoding="codebook-sparse"),
        enc("zeros.dense", z, encoding="codebook-dense"),
        enc("zeros.raw", np.zeros((4, 4), F16), encoding="raw"),
    ]}


@vector("gap_fillers", "codebook-sparse gaps needing filler entries: zero runs of exactly 2^b - 1, 2^b and "
        "2^b + 1 for b = 1, 2, 3, 4, 8, long runs, a leading and a trailing run; forced gap_bits 1, 2, 3 and 8, "
        "and the encoder's choice")
def _gap_fillers():
    gaps = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 256, 257, 0, 600, 1, 0]
    pos = np.cumsum(np.array(gaps) + 1) - 1
    a = np.zeros(int(pos[-1]) + 100, F32)  # and a trailing run of 99 zeros
    a[pos] = levels(len(pos))
    lead = np.zeros(700, F32)
    lead[[300, 555, 556]] = [1.0, -1.0, 0.5]  # leading run of 300, trailing run of 143
    out = [enc(f"b{b}", a, encoding="codebook-sparse", gap_bits=b) for b in (1, 2, 3, 8)]
    out.append(enc("b_auto", a, encoding="codebook-sparse"))
    out.append(enc("lead_trail.b1", lead, encoding="codebook-sparse", gap_bits=1))
    out.append(enc("lead_trail.b8", lead, encoding="codebook-sparse", gap_bits=8, lane_size=LANE))
    return {"tensors": out}


@vector("lanes", "many lanes of 256 symbols (lane_size=256): codebook-dense over 12 lanes, codebook-sparse "
        "with 10 lanes and non-trivial lane bases, and sparse with fillers across lane boundaries")
def _lanes():
    dense = quantized(60, (50, 60), 20, 1.0)  # 3000 symbols
    sparse = quantized(61, (64, 64), 9, 0.6)  # ~2500 entries
    spread = quantized(62, (40, 100), 7, 0.08)  # gaps of ~12 with b = 1: many fillers
    return {"tensors": [
        enc("dense", dense, encoding="codebook-dense", lane_size=LANE),
        enc("sparse", sparse, encoding="codebook-sparse", gap_bits=2, lane_size=LANE),
        enc("spread.b1", spread, encoding="codebook-sparse", gap_bits=1, lane_size=LANE),
    ]}


@vector("codebook256", "largest codebooks: codebook-dense with 256 entries, codebook-sparse with 256 non-zero "
        "values plus zero (index alphabet 257, 16-bit index symbols)")
def _codebook256():
    vals = levels(256)
    dense = vals[np.concatenate([np.arange(256), randint(70, 744, 256)])]
    n = 1500
    idx = randint(71, n, 256)
    sparse = np.where(uniform(72, n) < 0.5, vals[idx], F32(0))
    sparse[:256] = vals  # every value at least once
    return {"tensors": [
        enc("cb256.dense", dense.reshape(40, 25), encoding="codebook-dense"),
        enc("cb257.sparse", sparse.reshape(30, 50), encoding="codebook-sparse", lane_size=LANE),
    ]}


@vector("special_values", "-0.0, NaNs with payloads and sign, infinities and subnormals kept bit-exactly: "
        "float32 dense and sparse (-0.0 is a codebook value, not the sparse zero), float16 (NaNs in a "
        "same-dtype codebook), bfloat16 (no NaN in its float32 codebook), and raw float32/float64/float16/"
        "bfloat16 with signalling NaNs and payloads (the codebook path would not keep them)")
def _special():
    f32 = bits([0x00000000, 0x80000000, 0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7F800000, 0xFF800000,
                0x00000001, 0x807FFFFF, 0x3F800000], F32)
    rep = f32[randint(80, 200, f32.size)]
    f16 = bits([0x0000, 0x8000, 0x7E00, 0xFE00, 0x7E01, 0xFF55, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x3C00], F16)
    # bfloat16 decodes through a float32 codebook: which NaN that gives is implementation-defined
    # (FORMAT.md 7.2), so its codebook vectors hold no NaN; raw keeps NaNs exactly
    bf16 = bits([0x0000, 0x8000, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x3F80, 0xC0A0], BF16)
    nan_bf16 = bits([0x7FC0, 0xFFC1, 0x7F81, 0x8000, 0x3F80], BF16)
    snan32 = bits([0x7F800001, 0xFF812345, 0x3F800000, 0x80000000], F32)
    snan64 = bits([0x7FF0000000000001, 0xFFF4000000000000, 0x8000000000000000, 0x3FF0000000000000], F64)
    snan16 = bits([0x7C01, 0xFD55, 0x8000, 0x3C00], F16)
    return {"tensors": [
        enc("f32.dense", rep.reshape(10, 20), encoding="codebook-dense"),
        enc("f32.sparse", rep.reshape(10, 20), encoding="codebook-sparse"),
        enc("f32.neg_zero_only", bits([0x80000000] * 5 + [0] * 5, F32), encoding="codebook-sparse"),
        enc("f16.dense", f16[randint(81, 120, f16.size)], encoding="codebook-dense"),
        enc("f16.sparse", f16[randint(82, 120, f16.size)], encoding="codebook-sparse"),
        enc("bf16.dense", bf16[randint(83, 90, bf16.size)], encoding="codebook-dense"),
        enc("bf16.sparse", bf16[randint(84, 90, bf16.size)], encoding="codebook-sparse"),
        enc("f32.snan.raw", snan32),
        enc("f64.snan.raw", snan64),
        enc("f16.snan.raw", snan16, encoding="raw"),
        enc("bf16.nan.raw", nan_bf16, encoding="raw"),
    ]}


@vector("multi_meta", "weights-only file: several tensors with unusual names (unicode, quotes, slashes, "
        "spaces, empty) and a metadata section")
def _multi_meta():
    names = ["features.0.weight", "features/0/bias", "na\u00efve \u2013 \u00fcn\u00efc\u00f8de \U0001F600",
             'quote" back\\slash', "with space\tand tab", ""]
    tensors = [
        enc(names[0], quantized(90, (8, 3, 3, 3), 6, 0.4)),
        enc(names[1], (uniform(91, 8) - 0.5).astype(F32)),
        enc(names[2], quantized(92, (10, 10), 4, 1.0, F16), encoding="codebook-dense"),
        enc(names[3], np.arange(6, dtype=np.int64).reshape(2, 3)),
        enc(names[4], np.array([True, False, True])),
        enc(names[5], np.array(1.0, F32)),
    ]
    metadata = {"producer": "tools/gen_vectors.py", "model": {"name": "tiny", "layers": [1, 2, 3]},
                "unicode": "\u00e9\u4e2d", "sparsity": 0.5, "none": None, "flag": True}
    return {"tensors": tensors, "metadata": metadata}


def _tiny_onnx(tensors):
    """Y = relu(X @ W + B), with W and B stored in the .dcz file (external, location "dcz")."""
    from onnx import TensorProto, helper

    def external(name, arr):
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "dcz"), ("tensor", name)):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    (w_name, w), (b_name, b) = tensors
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", w_name], ["XW"], name="matmul"),
         helper.make_node("Add", ["XW", b_name], ["XWB"], name="add"),
         helper.make_node("Relu", ["XWB"], ["Y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, w.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, w.shape[1]])],
        initializer=[external(w_name, w), external(b_name, b)],
    )
    # explicit versions: the bytes must not depend on the installed onnx's defaults
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="dcz-gen-vectors", producer_version="1")
    return model


@vector("graph", "a graph section: a tiny ONNX model (MatMul, Add, Relu) whose initializers have "
        "data_location EXTERNAL and external_data {location: dcz, tensor: NAME}, plus metadata")
def _graph():
    w = quantized(100, (4, 3), 5, 0.5)
    b = np.array([0.5, -0.25, 0.0], F32)
    model = _tiny_onnx([("fc.weight", w), ("fc.bias", b)])
    return {"tensors": [enc("fc.weight", w, encoding="codebook-sparse"), enc("fc.bias", b)],
            "graph": model, "metadata": {"producer": "tools/gen_vectors.py"}}


@vector("padded", "a padding section (FORMAT.md 5.4): a 20 MiB all-zero float32 buffer stores in a few hundred "
        "bytes, more than the expansion bound of so small a file allows, so the writer appends zeros until "
        "1024 x file size + 16 MiB covers it (its expected array is given as expected_fill)")
def _padded():
    return {"tensors": [
        enc("buffer", np.zeros((1280, 4096), F32), encoding="codebook-sparse"),
        enc("w", levels(4)[randint(11, 64, 4)].reshape(8, 8), encoding="codebook-dense"),
    ]}


@vector("no_tensors", "a file with no sections at all (no tensors, metadata or graph)")
def _no_tensors():
    return {"tensors": []}


@vector("metadata_only", "a file with a metadata section and no tensors")
def _metadata_only():
    return {"tensors": [], "metadata": {"note": "no tensors here", "empty": {}, "list": []}}


# ---------------------------------------------------------------- 1.1: float-planes
def weights(seed: int, n: int, dtype, scale: float = 0.05) -> np.ndarray:
    """n trained-weight-like values: roughly normal (sum of 4 uniforms), scaled, in ``dtype``."""
    u = sum(uniform(seed + j, n) for j in range(4)) - 2.0
    return (u * scale).astype(F64).astype(dtype)


def fplanes(name, array, planes=None, lane_size=None):
    kw = {} if lane_size is None else {"lane_size": lane_size}
    return dcformat.encode_float_planes(name, array, planes=planes, **kw), np.asarray(array)


def _specials(dtype) -> np.ndarray:
    """NaNs with payloads (quiet and signalling, both signs), +-0, +-inf, subnormals, extremes."""
    table = {
        F32: [0x00000000, 0x80000000, 0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7F800001, 0xFFBFFFFF, 0x7F800000,
              0xFF800000, 0x00000001, 0x807FFFFF, 0x00400000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x3F800000],
        F16: [0x0000, 0x8000, 0x7E00, 0xFE00, 0x7E01, 0x7C01, 0xFDFF, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x0200,
              0x7BFF, 0xFBFF, 0x0400, 0x3C00],
        BF16: [0x0000, 0x8000, 0x7FC0, 0xFFC0, 0x7FC1, 0x7F81, 0xFFBF, 0x7F80, 0xFF80, 0x0001, 0x807F, 0x0040,
               0x7F7F, 0xFF7F, 0x0080, 0x3F80],
        F64: [0x0, 0x8000000000000000, 0x7FF8000000000000, 0xFFF8000000000000, 0x7FF8000000012345,
              0x7FF0000000000001, 0xFFF7FFFFFFFFFFFF, 0x7FF0000000000000, 0xFFF0000000000000, 0x1,
              0x800FFFFFFFFFFFFF, 0x0008000000000000, 0x7FEFFFFFFFFFFFFF, 0xFFEFFFFFFFFFFFFF, 0x0010000000000000,
              0x3FF0000000000000],
    }[dtype]
    return bits(table, dtype)


@vector("float_planes", "float-planes (1.1) of trained-weight-like float32, float16, bfloat16 and float64 tensors: "
        "the encoder's choice of planes (exponent plane Huffman-coded, mantissa planes stored), every plane "
        "Huffman-coded, and a mix; lane_size 256 (many lanes) and the default")
def _float_planes():
    out = []
    for dt, tag, seed in ((F32, "f32", 200), (F16, "f16", 210), (BF16, "bf16", 220), (F64, "f64", 230)):
        w = np.dtype(dt).itemsize
        a = weights(seed, 600, dt).reshape(20, 30)
        out.append(fplanes(f"{tag}.auto", a, lane_size=LANE))
        out.append(fplanes(f"{tag}.all_huffman", a, planes=["huffman"] * w, lane_size=LANE))
        out.append(fplanes(f"{tag}.mixed", a, planes=["huffman", "stored"] * (w // 2)))
    return {"tensors": out}


@vector("float_planes_special", "float-planes keeping every bit pattern: NaNs with payloads and both signs "
        "(quiet and signalling), -0.0/+0.0, infinities, subnormals, largest and smallest normals, among ordinary "
        "values, for float32, float16, bfloat16 and float64, every plane Huffman-coded and every plane stored")
def _float_planes_special():
    out = []
    for dt, tag, seed in ((F32, "f32", 240), (F16, "f16", 241), (BF16, "bf16", 242), (F64, "f64", 243)):
        w = np.dtype(dt).itemsize
        sp = _specials(dt)
        a = weights(seed, 300, dt)
        a[randint(seed, sp.size, 300)] = sp  # specials at scattered places
        a[:sp.size] = sp  # ... and every one of them at least once
        out.append(fplanes(f"{tag}.huffman", a, planes=["huffman"] * w, lane_size=LANE))
        out.append(fplanes(f"{tag}.stored", a, planes=["stored"] * w))
    return {"tensors": out}


@vector("float_planes_edges", "float-planes edge cases: 0 elements (every part empty), a scalar, a constant "
        "tensor (single-symbol streams: zero-bit codes, empty payloads, over 3 lanes), a tensor whose length is "
        "a multiple of the lane size, and a last lane of one element")
def _float_planes_edges():
    return {"tensors": [
        fplanes("empty", np.zeros((0, 3), F32), planes=["huffman"] * 4),
        fplanes("scalar", np.array(-1.75, F16), planes=["huffman", "huffman"]),
        fplanes("const", np.full(600, 0.375, F32), planes=["huffman"] * 4, lane_size=LANE),
        fplanes("exact_lanes", weights(250, 512, BF16), planes=["stored", "huffman"], lane_size=LANE),
        fplanes("one_more", weights(251, 257, F32), planes=["huffman"] * 4, lane_size=LANE),
    ]}


@vector("auto_v11", "the 1.1 encoder's own choice (dcformat.encode): float-planes for many-valued float32, "
        "float16 and bfloat16 weights, a codebook encoding for a quantized tensor and raw for a tiny one, in one file")
def _auto_v11():
    return {"tensors": [
        enc("f32", weights(260, 2000, F32).reshape(20, 100)),
        enc("f16", weights(261, 2000, F16)),
        enc("bf16", weights(262, 2000, BF16).reshape(2, 1000)),
        enc("quantized", quantized(263, (30, 30), 8, 0.9)),
        enc("tiny", weights(264, 5, F32)),
    ]}


def scaled_expected(codebook, idx, shape, dtype, scales, axis, codebook_dtype=F32, scale_dtype=F32) -> np.ndarray:
    """What a reader must decode from a record with per-channel scales (FORMAT.md 7.5), computed here with
    numpy alone: float32(scale) * float32(codebook entry) in binary32, a zero product +0.0, converted to
    the tensor's dtype, a zero that makes +0.0."""
    cb = np.asarray(codebook, F64).astype(codebook_dtype).astype(F32)
    sc = np.asarray(scales, F64).astype(scale_dtype).astype(F32)
    bshape = [1] * len(shape)
    bshape[axis] = -1
    with np.errstate(over="ignore"):  # a product may overflow to infinity (per_channel_edges)
        p = cb[np.asarray(idx).reshape(shape)] * sc.reshape(bshape)
    assert p.dtype == F32
    p[p == 0] = 0
    out = p.astype(dtype)
    out[out == 0] = 0
    return out


def scaled(name, codebook, idx, shape, dtype, scales, axis, encoding, scale_dtype="float32", **kw):
    t = dcformat.encode_codebook(name, codebook, idx, shape, np.dtype(dtype).name if dtype != BF16 else "bfloat16",
                                 encoding=encoding, scales=scales, scale_axis=axis, scale_dtype=scale_dtype, **kw)
    cbd = F16 if t.info.codebook_dtype == "float16" else F32
    return t, scaled_expected(codebook, idx, shape, dtype, scales, axis, cbd, F16 if scale_dtype == "float16" else F32)


def channel_scales(seed: int, c: int) -> np.ndarray:
    """c per-channel scales over four orders of magnitude, both signs (BN-folded channels' ranges differ that
    much), exactly representable in float16."""
    e = randint(seed, c, 14) - 10  # 2^-10 .. 2^3
    m = 1 + randint(seed + 1, c, 64) / 64.0
    sign = np.where(uniform(seed + 2, c) < 0.2, -1.0, 1.0)
    return (sign * m * 2.0 ** e).astype(F32)


@vector("per_channel", "per-channel scales (1.2, FORMAT.md 7.5): codebook-dense and codebook-sparse float32 "
        "tensors with float32 and float16 scales along axis 0 (a 4-D conv weight, a matrix) and along the last axis, "
        "negative and zero scales, many lanes (lane_size 256); float16, bfloat16 and float64 tensors with scales "
        "(product in float32, then converted)")
def _per_channel():
    out = []
    k = 16
    cb = levels(k) * 4  # a shared codebook of normalised values
    conv = (24, 3, 3, 3)  # 24 output channels
    n = int(np.prod(conv))
    sc = channel_scales(300, 24)
    sc[5] = 0.0  # a channel pruned away
    idx = randint(301, n, k)
    for sdt in ("float32", "float16"):
        out.append(scaled(f"conv.dense.{sdt}", cb, idx, conv, F32, sc, 0, "codebook-dense", sdt, lane_size=LANE))
    sp_cb = np.append(cb, 0.0)  # index k is the codebook's 0.0: the sparse zero
    sp_idx = np.where(uniform(302, n) < 0.3, idx, k)
    for sdt in ("float32", "float16"):
        out.append(scaled(f"conv.sparse.{sdt}", sp_cb, sp_idx, conv, F32, sc, 0, "codebook-sparse", sdt,
                          lane_size=LANE))
    mat = (40, 64)  # scales along the last axis (input features), float16 scales
    midx = np.where(uniform(303, 2560) < 0.5, randint(304, 2560, k), k)
    out.append(scaled("mat.sparse.axis1", sp_cb, midx, mat, F32, channel_scales(305, 64), 1, "codebook-sparse",
                      "float16", gap_bits=2))
    out.append(scaled("mat.dense.axis1", cb, randint(306, 2560, k), mat, F32, channel_scales(307, 64), 1,
                      "codebook-dense"))
    for dt, tag in ((F16, "f16"), (BF16, "bf16"), (F64, "f64")):  # product in float32, then converted
        out.append(scaled(f"{tag}.dense", cb, randint(310, 600, k), (12, 50), dt, channel_scales(311, 12), 0,
                          "codebook-dense", codebook_dtype="float32"))
        out.append(scaled(f"{tag}.sparse", sp_cb, np.where(uniform(312, 600) < 0.2, randint(313, 600, k), k),
                          (12, 50), dt, channel_scales(314, 50), 1, "codebook-sparse", codebook_dtype="float32"))
    return {"tensors": out}


@vector("per_channel_edges", "per-channel scales at the edges of the arithmetic: codebook entries +0.0 and -0.0 "
        "under negative scales (+0.0), products that underflow to zero (+0.0) or to subnormals, that overflow to "
        "infinity, a float16 tensor whose products round to float16 zero (+0.0); 0 elements (no scales); one channel "
        "of one element; a middle axis of a 3-D tensor")
def _per_channel_edges():
    out = []
    cb = np.array([0.0, -0.0, 1.0, -1.0, 3e38, 1e-38, -2.5], F32)
    sc = np.array([-1.0, 2.0, -1e-10, 1e-8, 0.5, -3.0], F32)
    idx = np.tile(np.arange(7), 6)
    for e in ("codebook-dense", "codebook-sparse"):
        out.append(scaled(f"edges.{e}", cb, idx, (6, 7), F32, sc, 0, e))
    out.append(scaled("f16.underflow", np.array([1e-4, -1e-4, 0.5], F32), np.tile([0, 1, 2], 4), (4, 3), F16,
                      np.array([1e-3, -1e-3, 1.0, -1.0], F32), 0, "codebook-dense", codebook_dtype="float32"))
    out.append(scaled("empty", cb, np.zeros(0, int), (0, 4), F32, np.zeros(0, F32), 0, "codebook-sparse"))
    out.append(scaled("empty_cols", cb, np.zeros(0, int), (3, 0), F32, np.array([1.0, 2.0, 3.0], F32), 0,
                      "codebook-dense"))
    out.append(scaled("one", np.array([0.75], F32), np.zeros(1, int), (1,), F32, np.array([-4.0], F32), 0,
                      "codebook-dense"))
    out.append(scaled("middle_axis", levels(5), randint(320, 60, 5), (3, 4, 5), F32, channel_scales(321, 4), 1,
                      "codebook-sparse", "float16", lane_size=LANE))
    return {"tensors": out}
def table(seed: int, rows: int, n: int) -> np.ndarray:
    """An analytic-table-like float32 tensor (a windowed DFT basis's structure, exactly): element (k, i) is
    win[i] * c[(k * i) % n], both float32, so few values repeat in long, shifted runs (IEEE products:
    the same bits everywhere, unlike a library's cos)."""
    win = uniform(seed, n).astype(F32)
    c = (uniform(seed + 1, n) * 2 - 1).astype(F32)
    k, i = np.meshgrid(np.arange(rows), np.arange(n), indexing="ij")
    return win[i] * c[(k * i) % n]


def lz(name, array):
    return dcformat.encode_lzma(name, array), np.asarray(array)


@vector("lzma", "lzma (1.3): the raw bytes as one LZMA2 stream, for an analytic table chosen by dcformat.encode "
        "itself (about 4x smaller than float-planes), and forced for every dtype family: float16 with every "
        "special bit pattern (NaN payloads, -0.0, infinities, subnormals), bfloat16, float64, int64, uint8, bool "
        "and a scalar")
def _lzma():
    f16 = weights(270, 300, F16)
    sp = _specials(F16)
    f16[:sp.size] = sp
    basis = table(271, 48, 96)
    t = dcformat.encode("basis", basis)
    assert t.encoding == "lzma", t.encoding
    return {"tensors": [
        (t, basis),
        lz("f16.special", f16),
        lz("bf16", weights(272, 500, BF16).reshape(5, 100)),
        lz("f64", weights(273, 64, F64)),
        lz("i64", np.repeat(randint(274, 40, 7), 9) - 3),
        lz("u8", np.tile(np.arange(0, 250, 7, dtype=np.uint8), 20)),
        lz("bool", (randint(275, 333, 3) == 0).reshape(3, 111)),
        lz("scalar", np.array(-0.0, F32)),
    ]}


@vector("dictionary", "the preset dictionary (1.4, FORMAT.md 1 and Appendix A): a small model in the form "
        "dcconvert writes -- a graph (Gemm, Relu) whose initializers refer to records, dcconvert-style metadata, "
        "codebook-sparse and codebook-dense weights, raw biases -- with its header, metadata and graph deflated "
        "against DEFLATE_DICT")
def _dictionary():
    w1 = quantized(280, (16, 12), 6, 0.3)
    w2 = quantized(281, (12, 4), 4, 0.9)
    b1, b2 = weights(282, 12, F32), weights(283, 4, F32)
    model = _tiny_onnx([("fc1.weight", w1), ("fc1.bias", b1)])
    meta = {"producer": "dcconvert (dcz 0.1.0)", "settings": {"sparsity": 0.0, "bits": 3, "ecvq": 0.5},
            "fidelity": {"schema": 1, "measured": True, "metric": "rel_l2", "max_rel_l2": 0.01}}
    return {"tensors": [enc("fc1.weight", w1, encoding="codebook-sparse"), enc("fc1.bias", b1),
                        enc("fc2.weight", w2, encoding="codebook-dense"), enc("fc2.bias", b2)],
            "graph": model, "metadata": meta, "dictionary": 4}


@vector("dictionary_no_tensors", "the preset dictionary (1.4) on a header that lists no sections: the smallest 1.4 file")
def _dictionary_no_tensors():
    return {"tensors": [], "dictionary": 4}


@vector("dictionary15", "the preset dictionary of 1.5 (DEFLATE_DICT_15, FORMAT.md 1 and Appendix B): a small model in "
        "the form dcconvert writes since 1.5 -- a compacted graph (values a, b, ..., node names cleared) whose "
        "initializers refer to records, schema-2 metadata with its defaults left out, float16 codebooks -- with its "
        "header, metadata and graph deflated against DEFLATE_DICT_15")
def _dictionary15():
    w1 = quantized(290, (16, 12), 6, 0.3, F16).astype(F32)
    w2 = quantized(291, (12, 4), 4, 0.9, F16).astype(F32)
    b1, b2 = weights(292, 12, F32), weights(293, 4, F32)
    model = _tiny_onnx([("fc1.weight", w1), ("fc1.bias", b1)])
    for n in model.graph.node:
        n.ClearField("name")
    model.graph.node[0].output[0] = model.graph.node[1].input[0] = "a"
    model.graph.node[1].output[0] = model.graph.node[2].input[0] = "b"
    meta = {"producer": "dcconvert (dcz 0.1.0)", "settings": {"sparsity": 0.0, "bits": {"default": 3}, "ecvq": 0.5},
            "fidelity": {"schema": 2, "measured": True, "metric": "rel_l2", "max_rel_l2": 0.0123,
                         "worst_output": "Y", "outputs": {"Y": {"shape": [1, 4], "rel_l2": 0.0123}}, "warning": False},
            "source": {"file": "tiny.onnx", "kind": "onnx", "sha256": "0123456789abcdef", "bytes": 1234}}

    def enc16(name, arr, encoding):  # float16 codebook, as dcconvert writes them
        cb = np.unique(arr)
        t = dcformat.encode_codebook(name, cb, np.searchsorted(cb, arr).astype(np.uint8), arr.shape,
                                     encoding=encoding, codebook_dtype="float16")
        return t, arr

    return {"tensors": [enc16("fc1.weight", w1, "codebook-sparse"), enc("fc1.bias", b1),
                        enc16("fc2.weight", w2, "codebook-dense"), enc("fc2.bias", b2)],
            "graph": model, "metadata": meta, "dictionary": True}


@vector("dictionary15_no_tensors", "the preset dictionary of 1.5 on a header that lists no sections: the smallest 1.5 file")
def _dictionary15_no_tensors():
    return {"tensors": [], "dictionary": True}


# ---------------------------------------------------------------- writing
def _expected_bytes(path: Path, arr: np.ndarray) -> None:
    """np.save of the expected array (bfloat16 as uint16 bit patterns)."""
    if arr.dtype == BF16:
        arr = arr.view(np.uint16)
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == np.bool_:
        return bool(np.array_equal(a, b))
    u = UINT_OF_SIZE.get(a.dtype.itemsize, np.uint8)
    return bool(np.array_equal(np.ascontiguousarray(a).view(u), np.ascontiguousarray(b).view(u)))


def _tensor_entry(t, expected_file: str, expected: np.ndarray) -> dict:
    info = t.info
    d = {"name": info.name, "dtype": info.dtype, "shape": list(info.shape), "encoding": info.encoding}
    if info.encoding in ("codebook-dense", "codebook-sparse"):
        d.update(codebook_dtype=info.codebook_dtype, codebook_size=info.codebook_size, lane_size=info.lane_size)
    if info.encoding == "float-planes":
        d.update(lane_size=info.lane_size, planes=list(info.planes))
    if info.encoding == "codebook-sparse":
        d.update(gap_bits=info.gap_bits, entries=info.entries)
    if info.scaled:
        d.update(scale_axis=info.scale_axis, scale_dtype=info.scale_dtype)
    if expected_file is None:  # a large constant array: its value, not a .npy of megabytes
        d["expected_fill"] = expected.flat[0].item()
    else:
        d["expected"] = expected_file
    if info.encoding in ("codebook-dense", "codebook-sparse") and bool(np.isnan(expected.astype(F64)).any()):
        d["codebook_nans"] = True  # see the manifest's description
    if info.dtype == "bfloat16":
        d["expected_storage"] = "uint16 bit patterns"
    return d


def build_vector(out: Path, name: str, covers: str, builder) -> dict:
    spec = builder()
    pairs = spec["tensors"]
    path = out / f"{name}.dcz"
    dcformat.write(path, [t for t, _ in pairs], graph=spec.get("graph"), metadata=spec.get("metadata"),
                   dictionary=spec.get("dictionary", False))
    entries = []
    with dcformat.open(path) as r:  # self-check: the vector decodes to what it should
        r.verify()
        assert list(r) == [t.name for t, _ in pairs], name
        for i, (t, expected) in enumerate(pairs):
            expected = np.asarray(expected)
            got = r[t.name]
            if not _bits_equal(got, expected):
                raise AssertionError(f"{name}: tensor {t.name!r} does not decode to its expected array")
            assert r.info(t.name).encoding == t.encoding
            fill = expected.nbytes > FILL_BYTES and expected.size and _bits_equal(expected, np.full_like(expected, expected.flat[0]))
            fname = None if fill else f"{name}.{i}.npy"
            if fname:
                _expected_bytes(out / fname, expected)
            entries.append(_tensor_entry(t, fname, expected))
        assert r.metadata == (spec.get("metadata") or {})
        has_graph = r.graph_bytes is not None
        version = list(r.version)
    data = path.read_bytes()
    return {
        "name": name,
        "file": path.name,
        "covers": covers,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": spec.get("metadata"),
        "graph": has_graph,
        "format_version": version,
        **({"dictionary": True} if spec.get("dictionary") else {}),
        "tensors": entries,
    }


def generate(out) -> dict:
    """Write every vector and MANIFEST.json into ``out``; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vectors = [build_vector(out, name, covers, fn) for name, covers, fn in VECTORS]
    manifest = {
        "description": "Golden test vectors of the .dcz format; regenerate with tools/gen_vectors.py. "
        "Expected arrays are NAME.<i>.npy (i = tensor position in the file; bfloat16 as uint16 bits), or, for a "
        "large constant array, expected_fill: every element equals that value. "
        "Compare bit patterns. Tensors marked codebook_nans decode NaNs through a codebook of the same dtype: "
        "the reference reader copies their bits, but FORMAT.md 7.2 leaves which NaN a conversion gives "
        "implementation-defined, so another reader may compare those elements as NaNs of the same sign. "
        "Each vector's format_version is the version in its preamble: 1.5 or 1.4 if its header, metadata and graph "
        "are deflated against a preset dictionary (dictionary: true; 1.5: DEFLATE_DICT_15, 1.4: DEFLATE_DICT), else 1.3 if it uses lzma, else 1.2 if it has "
        "per-channel scales, else 1.1 if it uses float-planes, else 1.0.",
        "format_version": list(dcformat.FORMAT_VERSION),
        "vectors": vectors,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=True, sort_keys=False) + "\n"
    (out / MANIFEST).write_text(text, encoding="ascii")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: spec/vectors)")
    args = ap.parse_args(argv)
    manifest = generate(args.out)
    total = sum(v["size"] for v in manifest["vectors"])
    print(f"{len(manifest['vectors'])} vectors, {total} bytes of .dcz, written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

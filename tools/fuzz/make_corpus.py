#!/usr/bin/env python3
"""Write the seed corpus of the dcz fuzzers into a directory.

    python tools/fuzz/make_corpus.py tools/fuzz/corpus/seeds

Seeds: the golden vectors (spec/vectors/*.dcz), the hostile-input samples and every crafted
attack of tests/attacks/make_attacks.py, the regression files of tests/attacks/regressions/,
and a few files made here to reach code the others do not: graphs with subgraphs, Constant
nodes, sparse tensors, functions and compactable codebook weights (for to_onnx / compact
mode / ONNX Runtime), small float-planes (1.1) files of every float dtype, small files with per-channel
scales (1.2: dense and sparse, float32/float16 scales, every float dtype, edge arithmetic, a graph whose
compact mode takes Gather + Mul + Add), small lzma (1.3) files, and small .onnx, .safetensors and PyTorch files (dcinspect sniffs
content, so the inspect fuzzer reaches its other readers). Every seed is small (at most
8 KiB, the -max_len the README uses). Deterministic: same code, same files.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tempfile
from pathlib import Path

import common  # noqa: F401 - sets up sys.path

import numpy as np

import dcformat
from dcformat.graph import strip_weights

REPO = common.REPO
MAX_SEED = 8192


def _graph_seeds(tmp: Path) -> dict[str, bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = {}
    f32 = TensorProto.FLOAT

    def write(name, model, keep=None, **encode_kw):
        stripped, arrays = strip_weights(model, keep)
        path = tmp / f"{name}.dcz"
        dcformat.write(path, [dcformat.encode(k, v, **encode_kw) for k, v in arrays.items()], graph=stripped,
                       metadata={"producer": "tools/fuzz/make_corpus.py", "seed": name})
        out[name] = path.read_bytes()

    # If with Constant nodes in both branches, a main-graph Constant, an initializer
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    br = []
    for tag, v in (("t", 2.5), ("e", -1.0)):
        c = helper.make_node("Constant", [], [tag], value=numpy_helper.from_array(np.full((4, 2), v, np.float32)))
        br.append(helper.make_graph([c], tag, [], [helper.make_tensor_value_info(tag, f32, [4, 2])]))
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("MatMul", ["x", "W"], ["y0"]),
        helper.make_node("Mul", ["y0", "k"], ["y1"]),
        helper.make_node("If", ["cond"], ["b"], then_branch=br[0], else_branch=br[1]),
        helper.make_node("MatMul", ["y1", "b"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [1, 3]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", f32, [1, 2])], [numpy_helper.from_array(w, "W")])
    write("graph-if-constants", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))

    # compactable weights: a non-uniform codebook (Gather) and a uniform one (DequantizeLinear), sparse and dense
    rng = np.random.default_rng(7)
    cb = np.array([0.0, -0.75, 0.125, 0.5, 1.25], np.float32)
    wa = cb[np.where(rng.random((32, 48)) < 0.7, 0, rng.integers(1, 5, (32, 48)))]
    wb = (np.arange(-3, 5, dtype=np.float32) * 0.25)[rng.integers(0, 8, (48, 32))]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("MatMul", ["h", "B"], ["y"])], "g",
        [helper.make_tensor_value_info("x", f32, [1, 32])], [helper.make_tensor_value_info("y", f32, [1, 32])],
        [numpy_helper.from_array(wa, "A"), numpy_helper.from_array(wb, "B")])
    write("graph-compact", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), lane_size=256)

    # dtypes that ONNX Runtime takes inline (bfloat16), bool and int64 initializers, a string tensor kept in the graph
    import ml_dtypes

    bf = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    inits = [numpy_helper.from_array(bf, "bf"), numpy_helper.from_array(np.array([True, False, True]), "mask"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "shape"),
             helper.make_tensor("names", TensorProto.STRING, [2], [b"a", b"b"])]
    g = helper.make_graph(
        [helper.make_node("Cast", ["bf"], ["bf32"], to=f32), helper.make_node("Reshape", ["bf32", "shape"], ["y"])],
        "g", [], [helper.make_tensor_value_info("y", f32, [2, 3])], inits)
    write("graph-dtypes", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))

    # a sparse initializer and a Constant with a sparse_value (their tensors hold their own data)
    vals = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sv")
    idx = numpy_helper.from_array(np.array([1, 3], np.int64), "si")
    sp = helper.make_sparse_tensor(vals, idx, [4])
    sp2 = helper.make_sparse_tensor(numpy_helper.from_array(np.array([5.0], np.float32), "cv"),
                                    numpy_helper.from_array(np.array([0], np.int64), "ci"), [4])
    g = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], sparse_value=sp2), helper.make_node("Add", ["sv", "c"], ["s"]),
         helper.make_node("Add", ["s", "W"], ["y"])],
        "g", [], [helper.make_tensor_value_info("y", f32, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "W")], sparse_initializer=[sp])
    write("graph-sparse", helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))

    # a model-local function with a Constant inside
    fn = helper.make_function(
        "local", "AddK", ["a"], ["b"],
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full(4, 3.0, np.float32))),
         helper.make_node("Add", ["a", "k"], ["b"])], [helper.make_opsetid("", 17)])
    g = helper.make_graph([helper.make_node("AddK", ["W"], ["y"], domain="local")], "g", [],
                          [helper.make_tensor_value_info("y", f32, [4])],
                          [numpy_helper.from_array(np.arange(4, dtype=np.float32), "W")])
    write("graph-function", helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=[fn]))

    # plain .onnx, for dcinspect's ONNX reader
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "g", [helper.make_tensor_value_info("x", f32, [4])],
        [helper.make_tensor_value_info("y", f32, [4])], [numpy_helper.from_array(np.arange(4, dtype=np.float32), "W")]),
        opset_imports=[helper.make_opsetid("", 17)])
    out["model.onnx"] = model.SerializeToString()
    return out


def _float_planes_seeds(tmp: Path) -> dict[str, bytes]:
    """Small float-planes (1.1) files: every float dtype, stored and Huffman planes, several lanes,
    NaN payloads, signed zeros, infinities and subnormals, an empty and a constant tensor, and a graph
    whose weights are float-planes records (for the ONNX rebuild fuzzer)."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(18)
    out = {}
    specials = {np.float32: [0x80000000, 0x7FC12345, 0xFF800001, 0x7F800000, 0x00000001, 0x807FFFFF],
                np.float16: [0x8000, 0x7E01, 0xFC01, 0x7C00, 0x0001, 0x83FF],
                ml_dtypes.bfloat16: [0x8000, 0x7FC1, 0xFF81, 0x7F80, 0x0001, 0x807F],
                np.float64: [1 << 63, 0x7FF8000000012345, 0xFFF0000000000001, 0x7FF0000000000000, 1]}
    for dt, pats in specials.items():
        w = np.dtype(dt).itemsize
        a = (rng.standard_normal(600 if w < 8 else 300) * 0.05).astype(dt)
        u = a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[w])
        u[rng.integers(0, a.size, 30)] = np.array(pats, np.uint64).astype(u.dtype)[rng.integers(0, len(pats), 30)]
        tensors = [dcformat.encode_float_planes("all", a, planes=["huffman"] * w, lane_size=256),
                   dcformat.encode_float_planes("auto", a[: a.size // 2], lane_size=256)]
        if w == 4:
            tensors += [dcformat.encode_float_planes("empty", np.zeros((0, 3), dt), planes=["huffman"] * 4),
                        dcformat.encode_float_planes("const", np.full(300, 0.5, dt), planes=["huffman"] * 4, lane_size=256)]
        path = tmp / "fp.dcz"
        dcformat.write(path, tensors)
        out[f"planes-{np.dtype(dt).name}"] = path.read_bytes()
    # y = x @ W + B with W and B float-planes records
    wt = (rng.standard_normal((8, 4)) * 0.1).astype(np.float32)
    bt = (rng.standard_normal(4) * 0.1).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
                              "fp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(wt, "W"), numpy_helper.from_array(bt, "B")])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    stripped, arrays = strip_weights(model)
    path = tmp / "fpg.dcz"
    dcformat.write(path, [dcformat.encode_float_planes(k, v, planes=["stored", "huffman", "stored", "huffman"],
                                                       lane_size=256) for k, v in arrays.items()], graph=stripped)
    out["planes-graph"] = path.read_bytes()
    return out


def _scales_seeds(tmp: Path) -> dict[str, bytes]:
    """Small files with per-channel scales (1.2): dense and sparse, float32 and float16 scales, each float
    dtype, scales along the first, middle and last axis, zero/negative/subnormal/huge scales, several lanes,
    and a graph whose scaled weights compact mode rebuilds with Gather, Mul and Add (for the ONNX rebuild
    fuzzer)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(19)
    out = {}
    cb = np.array([0.0, -0.0, -1.0, 0.5, 2.0, 1e-30, 3e38], np.float32)
    for dtype in ("float32", "float16", "bfloat16", "float64"):
        tensors = []
        for enc, shape, axis, sdt in (("codebook-dense", (12, 30), 0, "float32"), ("codebook-sparse", (12, 30), 1, "float16"),
                                      ("codebook-sparse", (4, 5, 30), 1, "float32"), ("codebook-dense", (3, 2, 50), 2, "float16")):
            n = int(np.prod(shape))
            idx = np.where(rng.random(n) < 0.5, 0, rng.integers(2, 5, n)) if enc == "codebook-sparse" else rng.integers(0, 7, n)
            sc = (rng.standard_normal(shape[axis]) * 2).astype(np.float32)
            sc[0], sc[-1] = 0.0, -1e-39 if sdt == "float32" else -6e-8
            tensors.append(dcformat.encode_codebook(f"{enc}.{len(shape)}d.{axis}", cb, idx.reshape(shape), dtype=dtype, encoding=enc,
                                                    scales=sc, scale_axis=axis, scale_dtype=sdt, lane_size=256,
                                                    codebook_dtype="float32"))
        path = tmp / "sc.dcz"
        dcformat.write(path, tensors)
        out[f"scales-{dtype}"] = path.read_bytes()
    # y = x @ W + B with W a scaled codebook record (compact: Cast, Gather, Mul, Add)
    w_idx = rng.integers(0, 4, (32, 40))  # past runtime.COMPACT_MIN_ELEMENTS: compacted
    w_cb = np.array([0.0, -0.5, 0.25, 1.0], np.float32)
    w_sc = np.linspace(-2, 2, 40).astype(np.float32)
    wt = (w_cb[w_idx] * w_sc).astype(np.float32)
    bt = (rng.standard_normal(40) * 0.1).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
                              "sc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])],
                              [numpy_helper.from_array(wt, "W"), numpy_helper.from_array(bt, "B")])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    stripped, arrays = strip_weights(model)
    path = tmp / "scg.dcz"
    dcformat.write(path, [dcformat.encode_codebook("W", w_cb, w_idx, scales=w_sc, scale_axis=1, encoding="codebook-sparse",
                                                   lane_size=256),
                          dcformat.encode("B", arrays["B"])], graph=stripped)
    out["scales-graph"] = path.read_bytes()
    return out


def _lzma_seeds(tmp: Path) -> dict[str, bytes]:
    """Small lzma (1.3) files: float32 with repeating values (the encoder's own choice), float16 with NaN
    payloads and signed zeros, int64, bool and a scalar, and a graph whose weight is an lzma record."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(13)
    table = np.tile(np.linspace(-1, 1, 40, dtype=np.float32), 20)
    f16 = (rng.standard_normal(300) * 0.05).astype(np.float16)
    f16.view(np.uint16)[::37] = [0x8000, 0x7E01, 0xFC01, 0x7C00, 0x0001, 0x83FF, 0x8000, 0x7E01, 0xFC01][: f16[::37].size]
    tensors = [dcformat.encode("table", table), dcformat.encode_lzma("f16", f16),
               dcformat.encode_lzma("i64", np.repeat(np.arange(-5, 5, dtype=np.int64), 30)),
               dcformat.encode_lzma("bool", np.arange(200) % 3 == 0), dcformat.encode_lzma("scalar", np.float32(-0.0))]
    assert tensors[0].encoding == "lzma"
    path = tmp / "lz.dcz"
    dcformat.write(path, tensors)
    out = {"lzma": path.read_bytes()}
    wt = np.tile(np.array([0.5, -0.25, 0.125, 1.0], np.float32), (8, 1))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "lz",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(wt, "W")])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    stripped, arrays = strip_weights(model)
    path = tmp / "lzg.dcz"
    dcformat.write(path, [dcformat.encode_lzma(k, v) for k, v in arrays.items()], graph=stripped)
    out["lzma-graph"] = path.read_bytes()
    return out


def _other_formats() -> dict[str, bytes]:
    out = {}
    from safetensors.numpy import save

    out["tiny.safetensors"] = save({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.int64)},
                                   metadata={"k": "v"})
    try:
        import torch

        buf = io.BytesIO()
        torch.save({"w": torch.arange(4, dtype=torch.float32)}, buf)
        out["tiny.pt"] = buf.getvalue()
    except ImportError:
        pass
    return out


def seeds(attacks: bool = True) -> dict[str, bytes]:
    """name -> bytes of every seed (``attacks=False``: without the ~300 crafted attack files)."""
    out = {}
    for p in sorted((REPO / "spec" / "vectors").glob("*.dcz")):
        out[f"vector-{p.stem}"] = p.read_bytes()
    sys.path.insert(0, str(REPO / "tests" / "attacks"))
    import make_attacks as ma

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "samples").mkdir()
        samples = ma.write_samples(tmp / "samples")
        for kind, p in samples.items():
            out[f"sample-{kind}"] = p.read_bytes()
        for a in ma.ATTACKS if attacks else ():
            try:
                out[f"attack-{a.name}"] = ma.make(a, samples)
            except Exception as e:  # noqa: BLE001 - the attack surgery lags behind a container change
                print(f"skipped attack {a.name}: {type(e).__name__}: {e}", file=sys.stderr)
        out.update({f"extra-{k}": v for k, v in _graph_seeds(tmp).items()})
        out.update({f"extra-{k}": v for k, v in _float_planes_seeds(tmp).items()})
        out.update({f"extra-{k}": v for k, v in _scales_seeds(tmp).items()})
        out.update({f"extra-{k}": v for k, v in _lzma_seeds(tmp).items()})
    out.update({f"extra-{k}": v for k, v in _other_formats().items()})
    reg = REPO / "tests" / "attacks" / "regressions"
    if reg.is_dir():
        for p in sorted(reg.iterdir()):
            if p.is_file() and p.suffix != ".md":
                out[f"regression-{p.name}"] = p.read_bytes()
    return {k: v for k, v in out.items() if len(v) <= MAX_SEED}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    dst = Path(argv[0])
    dst.mkdir(parents=True, exist_ok=True)
    got = seeds()
    for name, data in got.items():
        (dst / f"{name}-{hashlib.sha1(data).hexdigest()[:8]}").write_bytes(data)
    print(f"wrote {len(got)} seeds to {dst}")


if __name__ == "__main__":
    main()

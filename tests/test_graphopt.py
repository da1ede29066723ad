"""dcconvert's graph optimisation at conversion (converters/graphopt.py, --graph-opt): ONNX Runtime's basic
level applied once, kept only when it is plain ONNX, no larger and gives the same outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from converters import graphopt
from converters.cli import main
from test_convert import build_net

CPU = ["CPUExecutionProvider"]


def convert(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args] + ["--json", "-q"])
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    return json.loads(out)


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def outputs(model_or_path, x) -> np.ndarray:
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, providers=CPU).run(None, {"x": x})[0]


@pytest.fixture
def net(tmp_path):
    p = tmp_path / "net.onnx"
    build_net(p)
    return p


X = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)


def test_default_folds_batchnorm_and_keeps_names(net, tmp_path, capsys):
    out = tmp_path / "net.dcz"
    rep = convert(capsys, net, "-o", out, "--sparsity", "0", "--bits", "8")
    info = rep["source"]["graph_opt"]
    assert info["removed"]["BatchNormalization"] == 1 and info["nodes"][1] < info["nodes"][0]
    assert any(n.startswith("graph: ONNX Runtime's basic optimisations applied") for n in rep["source"]["notes"])
    model = dcformat.to_onnx(out)
    assert "BatchNormalization" not in ops(model)
    names = set(dcformat.load_weights(out))
    assert "conv2.weight" in names  # ONNX Runtime's ConvBnFusion_W_conv2.weight, its name taken back
    assert not any(n.startswith("ConvBnFusion_W_") for n in names)
    assert not {"bn.scale", "bn.mean", "bn.var"} & names  # folded into the Conv
    ref = outputs(onnx.load(net), X)
    got = outputs(model, X)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02  # 8-bit sharing; the folding itself adds ~0
    assert dcformat.open(out).metadata["settings"].get("graph_opt") is None  # the default is not stored


def test_none_keeps_the_graph(net, tmp_path, capsys):
    out = tmp_path / "net.dcz"
    rep = convert(capsys, net, "-o", out, "--sparsity", "0", "--bits", "8", "--graph-opt", "none")
    assert "graph_opt" not in rep["source"]
    assert ops(dcformat.to_onnx(out)) == ops(onnx.load(net))
    assert dcformat.open(out).metadata["settings"]["graph_opt"] == "none"


def test_lossless_keeps_the_graph_and_weights_unless_asked(net, tmp_path, capsys):
    out = tmp_path / "ll.dcz"
    convert(capsys, net, "-o", out, "--lossless")
    assert ops(dcformat.to_onnx(out)) == ops(onnx.load(net))
    src = {i.name: numpy_helper.to_array(i) for i in onnx.load(net).graph.initializer}
    got = dcformat.load_weights(out)
    assert set(got) == set(src) and all(np.array_equal(got[k], src[k]) for k in src)
    opt = tmp_path / "ll-basic.dcz"
    rep = convert(capsys, net, "-o", opt, "--lossless", "--graph-opt", "basic")
    assert rep["source"]["graph_opt"]["removed"]["BatchNormalization"] == 1
    # ONNX Runtime folds the same way when it loads the original: the outputs are its outputs
    np.testing.assert_allclose(outputs(dcformat.to_onnx(opt), X), outputs(onnx.load(net), X), rtol=1e-5, atol=1e-6)


def test_same_bytes_twice(net, tmp_path, capsys):
    a, b = tmp_path / "a.dcz", tmp_path / "b.dcz"
    convert(capsys, net, "-o", a, "--sparsity", "0.5", "--bits", "5")
    convert(capsys, net, "-o", b, "--sparsity", "0.5", "--bits", "5")
    assert a.read_bytes() == b.read_bytes()


def tile_model(path):
    """A small constant expanded to 64k floats and added to the input: folding would store the big tensor."""
    w = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32([[0.5]]), "")),
        helper.make_node("Constant", [], ["reps"], value=numpy_helper.from_array(np.int64([256, 256]), "")),
        helper.make_node("Tile", ["c", "reps"], ["big"]),
        helper.make_node("Add", ["x", "big"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
    ]
    g = helper.make_graph(nodes, "tile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_growth_retries_without_constant_folding(tmp_path, capsys):
    """Folding the Tile would store 64k floats for one: the rewrite is redone without ONNX Runtime's constant
    folding, so the Tile stays (computed at run time) and the file keeps the small constant."""
    p = tmp_path / "tile.onnx"
    tile_model(p)
    rep = convert(capsys, p, "-o", tmp_path / "tile.dcz", "--sparsity", "0", "--bits", "8")
    opt = rep["source"]["graph_opt"]
    assert opt["disabled"] == ["ConstantFolding"] and opt["weight_bytes"][1] <= opt["weight_bytes"][0] + 4096
    assert any("but constant folding" in n for n in rep["source"]["notes"]), rep["source"]["notes"]
    assert "Tile" in ops(dcformat.to_onnx(tmp_path / "tile.dcz"))
    assert (tmp_path / "tile.dcz").stat().st_size < 64 * 1024  # not the folded 256 x 256 tensor


def test_growth_without_folding_too_keeps_the_original(tmp_path, monkeypatch):
    """When the rewrite without constant folding grows the weights as well, the original graph stays."""
    from converters.sources import split_weights

    tile_model(tmp_path / "tile.onnx")
    graph, weights = split_weights(onnx.load(str(tmp_path / "tile.onnx")))
    monkeypatch.setattr(graphopt, "NO_FOLDING", ())  # the retry folds again: it grows again
    got = graphopt.optimize(graph, weights)
    assert isinstance(got, str) and got.startswith("constant folding would store"), got


def test_restore_names_only_free_original_names():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "ConvBnFusion_W_conv.weight")
    b = numpy_helper.from_array(np.ones(2, np.float32), "ConvBnFusion_BN_B_bn.B")
    taken = numpy_helper.from_array(np.ones(2, np.float32), "ConvAddFusion_Add_B_other")
    other = numpy_helper.from_array(np.ones(2, np.float32), "other")
    g = helper.make_graph([helper.make_node("Conv", ["x", w.name, b.name], ["y"]),
                           helper.make_node("Add", ["y", taken.name], ["z"]),
                           helper.make_node("Add", ["z", "other"], ["out"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w, b, taken, other])
    m = helper.make_model(g)
    done = graphopt.restore_names(m, {"conv.weight", "bn.B", "other"})
    assert done == {"ConvBnFusion_W_conv.weight": "conv.weight", "ConvBnFusion_BN_B_bn.B": "bn.B"}
    assert list(m.graph.node[0].input) == ["x", "conv.weight", "bn.B"]
    assert m.graph.node[1].input[1] == "ConvAddFusion_Add_B_other"  # "other" is still in use


def test_agrees():
    a = {"y": [np.ones((2, 3), np.float32)], "i": [np.arange(3)]}
    assert graphopt.agrees(a, {"y": [np.ones((2, 3), np.float32)], "i": [np.arange(3)]}) == (True, 0.0)
    assert not graphopt.agrees(a, {"y": [np.ones((2, 3), np.float32) * 1.01], "i": [np.arange(3)]})[0]
    assert not graphopt.agrees(a, {"y": [np.ones((2, 3), np.float32)], "i": [np.arange(3) + 1]})[0]
    assert not graphopt.agrees(a, {"y": [np.ones((2, 3), np.float32)]})[0]


def test_wanted():
    assert graphopt.wanted("auto", False) and not graphopt.wanted("auto", True)
    assert graphopt.wanted("basic", True) and not graphopt.wanted("none", False)

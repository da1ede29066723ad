"""Roles by what a tensor does (converters/roles.py), the same for every input format."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters import roles as rl
from converters import sources
from dcformat.graph import strip_weights
from test_convert import ok

H, I = 16, 8


def _graph(nodes, inits, inputs, outputs, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _roles(model):
    graph, arrays = strip_weights(model)
    return rl.graph_roles(graph, arrays)


def test_lstm_op_and_its_gemm_decomposition_get_the_same_roles():
    rng = np.random.default_rng(0)
    w, r = rng.standard_normal((1, 4 * H, I)).astype(np.float32), rng.standard_normal((1, 4 * H, H)).astype(np.float32)
    b = np.zeros((1, 8 * H), np.float32)
    lstm = _graph([helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=H)], {"W": w, "R": r, "B": b},
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, I])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    # one step of the same cell, decomposed: gates = x W^T + h R^T + b (Gemm), then the nonlinearities
    dec = _graph([helper.make_node("Gemm", ["x", "W", "B"], ["gx"], transB=1),
                  helper.make_node("Gemm", ["h", "R"], ["gh"], transB=1),
                  helper.make_node("Add", ["gx", "gh"], ["y"])],
                 {"W": w[0], "R": r[0], "B": b[0, :4 * H]},
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, I]), helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, H])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    ra, axa = _roles(lstm)
    rb, axb = _roles(dec)
    assert ra == rb == {"W": "fc", "R": "fc", "B": "bias"}
    assert axa["W"] == 1 and axb["W"] == 0  # the output neurons: the 4H gate rows, wherever the layout puts them


def test_weights_reached_through_layout_operators():
    """silero-vad slices its LSTM weights and concatenates them before the cell; PyTorch exports
    Linear as Transpose + MatMul: the consumer still decides, and the transposes set the axis."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4 * H, I)).astype(np.float32)
    lin = rng.standard_normal((10, H)).astype(np.float32)
    starts = {f"s{k}": np.array([k * H], np.int64) for k in range(4)}
    ends = {f"e{k}": np.array([(k + 1) * H], np.int64) for k in range(4)}
    nodes = [helper.make_node("Slice", ["W", f"s{k}", f"e{k}"], [f"w{k}"]) for k in range(4)]
    nodes += [helper.make_node("Concat", [f"w{k}" for k in (0, 2, 1, 3)], ["Wr"], axis=0),
              helper.make_node("Unsqueeze", ["Wr", "zero"], ["W3"]),
              helper.make_node("LSTM", ["x", "W3", "R3"], ["y", "hT"], hidden_size=H),
              helper.make_node("Transpose", ["L"], ["Lt"], perm=[1, 0]),
              helper.make_node("MatMul", ["hT2", "Lt"], ["z"])]
    inits = {"W": w, "R3": rng.standard_normal((1, 4 * H, H)).astype(np.float32), "L": lin,
             "zero": np.array([0], np.int64), **starts, **ends}
    m = _graph(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, I]),
                              helper.make_tensor_value_info("hT2", TensorProto.FLOAT, [1, H])],
               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    roles, axes = _roles(m)
    assert roles["W"] == "fc" and roles["R3"] == "fc" and roles["L"] == "fc" and axes["L"] == 0
    assert roles["s0"] == "other" and roles["zero"] == "other"


def test_norms_biases_and_subgraph_scopes():
    rng = np.random.default_rng(2)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    vec = lambda: rng.standard_normal(4).astype(np.float32)  # noqa: E731
    shadow = rng.standard_normal((4, 4)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("MatMul", ["f", "W"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)], [numpy_helper.from_array(shadow, "W")])
    else_g = helper.make_graph([helper.make_node("Gather", ["W", "idx"], ["t2"])], "else", [],
                               [helper.make_tensor_value_info("t2", TensorProto.FLOAT, None)],
                               [numpy_helper.from_array(shadow.copy(), "W")])
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             helper.make_node("ReduceMean", ["n"], ["f"], axes=[2, 3], keepdims=0),
             helper.make_node("If", ["cond"], ["o"], then_branch=then_g, else_branch=else_g)]
    m = _graph(nodes, {"cw": conv_w, "cb": vec(), "g": vec(), "b": vec(), "m": vec(), "v": np.abs(vec()),
                       "idx": np.array([0, 1], np.int64)},
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
               [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)], opset=17)
    roles, _ = _roles(m)
    assert roles["cw"] == "conv" and roles["cb"] == "bias"
    assert {roles[k] for k in "gbmv"} == {"norm"}
    # the two branches' 'W' are two records with their own consumers, each named by its branch
    assert sorted((k, v) for k, v in roles.items() if k.endswith("W")) == [("If_3.else_branch/W", "embedding"),
                                                                          ("If_3.then_branch/W", "fc")]


def _stft_basis(n_fft=64):
    k = np.arange(n_fft // 2 + 1)[:, None]
    t = np.arange(n_fft)[None, :]
    win = np.hanning(n_fft)
    return np.concatenate([np.cos(2 * np.pi * k * t / n_fft) * win, -np.sin(2 * np.pi * k * t / n_fft) * win])[:, None, :].astype(np.float32)


def test_a_fixed_stft_basis_is_not_a_learned_filter(tmp_path):
    rng = np.random.default_rng(3)
    basis = _stft_basis()
    assert rl.is_analytic(basis)
    assert not rl.is_analytic(rng.standard_normal(basis.shape).astype(np.float32))
    learned = rng.standard_normal((8, basis.shape[0], 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "stft"], ["s"], strides=[16]),
             helper.make_node("Conv", ["s", "enc"], ["y"], kernel_shape=[3])]
    m = _graph(nodes, {"stft": basis, "enc": learned}, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 512])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(m, tmp_path / "vad.onnx")
    src = sources.load(tmp_path / "vad.onnx")
    assert src.roles == {"stft": "analytic", "enc": "conv"}
    rep = tmp_path / "r.json"
    ok(tmp_path / "vad.onnx", "-o", tmp_path / "v.dcz", "-q", "--sparsity", "0.5", "--bits", "6", "--report", rep)
    rows = {r["name"]: r for r in json.loads(rep.read_text())["layers"]}
    assert rows["stft"]["action"] == "kept" and rows["stft"]["role"] == "analytic"
    assert "role analytic" in rows["stft"]["reason"]
    assert rows["enc"]["action"] == "pruned+shared"
    # --role overrides what the graph says
    ok(tmp_path / "vad.onnx", "-o", tmp_path / "v.dcz", "-q", "--sparsity", "0.5", "--bits", "6", "--report", rep,
       "--role", "stft=conv")
    rows = {r["name"]: r for r in json.loads(rep.read_text())["layers"]}
    assert rows["stft"]["action"] == "pruned+shared" and rows["stft"]["role"] == "conv"


def test_an_embedding_gets_the_same_role_from_safetensors_and_onnx(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(4)
    table = rng.standard_normal((300, 16)).astype(np.float32)
    proj = rng.standard_normal((16, 8)).astype(np.float32)
    m = _graph([helper.make_node("Gather", ["embeddings.word_embeddings.weight", "ids"], ["e"]),
                helper.make_node("MatMul", ["e", "proj.weight"], ["y"])],
               {"embeddings.word_embeddings.weight": table, "proj.weight": proj},
               [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 7])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(m, tmp_path / "enc.onnx")
    save_file({"embeddings.word_embeddings.weight": table, "proj.weight": proj.T.copy()}, tmp_path / "enc.safetensors")
    a, b = sources.load(tmp_path / "enc.onnx"), sources.load(tmp_path / "enc.safetensors")
    assert a.roles == b.roles == {"embeddings.word_embeddings.weight": "embedding", "proj.weight": "fc"}
    rows = {}
    for ext in ("onnx", "safetensors"):
        rep = tmp_path / f"{ext}.json"
        ok(tmp_path / f"enc.{ext}", "-o", tmp_path / f"{ext}.dcz", "-q", "--bits", "6", "--report", rep)
        rows[ext] = {r["name"]: (r["role"], r["action"], r["bits"]) for r in json.loads(rep.read_text())["layers"]}
    assert rows["onnx"]["embeddings.word_embeddings.weight"] == rows["safetensors"]["embeddings.word_embeddings.weight"] \
        == ("embedding", "pruned+shared", 6)


def test_bad_role_flags(tmp_path):
    from test_convert import build_net, run

    src = tmp_path / "n.onnx"
    build_net(src)
    for flag, says in (("fc1.weight=dense", "'dense' is not one of"), ("nothing*=fc", "matches no tensor"), ("fc1", "PATTERN=ROLE")):
        p = run(src, "-o", tmp_path / "n.dcz", "--role", flag)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and "--role" in p.stderr and says in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "n.dcz").exists()


def test_shape_roles_by_name():
    w = {"bert.embeddings.word_embeddings.weight": np.zeros((30, 4), np.float32), "wte": np.zeros((30, 4), np.float32),
         "encoder.layer.0.LayerNorm.weight": np.zeros(4, np.float32), "ln_f.bias": np.zeros(4, np.float32),
         "fc.bias": np.zeros(4, np.float32), "fc.weight": np.zeros((4, 4), np.float32),
         "conv.weight": np.zeros((4, 3, 3, 3), np.float32), "steps": np.zeros((), np.int64)}
    roles, _ = rl.shape_roles(w)
    assert roles == {"bert.embeddings.word_embeddings.weight": "embedding", "wte": "embedding",
                     "encoder.layer.0.LayerNorm.weight": "norm", "ln_f.bias": "norm", "fc.bias": "bias", "fc.weight": "fc",
                     "conv.weight": "conv", "steps": "other"}

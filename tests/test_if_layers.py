"""Error compensation for layers whose weights an ``If`` branch holds (Silero VAD's layout: one
branch per sample rate, each with its own Conv / MatMul / LSTM weights): the layers of the branch
the calibration inputs take get an H from that branch; those of the other branch, which never runs,
keep plain rounding with the reason in the report (it used to end the conversion with
"ONNX Runtime failed while collecting the layers' inputs: list index out of range")."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters import hessian
from dcformat import inputs as inp
from dcformat.graph import strip_weights
from test_convert import ok

C, L, K, OUT, M, HID = 8, 16, 3, 16, 16, 8  # conv in/out channels, length, kernel; matmul out; lstm hidden


def _branch(sfx: str, rng) -> tuple[onnx.GraphProto, dict]:
    """Conv (weight ``conv``) -> Transpose -> MatMul (``fc``) -> LSTM (``W``, ``R``), weights held by the branch."""
    w = {f"conv{sfx}": rng.standard_normal((OUT, C, K)) * 0.3, f"fc{sfx}": rng.standard_normal((OUT, M)) * 0.3,
         f"W{sfx}": rng.standard_normal((1, 4 * HID, M)) * 0.3, f"R{sfx}": rng.standard_normal((1, 4 * HID, HID)) * 0.3}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    nodes = [helper.make_node("Conv", ["x", f"conv{sfx}"], [f"c{sfx}"], pads=[1, 1]),
             helper.make_node("Relu", [f"c{sfx}"], [f"r{sfx}"]),
             helper.make_node("Transpose", [f"r{sfx}"], [f"t{sfx}"], perm=[0, 2, 1]),  # N x L x OUT
             helper.make_node("MatMul", [f"t{sfx}", f"fc{sfx}"], [f"m{sfx}"]),  # seq N, batch L, features M
             helper.make_node("LSTM", [f"m{sfx}", f"W{sfx}", f"R{sfx}"], [f"y{sfx}"], hidden_size=HID)]
    g = helper.make_graph(nodes, sfx, [], [helper.make_tensor_value_info(f"y{sfx}", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in w.items()])
    return g, w


def _model(rng) -> onnx.ModelProto:
    then_g, _ = _branch("_t", rng)
    else_g, _ = _branch("_e", rng)
    g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, L]),
                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _calib(rng, n=12) -> dict:
    return {"x": rng.standard_normal((n, 2, C, L)).astype(np.float32), "cond": np.full(n, True)}


def test_branch_layers_get_an_h_from_the_branch_that_ran():
    """hessian.for_model finds the Conv and MatMul inside both branches; the taken branch's get the H
    of their inputs there (against im2col / the activation computed here in numpy); the other
    branch's layers are left without, as never run."""
    rng = np.random.default_rng(0)
    model = _model(rng)
    calib = _calib(rng)
    graph, weights = strip_weights(model)
    names = {n.split("/")[-1]: n for n in weights}  # short name -> record (the branch's prefix, if any, dropped)
    roles = {n: "fc" for n in weights}
    why: dict = {}
    got, without = hessian.for_model(graph, weights, calib, inp.declared_inputs(graph), roles, 1, reasons=why)
    assert set(got) == {names[k] for k in ("conv_t", "fc_t", "W_t", "R_t")}, (got, why)
    assert set(without) == {names[k] for k in ("conv_e", "fc_e", "W_e", "R_e")}
    assert all(why[n] == hessian.NOT_REACHED for n in without)
    conv, fc = got[names["conv_t"]], got[names["fc_t"]]
    assert (conv.op, fc.op) == ("Conv", "MatMul") and conv.path and fc.path
    w = weights[names["conv_t"]].astype(np.float64)
    hc, hm = np.zeros((C * K, C * K)), np.zeros((OUT, OUT))
    for x in calib["x"].astype(np.float64):
        xp = np.pad(x, [(0, 0), (0, 0), (1, 1)])
        cols = np.stack([xp[:, :, j:j + K].reshape(2, -1) for j in range(L)], axis=1).reshape(-1, C * K)
        hc += cols.T @ cols
        act = np.maximum(cols @ w.reshape(OUT, -1).T, 0)  # rows: (sample, position), as Transpose leaves them
        flat = act.reshape(-1, OUT)
        hm += flat.T @ flat
    np.testing.assert_allclose(conv.h[0], hc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fc.h[0], hm, rtol=1e-4, atol=1e-4)


def test_convert_with_an_untaken_branch_compensates_the_taken_one(tmp_path):
    """dcconvert --sparsity 0.5 --bits 6 (Silero VAD's bench flags) on a model whose If branches hold
    their own weights, calibrated on inputs that take one branch: it converts (it failed with
    "list index out of range"), the taken branch's layers are compensated, the other branch's
    are named in the report's note as never run, and the fidelity is measured."""
    rng = np.random.default_rng(1)
    onnx.save(_model(rng), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **_calib(rng))
    rep = tmp_path / "r.json"
    ok(tmp_path / "m.onnx", "-o", tmp_path / "m.dcz", "-q", "--calibration", tmp_path / "calib.npz",
       "--sparsity", "0.5", "--bits", "6", "--min-size", "1", "--report", rep)
    report = json.loads(rep.read_text())
    rows = {x["name"].split("/")[-1]: x for x in report["layers"]}
    for k in ("conv", "fc", "W", "R"):
        assert rows[f"{k}_t"]["action"] == "pruned+shared" and rows[f"{k}_t"]["compensated"] is True, rows[f"{k}_t"]
        assert rows[f"{k}_e"]["action"] == "pruned+shared" and rows[f"{k}_e"]["compensated"] is False, rows[f"{k}_e"]
    note = next(n for n in report["source"]["notes"] if n.startswith("error compensation"))
    assert note.startswith("error compensation: 4 of 8 layers") and "4 never run on the calibration inputs" in note
    assert report["fidelity"]["measured"] is True


def test_only_onnx_runtime_failures_are_reported_as_its():
    """The CLI's wrapper names ONNX Runtime only for ONNX Runtime's own failures (its exception classes,
    or its Python wrapper's checks); an exception of ours, as the IndexError of this bug was, is an
    internal error of the step, not "ONNX Runtime failed while collecting the layers' inputs"."""
    import onnxruntime as ort
    import pytest

    from converters.cli import _ort_call
    from converters.errors import ConvertError

    what = "ONNX Runtime failed while collecting the layers' inputs"
    with pytest.raises(ConvertError) as e:
        _ort_call(what, lambda: [][0], _step="while collecting the layers' inputs")
    assert str(e.value).startswith("internal error while collecting the layers' inputs (IndexError: list index out "
                                   "of range; not an ONNX Runtime failure"), e.value
    sess = ort.InferenceSession(_model(np.random.default_rng(2)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = np.zeros((2, C, L), np.float32)
    for feeds in ({"x": x.astype(np.int64), "cond": np.array(True)},  # its own class (InvalidArgument)
                  {"x": x}):  # its wrapper's check of the feeds (ValueError)
        with pytest.raises(ConvertError) as e:
            _ort_call(what, sess.run, None, feeds, _step="while collecting the layers' inputs")
        assert str(e.value).startswith(what + ": "), e.value

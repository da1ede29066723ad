"""The error budget's local scan (converters/budget.py): layer output errors from H, one model run
per layer for its gain, the target search, and held-out calibration samples that tighten the plan."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters import budget, calibrate, hessian, obs, perchannel, sources
from converters.cli import main as convert_main
from dcformat import inputs as inp
from clitools import cli as _cli


def _correlated(rng, n, cols):
    a = rng.standard_normal((cols, cols)) * 0.4 + np.eye(cols)
    return rng.standard_normal((n, cols)) @ a


def _gemm_layer(x):
    lay = hessian.Layer("w", "Gemm", "x", trans_b=True)
    lay.h = [x.T @ x]
    lay.rows_seen = x.shape[0]
    return lay


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_compensated_per_channel_rounding_beats_plain_per_channel_on_correlated_inputs(bits):
    rng = np.random.default_rng(3)
    ranges = np.geomspace(1.0, 8.0, 40)
    w = (rng.standard_normal((40, 64)) * ranges[:, None] * 0.02).astype(np.float32)
    x = _correlated(rng, 4096, 64)
    lay = _gemm_layer(x)
    cb, idx, s = perchannel.share(w, 0, 0.0, bits)  # nearest rounding, no H
    plain = obs.output_error(w, perchannel.decode(cb, idx, s, 0, np.float32), lay.h[0])
    cb, idx, s = perchannel.share(w, 0, 0.0, bits, layer=lay)  # GPTQ/OBS sweep against H
    comp = obs.output_error(w, perchannel.decode(cb, idx, s, 0, np.float32), lay.h[0])
    assert comp < 0.8 * plain, (comp, plain)
    # held-out inputs from the same distribution: the gain is not a fit to the calibration rows
    xh = _correlated(np.random.default_rng(3), 4096, 64)
    hh = xh.T @ xh
    assert obs.output_error(w, perchannel.decode(cb, idx, s, 0, np.float32), hh) < 0.9 * plain * 1.5


def test_local_error_is_the_layers_relative_output_error():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 32)).astype(np.float32)
    x = _correlated(rng, 512, 32)
    lay = _gemm_layer(x)
    q = w + 0.01 * rng.standard_normal(w.shape).astype(np.float32)
    direct = np.linalg.norm(x @ (w - q).T) / np.linalg.norm(x @ w.T)
    assert math.isclose(budget.local_error(w, q, lay), direct, rel_tol=1e-6)
    assert math.isclose(budget.local_error(w, q, lay) ** 2, obs.output_error(w, q, lay.h[0]), rel_tol=1e-9)


def _one_gemm(path, seed=0, n_in=48, n_out=32):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "one",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_local_scan_predicts_a_linear_layer_with_one_model_run(tmp_path):
    """For y = x W^T the model's error is the layer's: the measured gain is 1 and every scanned
    setting's prediction is its measured model error; the scan spends two runs on the layer."""
    _one_gemm(tmp_path / "g.onnx")
    src = sources.load(str(tmp_path / "g.onnx"))
    rng = np.random.default_rng(0)
    x = _correlated(rng, 256, 48).astype(np.float32)  # >= hessian.MIN_ROWS_PER_FEATURE rows per feature
    calib = {"x": x}
    decl = inp.declared_inputs(src.graph)
    layers, _ = hessian.for_model(src.graph, src.weights, calib, decl, src.roles, 0)
    assert set(layers) == {"w"}
    res, _ = budget.search(src.graph, src.weights, calib, decl, 0.02, min_size=0, layers=layers, axes=src.out_axes)
    e = res.errors["w"]
    # the gain run uses the first SCAN_SAMPLES samples, H all of them: close, not equal
    assert len(e["gain"]) == len(budget.GAIN_SETTINGS)
    assert all(0.7 < model / loc < 1.4 for loc, model in e["gain"]), e["gain"]
    assert len(e["local"]) >= 6  # many settings measured locally ...
    assert res.trials <= 2 + len(budget.GAIN_SETTINGS) + 2 * budget.MAX_REPLANS  # ... for the gain runs, the
    # base runs and verifications
    runner = budget.Runner(src.graph, src.weights, ["w"])
    base = runner.run(calib, decl, src.weights)
    w = src.weights["w"]
    for key in ("channel 0 6", "channel 0 4"):
        _, s, b = key.split()
        q = budget.reconstruct(w, float(s), int(b), layer=layers["w"], scale_axis=0)
        measured = budget._error(base, runner.run(calib, decl, src.weights, {"w": q}))
        assert math.isclose(budget.local_error(w, q, layers["w"]), measured, rel_tol=1e-3)
    assert res.verified <= budget.VERIFY_SHARE * 0.02
    assert res.plan["w"] is not None


def test_split_holds_out_the_last_quarter():
    decl = [inp.Declared("x", "float32", ["N", 3])] if hasattr(inp, "Declared") else None
    if decl is None:
        pytest.skip("dcformat.inputs has no Declared")
    calib = {"x": np.arange(48, dtype=np.float32).reshape(16, 3)}
    fit, held = calibrate.split(calib, decl)
    assert fit["x"].shape[0] == 12 and held["x"].shape[0] == 4
    assert np.array_equal(np.concatenate([fit["x"], held["x"]]), calib["x"])
    fit, held = calibrate.split({"x": calib["x"][:5]}, decl)
    assert held is None and fit["x"].shape[0] == 5


def _mlp(path, seed=0, dims=(32, 96, 10)):
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = (rng.standard_normal((b, a)) / math.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"fc{i}.weight"))
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight"], [out + ("" if out == "y" else "_")], transB=1))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out + "_"], [out]))
        prev = out
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", dims[-1]])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_held_out_samples_tighten_a_plan_the_calibration_set_cannot_judge(tmp_path, capsys):
    """The samples the search fits on never use half of the input features (their H is zero there, so
    compensation zeroes those weights at no measured cost); the held-out quarter uses them: the held-out
    error is over the budget until the plan is tightened, and the report says both errors."""
    _mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 32)).astype(np.float32)
    x[:192, 16:] = 0.0  # the fit part: 192 samples (256 - 64 held out)
    np.savez(tmp_path / "c.npz", x=x)
    code, stdout, err = _cli(convert_main, [tmp_path / "m.onnx", "-o", tmp_path / "m.dcz", "--json", "--calibration",
                                            tmp_path / "c.npz", "--max-error", "0.02", "--min-size", "0"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    srch = rep["fidelity"]["search"]
    assert srch["held_out_samples"] == 64
    assert any(r["set"] == "held-out" for r in srch["replans"]) or any(srch["backoffs"]), srch
    assert srch["held_out_error"] <= budget.HELD_SHARE * 0.02
    assert rep["fidelity"]["max_rel_l2"] <= 0.02  # the whole set (fit + held out) measured on the written file
    # a calibration set without the unseen features: its held-out quarter is like the rest, nothing tightens
    y = np.concatenate([x[:192], x[:64]])
    np.savez(tmp_path / "fit.npz", x=y)
    code, stdout, err = _cli(convert_main, [tmp_path / "m.onnx", "-o", tmp_path / "f.dcz", "--json", "--calibration",
                                            tmp_path / "fit.npz", "--max-error", "0.02", "--min-size", "0"], capsys)
    assert code == 0, err
    r2 = json.loads(stdout)
    assert r2["fidelity"]["search"]["held_out_error"] is not None  # its held-out quarter is fit-like: no tightening
    assert not any(r["set"] == "held-out" for r in r2["fidelity"]["search"]["replans"])


def test_float16_codebook_and_scales_are_exact_and_smaller():
    """perchannel.share rounds its codebook and scales to float16 values (after a power-of-two shift):
    stored as float16 they decode to exactly what the budget measured, in fewer bytes."""
    import dcformat

    rng = np.random.default_rng(8)
    ranges = np.geomspace(1e-4, 1e-2, 64)  # scales far below 1: the shift keeps them normal float16 numbers
    w = (rng.standard_normal((64, 48)) * ranges[:, None]).astype(np.float32)
    x = _correlated(rng, 1024, 48)
    for layer in (None, _gemm_layer(x)):
        cb, idx, s = perchannel.share(w, 0, 0.0, 6, layer=layer)
        st = perchannel.storage(cb, s)
        assert st == {"codebook_dtype": "float16", "scale_dtype": "float16"}
        ours = perchannel.decode(cb, idx, s, 0, np.float32)
        assert np.linalg.norm(ours - w) / np.linalg.norm(w) < 0.05  # the shift did not change the products' scale
        half = dcformat.estimate_codebook_bytes(cb, idx, w.shape, scales=s, scale_axis=0, **st).nbytes
        full = dcformat.estimate_codebook_bytes(cb, idx, w.shape, scales=s, scale_axis=0).nbytes
        assert half < full
        enc = dcformat.encode_codebook("w", cb, idx, w.shape, "float32", scales=s, scale_axis=0, **st)
        ref = dcformat.codebook_values(cb, idx, w.shape, "float32", scales=s, scale_axis=0, **st)
        assert np.array_equal(np.asarray(ref, np.float32).view(np.uint32), ours.view(np.uint32))
        assert enc.nbytes <= full
    # values that are not float16 numbers keep float32 storage
    assert perchannel.storage(np.array([0.1, 0.2], np.float32), np.array([1.0, 3.0], np.float32)) == {}

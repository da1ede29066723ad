"""Sequential fitting (converters/sequential.py): each planned layer is fitted to the float model's
outputs from the inputs the already-compressed layers before it give."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import dcformat
from clitools import cli as _cli
from converters import budget, calibrate, hessian, perchannel, sequential, sources
from converters.cli import main as convert_main
from converters.oneshot import damping
from dcformat import fidelity

WIDTHS = (24, 48, 48, 48, 12)


def _chain(path, seed=0):
    """x (N x 24) -> MatMul -> Relu -> MatMul -> Relu -> MatMul -> Relu -> MatMul: a chain of four layers
    whose output channels have ranges differing by 10x (so per-channel scales apply)."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for k, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        w = (rng.standard_normal((a, b)) / np.sqrt(a) * np.geomspace(0.3, 3.0, b)[None, :]).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        out = f"m{k}" if k < len(WIDTHS) - 2 else "y"
        nodes.append(helper.make_node("MatMul", [prev, f"w{k}"], [out]))
        if k < len(WIDTHS) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            prev = f"r{k}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTHS[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTHS[-1]])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def _inputs(rng, n):
    mix = rng.standard_normal((WIDTHS[0], WIDTHS[0])) * 0.5 + np.eye(WIDTHS[0])
    return (rng.standard_normal((n, WIDTHS[0])) @ mix).astype(np.float32)


def test_target_is_the_damped_least_squares_map_onto_the_float_outputs():
    """W* minimises ||X W^T - X_hat Q^T||^2 + l ||Q - W||^2 (l: the compensation's damping of H_hat's mean
    diagonal), checked against numpy's lstsq of the stacked system; with X_hat = X it is W itself."""
    rng = np.random.default_rng(0)
    x = _inputs(rng, 300).astype(np.float64)
    # a systematic distortion (what compressed layers before it do) plus a little noise
    x_hat = x @ (np.eye(x.shape[1]) + 0.2 * rng.standard_normal((x.shape[1], x.shape[1]))) \
        + 0.05 * rng.standard_normal(x.shape)
    w = rng.standard_normal((10, x.shape[1])).astype(np.float32)
    lay = hessian.Layer("w", "Gemm", "x", trans_b=True)
    acc: dict = {}
    sequential.accumulate_pair(lay, x_hat, x, w.shape, np.random.default_rng(0), acc)
    assert acc["rows"] == 300
    np.testing.assert_allclose(acc["h"][0], x_hat.T @ x_hat, rtol=1e-10)
    np.testing.assert_allclose(acc["c"][0], x_hat.T @ x, rtol=1e-10)
    got = sequential.target(w, lay, acc["h"], acc["c"], acc["rows"])
    lam = damping(x.shape[1], 300) * np.mean(np.diag(acc["h"][0]))
    a = np.vstack([x_hat, np.sqrt(lam) * np.eye(x.shape[1])])
    b = np.vstack([x @ w.T.astype(np.float64), np.sqrt(lam) * w.T.astype(np.float64)])
    want = np.linalg.lstsq(a, b, rcond=None)[0].T
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # it fits the float outputs better than W does from the perturbed inputs
    assert np.linalg.norm(x @ w.T - x_hat @ got.T) < 0.5 * np.linalg.norm(x @ w.T - x_hat @ w.T)
    acc = {}
    sequential.accumulate_pair(lay, x, x, w.shape, np.random.default_rng(0), acc)
    np.testing.assert_allclose(sequential.target(w, lay, acc["h"], acc["c"], acc["rows"]), w, rtol=1e-5, atol=1e-6)


def test_conv_pairs_take_the_same_positions_of_both_inputs():
    """A convolution's im2col rows are subsampled: X_hat and X must be the same positions, so that
    with X_hat = X the cross moment is exactly H_hat."""
    rng = np.random.default_rng(1)
    lay = hessian.Layer("w", "Conv", "x", kernel=(3, 3), pads=(1, 1, 1, 1))
    x = rng.standard_normal((1, 4, 40, 40))
    acc: dict = {}
    sequential.accumulate_pair(lay, x, x, (8, 4, 3, 3), rng, acc, max_rows=500)
    assert acc["rows"] == 500
    np.testing.assert_allclose(acc["h"], acc["c"], rtol=1e-12, atol=1e-9)  # BLAS order aside: equal


def test_sequential_plan_has_less_model_error_than_the_per_layer_fit_at_the_same_bytes(tmp_path):
    """A chain of four layers, every one per-channel at 3 bits: fitted in order against the float
    outputs, the whole model's output error on held-out inputs is below that of each layer fitted
    alone to the float model's inputs, for (within 3%) the same estimated bytes."""
    _chain(tmp_path / "m.onnx")
    src = sources.load(str(tmp_path / "m.onnx"))
    decl, _, _ = calibrate.calibration(src.graph, None, 1)
    rng = np.random.default_rng(2)
    calib, held = {"x": _inputs(rng, 512)}, {"x": _inputs(rng, 256)}
    found, _ = hessian.for_model(src.graph, src.weights, calib, decl, src.roles, 0)
    assert sorted(found) == ["w0", "w1", "w2", "w3"]
    assert sequential.order(src.graph, list(found)) == ["w0", "w1", "w2", "w3"]

    def built(w, lay):
        ax = perchannel.layer_axis(lay, w.ndim)
        cb, idx, s = perchannel.share(w, ax, 0.0, 3, layer=lay)
        est = dcformat.estimate_codebook_bytes(cb, idx, w.shape, "float32", scales=s, scale_axis=ax,
                                               **perchannel.storage(cb, s))
        return perchannel.decode(cb, idx, s, ax, w.dtype), est.nbytes

    plain = {n: built(src.weights[n], found[n]) for n in found}
    seq = sequential.Sequential(src.graph, src.weights, calib, decl, found, list(found))
    sizes = {}

    def build(name, w, lay, key):
        q, sizes[name] = built(w, lay)
        return q

    got = seq.apply({n: 3 for n in found}, build, {})
    assert set(got) == set(found) and seq.refits == 3  # the first layer's inputs are the float ones
    assert got["w0"][1] is src.weights["w0"] and got["w1"][1] is not src.weights["w1"]
    runner = budget.Runner(src.graph, src.weights, list(found))

    def err(data, recon):
        return fidelity.compare(runner.run(data, decl, src.weights), runner.run(data, decl, src.weights, recon))["max_rel_l2"]

    e_plain = err(held, {n: q for n, (q, _) in plain.items()})
    e_seq = err(held, {n: r[0] for n, r in got.items()})
    assert e_seq < 0.9 * e_plain, (e_seq, e_plain)  # 0.224 against 0.264
    assert sum(sizes.values()) <= 1.03 * sum(b for _, b in plain.values()), (sizes, plain)
    # a second pass with the last layer changed reuses the others (no new model runs for them)
    runs = seq.runs
    again = seq.apply({**{n: 3 for n in found}, "w3": 4}, build, {})
    assert seq.runs == runs + 1 and again["w2"] is got["w2"] and again["w3"] is not got["w3"]
    # raw layers stay raw, and the layers after them are fitted against what they see
    part = seq.apply({"w0": None, "w1": 3, "w2": None, "w3": 3}, build, {})
    assert set(part) == {"w1", "w3"} and part["w1"][1] is src.weights["w1"]


def _convert(tmp_path, capsys, name, *flags):
    code, stdout, err = _cli(convert_main, [tmp_path / "m.onnx", "-o", tmp_path / name, "--json", "--calibration",
                                            tmp_path / "c.npz", "--max-error", "0.03", "--min-size", "0", *flags], capsys)
    assert code == 0, err
    return json.loads(stdout)


def test_dcconvert_writes_what_the_sequential_search_verified(tmp_path, capsys):
    """dcconvert --sequential: the search measures its plans fitted in order, and the file
    holds exactly those weights: the written model's error on the samples the search fitted on is the
    search's verified error. --no-sequential fits each layer alone."""
    _chain(tmp_path / "m.onnx")
    x = _inputs(np.random.default_rng(3), 256)
    np.savez(tmp_path / "c.npz", x=x)
    rep = _convert(tmp_path, capsys, "s.dcz", "--sequential")
    srch = rep["search"]
    assert rep["settings"]["sequential"] is True
    assert srch["sequential"]["passes"] >= 1 and srch["sequential"]["refits"] >= 1
    assert rep["fidelity"]["max_rel_l2"] <= 0.03
    src = sources.load(str(tmp_path / "m.onnx"))
    decl, _, _ = calibrate.calibration(src.graph, None, 1)
    fit, _ = calibrate.split({"x": x}, decl)
    runner = budget.Runner(src.graph, src.weights)
    written = dcformat.load_weights(str(tmp_path / "s.dcz"))
    from dcformat import inputs as inp

    ref = inp.run_set(runner.session, fit, decl)
    got = budget.Runner(src.graph, {k: np.asarray(v) for k, v in written.items()}).run(fit, decl, {})
    measured = fidelity.compare(ref, got)["max_rel_l2"]
    np.testing.assert_allclose(measured, srch["verified_error"], rtol=1e-4)
    shared = [r for r in rep["layers"] if r["action"] == "pruned+shared"]
    assert shared
    plain = _convert(tmp_path, capsys, "p.dcz")  # the default
    assert plain["settings"]["sequential"] is False and "sequential" not in plain["search"]

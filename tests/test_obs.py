"""Error-compensating pruning and rounding (converters/obs.py) and the input second moments it
needs (converters/hessian.py): checked against plain magnitude pruning / nearest rounding on the
output error, and im2col against ONNX Runtime's own Conv."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters import hessian, obs
from converters.prune import magnitude_mask
from converters.quantize import quantize


def _correlated(rng, n=2048, cols=192, outliers=6):
    a = rng.standard_normal((cols, cols)) * 0.3 + np.eye(cols)
    x = rng.standard_normal((n, cols)) @ a
    x[:, :outliers] *= 10  # a few large input features, as transformer projections have
    return x


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_compensated_pruning_beats_magnitude_pruning(sparsity):
    rng = np.random.default_rng(0)
    x = _correlated(rng)
    h = x.T @ x
    w = rng.standard_normal((96, x.shape[1])).astype(np.float32) * 0.1
    plain = np.where(magnitude_mask(w, sparsity), w, 0)
    q, idx = obs.compensate(w, h, sparsity=sparsity)
    assert idx is None and q.dtype == np.float32
    assert abs((q == 0).mean() - sparsity) < 1e-3  # the same number of weights pruned
    e_plain, e_obs = obs.output_error(w, plain, h), obs.output_error(w, q, h)
    # the measured output error agrees with H's prediction, and compensation cuts it several-fold
    y = x @ w.T
    assert np.isclose(e_obs, np.sum((x @ (w - q).T) ** 2) / np.sum(y ** 2), rtol=1e-6)
    assert e_obs < e_plain / 3, (e_obs, e_plain)


@pytest.mark.parametrize("bits", [3, 4])
def test_compensated_rounding_beats_nearest_centroid(bits):
    rng = np.random.default_rng(1)
    x = _correlated(rng)
    h = x.T @ x
    w = rng.standard_normal((64, x.shape[1])).astype(np.float32) * 0.1
    cb, idx0 = quantize(w, bits)
    nearest = cb[idx0]
    q, idx = obs.compensate(w, h, np.sort(cb))
    assert np.array_equal(q, np.sort(cb).astype(np.float32)[idx])  # every weight is a codebook entry
    assert obs.output_error(w, q, h) < obs.output_error(w, nearest, h) / 2


def test_pruning_and_rounding_together_with_a_fixed_mask_and_scales():
    rng = np.random.default_rng(2)
    x = _correlated(rng, cols=64)
    h = x.T @ x
    w = rng.standard_normal((32, 64)) * np.logspace(-2, 0, 32)[:, None]  # rows of very different ranges
    keep = rng.random(w.shape) > 0.6
    scales = np.abs(w).max(axis=1)
    cb = np.linspace(-1, 1, 15)
    q, idx = obs.compensate(w, h, cb, scales=scales, keep=keep)
    assert np.all(q[~keep] == 0) and np.all(idx[~keep] == -1)
    assert np.allclose(q[keep], (cb[idx] * scales[:, None])[keep], rtol=1e-6)
    plain = np.where(keep, cb[obs.nearest(w / scales[:, None], cb)] * scales[:, None], 0)
    assert obs.output_error(w, q, h) < obs.output_error(w, plain, h)


@pytest.mark.parametrize("case", range(8))
def test_compiled_sweep_equals_the_numpy_sweep_bit_for_bit(case, monkeypatch):
    """compensate's column sweep runs compiled (converters/obs_kernels.py); the numpy loop it replaced is
    kept as the reference: the same Q and indices, bit for bit, over groups, pruning, fixed masks, scales,
    dead features, codebooks with ties and none at all, blocks that do not divide the columns."""
    rng = np.random.default_rng(100 + case)
    groups, rows, cols = (1, 2, 3, 1, 4, 1, 2, 1)[case], int(rng.integers(1, 40)), int(rng.integers(1, 70))
    w = rng.standard_normal((groups, rows, cols)) * np.exp(rng.normal(0, 1, cols))
    x = rng.standard_normal((groups, int(rng.integers(cols // 2 + 1, 3 * cols + 2)), cols))
    if case == 3:
        x[:, :, : cols // 3] = 0  # dead features
    h = np.matmul(x.transpose(0, 2, 1), x)
    cb = None if case in (2, 6) else np.sort(rng.choice(np.round(rng.standard_normal(12), 1), 8))  # ties
    kw = {"block": int(rng.integers(1, 40))}
    if case in (1, 5):
        kw["sparsity"] = 0.4
    if case == 4:
        kw["keep"] = rng.random(w.shape) > 0.3
    if case in (5, 7) and cb is not None:
        kw["scales"] = np.abs(rng.standard_normal((groups, rows))) + 0.1
    got = obs.compensate(w, h, cb, **kw)
    monkeypatch.setattr(obs, "SWEEP", "numpy")
    want = obs.compensate(w, h, cb, **kw)
    assert got[0].tobytes() == want[0].tobytes()
    assert (got[1] is None and want[1] is None) or np.array_equal(got[1], want[1])


def test_dead_features_and_rank_deficient_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 40))  # fewer samples than features: H is singular
    x[:, 5] = 0  # a feature that never occurs
    w = rng.standard_normal((8, 40))
    q, _ = obs.compensate(w, x.T @ x, sparsity=0.5)
    assert np.isfinite(q).all() and q[:, 5].tolist() == [0.0] * 8
    with pytest.raises(ValueError, match="input features"):
        obs.compensate(w, np.eye(39))


def _ort_conv(x, w, **attrs):
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 2, 1], "group": 2},
    {"kernel_shape": [3, 3], "dilations": [2, 2], "group": 6},  # depthwise
    {"kernel_shape": [2, 3], "strides": [2, 1], "auto_pad": "SAME_UPPER"},
])
def test_im2col_is_what_onnx_runtime_convolves(attrs):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 9, 11)).astype(np.float32)
    g = attrs.get("group", 1)
    w = rng.standard_normal((12, 6 // g, *attrs["kernel_shape"])).astype(np.float32)
    want = _ort_conv(x, w, **attrs)
    lay = hessian.Layer("w", "Conv", "x", group=g, kernel=tuple(attrs["kernel_shape"]), strides=tuple(attrs.get("strides", ())),
                        pads=tuple(attrs.get("pads", ())), dilations=tuple(attrs.get("dilations", ())),
                        auto_pad=attrs.get("auto_pad", "NOTSET"))
    cols = hessian.im2col(x.astype(np.float64), lay, w.shape[2:], np.random.default_rng(0), max_rows=10**9)
    rows = hessian.to_rows(w, lay)
    got = np.concatenate([c @ r.T for c, r in zip(cols, rows)], axis=1)  # positions x out
    got = got.reshape(want.shape[0], *want.shape[2:], want.shape[1])
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, rtol=1e-4, atol=1e-4)
    assert np.array_equal(hessian.from_rows(rows, w, lay), w)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 2, 1], "group": 2},
    {"kernel_shape": [3, 3], "dilations": [2, 2], "group": 6},  # depthwise
    {"kernel_shape": [5], "strides": [2], "pads": [2, 1]},  # 1-D
])
def test_sampled_patches_are_those_rows_of_all_patches(attrs):
    """Past max_rows, the patches of the sampled positions (taken from the window view, not after
    copying every position): exactly the rows of the full patch matrix at those positions."""
    rng = np.random.default_rng(6)
    nd = len(attrs["kernel_shape"])
    x = rng.standard_normal((3, 6, *([13, 10][:nd]))).astype(np.float32)
    g = attrs.get("group", 1)
    lay = hessian.Layer("w", "Conv", "x", group=g, kernel=tuple(attrs["kernel_shape"]), strides=tuple(attrs.get("strides", ())),
                        pads=tuple(attrs.get("pads", ())), dilations=tuple(attrs.get("dilations", ())))
    kernel = tuple(attrs["kernel_shape"])
    full = hessian.patches(x, lay, kernel, np.random.default_rng(0), max_rows=10**9)
    positions = full.shape[1]
    for keep in (1, 17, positions - 1):
        got = hessian.patches(x, lay, kernel, np.random.default_rng(keep), max_rows=keep)
        take = np.sort(np.random.default_rng(keep).choice(positions, keep, replace=False))
        assert got.dtype == np.float64 and got.flags.c_contiguous
        assert np.array_equal(got, full[:, take])


def test_layers_and_importance_follow_the_graph():
    from dcformat.graph import strip_weights

    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((4, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("Gemm", ["h", "B"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w1[:, :8].copy(), "A"), numpy_helper.from_array(w2, "B")])
    graph, _ = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    found = hessian.layers(graph, ["A", "B"])
    assert {k: (v.op, v.activation, v.trans_b) for k, v in found.items()} == {"A": ("MatMul", "x", False),
                                                                               "B": ("Gemm", "h", True)}
    x = rng.standard_normal((50, 16))
    hessian.accumulate(found["A"], x, (16, 8), rng)
    imp = hessian.importance(found["A"], (16, 8))
    assert np.allclose(imp[:, 0], (x ** 2).sum(axis=0))  # row i of A multiplies feature i


def test_weighted_kmeans_fits_the_weights_that_matter():
    """Activation-aware weight sharing: with E[x^2] per input feature as importance, the codebook
    lowers the importance-weighted error (and the output error) against plain k-means."""
    rng = np.random.default_rng(6)
    x = _correlated(rng, cols=128, outliers=4)
    h = x.T @ x
    w = (rng.standard_normal((128, 64)) * 0.05).astype(np.float32)  # MatMul layout: rows = input features
    w[:4] = rng.standard_normal((4, 64)) * 0.01  # the outlier features' weights are small ones
    lay = hessian.Layer("w", "MatMul", "x")
    hessian.accumulate(lay, x, w.shape, rng)
    imp = hessian.importance(lay, w.shape)
    cb0, i0 = quantize(w, 3)
    cb1, i1 = quantize(w, 3, importance=imp)
    werr = lambda cb, i: float(np.sum(imp * (w - cb[i]) ** 2))  # noqa: E731
    assert werr(cb1, i1) < 0.7 * werr(cb0, i0)
    assert obs.output_error(w.T, cb1[i1].T, h) < obs.output_error(w.T, cb0[i0].T, h)


@pytest.mark.parametrize("bits", [2, 4, 5])
def test_kmeans_uses_the_codebook_it_was_asked_for(bits):
    """Heavy tails leave linear-initialised centroids empty; they are re-seeded, so every entry is used."""
    rng = np.random.default_rng(7)
    w = (rng.standard_t(3, (300, 784)) * 0.05).astype(np.float32)
    w = np.where(magnitude_mask(w, 0.9), w, 0)
    cb, idx = quantize(w, bits)
    assert cb.size == (1 << bits) + 1 and np.unique(idx).size == cb.size  # + the pruned zero
    few = np.repeat(np.array([0.5, -0.25, 1.0], np.float32), 100)
    cb, idx = quantize(few, bits)  # fewer distinct values than entries: exactly those
    assert sorted(cb.tolist()) == [-0.25, 0.5, 1.0]


def test_one_shot_sharing_of_a_model_beats_plain_compression(tmp_path):
    """End to end on a small ONNX model: H collected from calibration samples through ONNX Runtime,
    every layer pruned 50% and shared at 4 bits, stored as codebook records; the model's output
    error on held-out inputs is well below plain magnitude pruning + k-means at the same settings."""
    import dcformat
    from converters import oneshot
    from dcformat import inputs as inp
    from dcformat.graph import strip_weights

    rng = np.random.default_rng(8)
    d, hdim = 48, 96
    mix = rng.standard_normal((d, d)) * 0.4 + np.eye(d)
    ws = {"W1": (rng.standard_normal((d, hdim)) * 0.15).astype(np.float32),
          "W2": (rng.standard_normal((hdim, 10)) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                          [numpy_helper.from_array(v, k) for k, v in ws.items()])
    graph, weights = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    scale = np.ones(d)
    scale[:4] = 8  # a few large input features
    sample = lambda n: (rng.standard_normal((n, d)) @ mix * scale).astype(np.float32)  # noqa: E731
    calib, held = {"x": sample(256)}, sample(512)
    decl = inp.declared_inputs(graph)
    found = hessian.collect(graph, weights, calib, decl, hessian.layers(graph, list(weights)))
    assert set(found) == {"W1", "W2"} and found["W1"].rows_seen == 256

    def run(records):
        path = tmp_path / "m.dcz"
        dcformat.write(path, records, graph=graph)
        return dcformat.InferenceSession(path).run(None, {"x": held})[0]

    ref = run([dcformat.encode(k, v) for k, v in weights.items()])
    plain, comp = [], []
    for k, w in weights.items():
        pruned = np.where(magnitude_mask(w, 0.5), w, 0)
        cb, idx = quantize(pruned, 4)
        plain.append(dcformat.encode_codebook(k, cb, idx))
        cb, idx = oneshot.share(w, found[k], 0.5, 4)
        assert cb[0] == 0 and cb.size <= 17 and abs(float(np.mean(idx == 0)) - 0.5) < 0.01
        comp.append(dcformat.encode_codebook(k, cb, idx))
    rel = lambda y: float(np.linalg.norm(y - ref) / np.linalg.norm(ref))  # noqa: E731
    e_plain, e_comp = rel(run(plain)), rel(run(comp))
    assert e_comp < 0.8 * e_plain, (e_comp, e_plain)


def test_groups_in_one_sweep_equal_one_sweep_per_group():
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((200, 9)) @ (rng.standard_normal((9, 9)) * 0.5 + np.eye(9)) for _ in range(5)]
    hs = np.stack([x.T @ x for x in xs])
    w = rng.standard_normal((5, 3, 9))
    cb = np.linspace(-2, 2, 7)
    q, idx = obs.compensate(w, hs, cb, sparsity=0.3)
    for g in range(5):
        qg, ig = obs.compensate(w[g], hs[g], cb, sparsity=0.3)
        assert np.array_equal(q[g], qg) and np.array_equal(idx[g], ig)


def test_layers_seen_in_too_few_rows_keep_plain_sharing():
    """An H from fewer than MIN_ROWS_PER_FEATURE rows per feature would be fitted, not used."""
    from dcformat import inputs as inp
    from dcformat.graph import strip_weights

    rng = np.random.default_rng(10)
    w = (rng.standard_normal((32, 16)) * 0.1).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], [numpy_helper.from_array(w, "W")])
    graph, weights = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    decl = inp.declared_inputs(graph)
    for n, usable in ((8 * 16, True), (8, False)):  # 128 rows = 4 per feature; 8 rows
        got, without = hessian.for_model(graph, weights, {"x": rng.standard_normal((n, 32)).astype(np.float32)}, decl,
                                         {"W": "fc"}, min_size=1)
        assert (list(got), without) == ((["W"], []) if usable else ([], ["W"]))


def test_dcconverts_note_groups_the_layers_left_without_by_kind():
    """hessian.for_model's reasons carry a kind (too few rows, too wide) that dcconvert's note groups by,
    whatever their text says (converters.cli._compensation_note)."""
    from converters.cli import _compensation_note
    from converters.obs import MAX_COLUMNS
    from dcformat import inputs as inp
    from dcformat.graph import strip_weights

    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 16)) * 0.1).astype(np.float32), n) for n in "VW"]
    nodes = [helper.make_node("MatMul", ["x", "V"], ["a"]), helper.make_node("MatMul", ["x", "W"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits)
    graph, weights = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    why: dict = {}
    got, without = hessian.for_model(graph, weights, {"x": rng.standard_normal((8, 32)).astype(np.float32)},
                                     inp.declared_inputs(graph), {"V": "fc", "W": "fc"}, min_size=1, reasons=why)
    assert (got, without) == ({}, ["V", "W"])
    assert {why[n].kind for n in without} == {hessian.FEW_ROWS}
    wide = hessian.Reason(f"too wide ({MAX_COLUMNS + 1:,} input features)", hessian.TOO_WIDE)
    note = _compensation_note(3, ["V", "W", "U", "T"], {**why, "U": wide, "T": "its H would pass the limit"})
    assert note == (f"error compensation: 3 of 7 layers; the others keep plain rounding: 2 saw fewer than "
                    f"{hessian.MIN_ROWS_PER_FEATURE} calibration rows per input feature (more --calibration-samples "
                    f"would include them): V, W; 1 too wide (over {MAX_COLUMNS:,} input features): U; "
                    "1 its H would pass the limit: T")

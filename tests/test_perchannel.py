"""Per-channel scales (converters/perchannel.py): W[c] = scale[c] * codebook[index] against one
codebook per tensor on layers whose channels' ranges differ 16x, the least-squares scale refit,
and the error budget choosing per layer between the two by estimated bytes."""

from __future__ import annotations

import numpy as np
import pytest

from converters import budget, hessian, obs, oneshot, perchannel
from converters.quantize import quantize


def _wide_range_layer(rng, rows=48, cols=64):
    """Rows (output channels) whose ranges span 16x, as BN-folded convolutions have."""
    ranges = np.geomspace(1.0, 16.0, rows)
    rng.shuffle(ranges)
    return (rng.standard_normal((rows, cols)) * ranges[:, None] * 0.01).astype(np.float32)


def _layer(w, x):
    lay = hessian.Layer("w", "Gemm", "x", trans_b=True)
    lay.h = [x.T @ x]
    lay.rows_seen = x.shape[0]
    return lay


def _correlated(rng, n=4096, cols=64):
    a = rng.standard_normal((cols, cols)) * 0.3 + np.eye(cols)
    return rng.standard_normal((n, cols)) @ a


@pytest.mark.parametrize("bits", [3, 4])
def test_per_channel_beats_per_tensor_on_channels_16x_apart(bits):
    rng = np.random.default_rng(0)
    w = _wide_range_layer(rng)
    m = np.abs(w).max(axis=1)
    assert m.max() / m.min() > 10
    cb, idx = quantize(w, bits)
    plain = cb[idx]
    for method in perchannel.SCALE_METHODS:
        pcb, pidx, s = perchannel.share(w, 0, 0.0, bits, method=method)
        assert s.shape == (w.shape[0],) and s.dtype == np.float32 and pcb.size <= 2 ** bits
        q = perchannel.decode(pcb, pidx, s, 0, np.float32)
        assert np.array_equal(q, pcb.astype(np.float32)[pidx] * s[:, None])  # the decoder's arithmetic
        # the narrow channels are what one codebook loses: their relative error, and the whole tensor's
        rel = lambda a: np.linalg.norm(w - a, axis=1) / np.linalg.norm(w, axis=1)  # noqa: E731
        narrow = m < np.median(m)
        assert rel(q)[narrow].mean() < rel(plain)[narrow].mean() / 3, method
        assert np.linalg.norm(w - q) < np.linalg.norm(w - plain), method


def test_per_channel_compensated_beats_per_tensor_on_the_output_error():
    rng = np.random.default_rng(1)
    w = _wide_range_layer(rng)
    x = _correlated(rng)
    lay = _layer(w, x)
    cb, idx = oneshot.share(w, lay, 0.0, 4)
    e_tensor = obs.output_error(w, cb[idx], lay.h[0])
    errs = {}
    for method in perchannel.SCALE_METHODS:
        pcb, pidx, s = perchannel.share(w, 0, 0.0, 4, layer=lay, method=method)
        errs[method] = obs.output_error(w, perchannel.decode(pcb, pidx, s, 0, np.float32), lay.h[0])
    assert max(errs.values()) < e_tensor and max(errs["maxabs"], errs["lsq"]) < e_tensor / 2, (errs, e_tensor)
    # the least-squares refit starts from max-abs scales and never raises a channel's error
    assert errs["lsq"] <= errs["maxabs"] * 1.0001, errs


def test_refit_never_raises_any_channels_output_error():
    rng = np.random.default_rng(2)
    w = _wide_range_layer(rng, rows=16)
    x = _correlated(rng)
    lay = _layer(w, x)
    h = lay.h[0]
    a = perchannel.decode(*perchannel.share(w, 0, 0.0, 3, layer=lay, method="maxabs")[:3], 0, np.float64)
    b = perchannel.decode(*perchannel.share(w, 0, 0.0, 3, layer=lay, method="lsq")[:3], 0, np.float64)
    per_row = lambda q: np.einsum("ij,jk,ik->i", w - q, h, w - q)  # noqa: E731
    assert np.all(per_row(b) <= per_row(a) * (1 + 1e-6) + 1e-12)


def test_matmul_channels_are_columns_and_pruned_weights_stay_zero():
    rng = np.random.default_rng(3)
    w = _wide_range_layer(rng).T.copy()  # MatMul's B: [in, out], the output channel is axis 1
    x = _correlated(rng)
    lay = hessian.Layer("w", "MatMul", "x")
    lay.h, lay.rows_seen = [x.T @ x], x.shape[0]
    assert perchannel.layer_axis(lay, 2) == 1
    cb, idx, s = perchannel.share(w, 1, 0.5, 4, layer=lay)
    q = perchannel.decode(cb, idx, s, 1, np.float32)
    assert s.shape == (w.shape[1],) and cb[0] == 0 and abs((q == 0).mean() - 0.5) < 0.02
    assert np.array_equal(q == 0, idx == 0)
    with pytest.raises(ValueError, match="output axis"):
        perchannel.share(w, 0, 0.0, 4, layer=lay)
    # no calibration inputs: magnitude pruning, the existing zeros kept
    w2 = np.where(rng.random(w.shape) < 0.3, 0, w).astype(np.float32)
    cb, idx, s = perchannel.share(w2, 1, 0.0, 4)
    q = perchannel.decode(cb, idx, s, 1, np.float32)
    assert np.array_equal(q == 0, w2 == 0)


def test_budget_picks_per_channel_where_it_is_smaller_at_the_error():
    n, channels = 48 * 64, 48
    # per tensor, 8 bits are needed for the error per-channel reaches at 4 bits
    e = {"sparsity": {}, "bits": {8: 0.004, 7: 0.02}, "channel_bits": {8: 0.0005, 6: 0.001, 5: 0.002, 4: 0.004, 3: 0.02}}
    opts = budget._options("w", n, 4, e, 0.01, channels=channels, scale_axis=0)
    plan = budget.choose({"w": opts}, 0.005)
    assert plan["w"]["scale_axis"] == 0 and plan["w"]["bits"] == 4
    assert plan["w"]["bytes"] == pytest.approx(perchannel.estimate_bytes(n, 0.0, 4, channels))
    # where one codebook does as well, its scales are bytes saved: per tensor wins
    e2 = {"sparsity": {}, "bits": {8: 0.0005, 4: 0.004, 3: 0.02}, "channel_bits": {8: 0.0005, 4: 0.004, 3: 0.02}}
    plan = budget.choose({"w": budget._options("w", n, 4, e2, 0.01, channels=channels, scale_axis=0)}, 0.005)
    assert plan["w"]["scale_axis"] is None and plan["w"]["bits"] == 4


def test_channel_axis_follows_the_layer_and_skips_tiny_channels():
    w = np.ones((8, 16), np.float32)
    assert budget.channel_axis(w, None, 1) == 1
    assert budget.channel_axis(w, hessian.Layer("w", "Gemm", "x", trans_b=True), 1) == 0
    assert budget.channel_axis(np.ones(64, np.float32), None, 0) is None
    assert budget.channel_axis(np.ones((64, 2), np.float32), None, 0) is None  # 2 weights per scale


# ------------------------------------------------------------------------- end to end (format v1.2 records)


def _wide_cnn(path, seed=0):
    """Conv-Relu-MaxPool-Conv-Mul-Relu-Flatten-Gemm whose second conv looks BN-folded: its filters'
    ranges 16x apart, a per-channel Mul after it (stored exactly) undoing them, so a narrow filter
    carries as much of the output as a wide one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    r2 = np.geomspace(1 / 16, 1.0, 32)
    rng.shuffle(r2)
    weights = {"conv1.weight": (rng.standard_normal((16, 3, 3, 3)) / np.sqrt(27)).astype(np.float32),
               "conv1.bias": np.zeros(16, np.float32),
               "conv2.weight": (rng.standard_normal((32, 16, 3, 3)) * r2[:, None, None, None] / 12).astype(np.float32),
               "conv2.bias": np.zeros(32, np.float32),
               "inv_range": (1 / r2).reshape(32, 1, 1).astype(np.float32),
               "fc.weight": (rng.standard_normal((10, 2048)) / 45).astype(np.float32),
               "fc.bias": np.zeros(10, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c2", "inv_range"], ["m2"]),
        helper.make_node("Relu", ["m2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    g = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                          [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weights


def _convert(args, capsys):
    import json

    from clitools import cli
    from converters.cli import main

    code, out, err = cli(main, [*args, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_dcconvert_writes_per_channel_records_that_decode_and_run(tmp_path, capsys):
    import dcformat

    weights = _wide_cnn(tmp_path / "cnn.onnx")
    out = tmp_path / "cnn.dcz"
    rep = _convert([tmp_path / "cnn.onnx", "-o", out, "--bits", "conv2.weight=4,fc.weight=8", "--sparsity", "0", "--channel-scales", "on",
                    "--calibration-samples", "8", "--graph-opt", "none"], capsys)
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["conv2.weight"]["scales"] == rows["fc.weight"]["scales"] == "channel"
    assert rows["conv1.weight"]["reason"].startswith("small")
    with dcformat.open(out) as r:  # format 1.2 records: conv filters and Gemm (transB) rows carry scales
        assert r.info("conv2.weight").scale_axis == 0 and r.info("fc.weight").scale_axis == 0
        assert r.info("conv1.weight").scale_axis is None
    got = dcformat.load_weights(out)
    for name in ("conv2.weight",):
        w, q = weights[name], got[name]
        assert q.shape == w.shape and q.dtype == np.float32
        # each filter is its own scale times one shared 16-entry codebook
        norm = q.reshape(q.shape[0], -1) / np.abs(q.reshape(q.shape[0], -1)).max(axis=1, keepdims=True)
        assert np.unique(np.round(norm, 5)).size <= 16 * 2
        rel = np.linalg.norm((w - q).reshape(w.shape[0], -1), axis=1) / np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)
        assert rel.max() < 0.25  # every channel kept, the narrow ones too
    # per tensor at the same bits (plain k-means: per-channel sharing does not use ECVQ either) loses the
    # narrow filters; per channel is the more accurate file
    rep2 = _convert([tmp_path / "cnn.onnx", "-o", tmp_path / "t.dcz", "--bits", "conv2.weight=4,fc.weight=8", "--sparsity", "0",
                     "--channel-scales", "off", "--ecvq", "0", "--calibration-samples", "8", "--graph-opt", "none"],
                    capsys)
    assert rep["fidelity"]["max_rel_l2"] < rep2["fidelity"]["max_rel_l2"] / 2
    # the file runs in ONNX Runtime: its outputs are the graph's on the decoded weights, and closer to the
    # original's than the per-tensor file's
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "cnn.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y = dcformat.InferenceSession(out).run(None, {"x": x})[0]
    y_tensor = dcformat.InferenceSession(tmp_path / "t.dcz").run(None, {"x": x})[0]
    assert np.linalg.norm(y - ref) < np.linalg.norm(y_tensor - ref) / 1.5  # on inputs unlike the calibration's


def test_default_budget_picks_per_channel_for_wide_range_filters(tmp_path, capsys):
    _wide_cnn(tmp_path / "cnn.onnx")
    rep = _convert([tmp_path / "cnn.onnx", "-o", tmp_path / "a.dcz", "--max-error", "0.02", "--calibration-samples", "8"],
                   capsys)
    rows = {r["name"]: r for r in rep["layers"]}
    assert rep["fidelity"]["within_budget"] is True
    assert rows["conv2.weight"]["action"] == "pruned+shared" and rows["conv2.weight"]["scales"] == "channel"
    off = _convert([tmp_path / "cnn.onnx", "-o", tmp_path / "b.dcz", "--max-error", "0.02", "--channel-scales", "off",
                    "--calibration-samples", "8"], capsys)
    assert all(r.get("scales") != "channel" for r in off["layers"])
    assert rep["dcz_bytes"] < off["dcz_bytes"]


def test_embedding_rows_and_matmul_columns_get_the_scales(tmp_path, capsys):
    import dcformat
    from test_calibration import token_model

    token_model(tmp_path / "tok.onnx")
    out = tmp_path / "tok.dcz"
    rep = _convert([tmp_path / "tok.onnx", "-o", out, "--bits", "5", "--sparsity", "0", "--channel-scales", "on",
                    "--calibration-samples", "4"], capsys)
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["emb.weight"]["scales"] == rows["head.weight"]["scales"] == "channel"
    with dcformat.open(out) as r:
        assert r.info("emb.weight").scale_axis == 0  # a Gather table: one scale per row (token)
        assert r.info("head.weight").scale_axis == 1  # MatMul's B is [in, out]: per output column
        emb = r["emb.weight"]
    # each row is its scale times codebook entries: at most 32 distinct values per row once divided out
    assert max(np.unique(row / np.abs(row).max()).size for row in emb) <= 32


def test_the_simulated_decode_is_the_readers_bit_for_bit():
    import dcformat

    rng = np.random.default_rng(7)
    w = np.where(rng.random((24, 40)) < 0.2, 0, _wide_range_layer(rng, rows=24, cols=40)).astype(np.float32)
    for axis in (0, 1):
        cb, idx, s = perchannel.share(w, axis, 0.0, 5)
        ours = perchannel.decode(cb, idx, s, axis, np.float32)
        ref = dcformat.codebook_values(cb, idx, w.shape, "float32", scales=s, scale_axis=axis)
        assert np.array_equal(ours.view(np.uint32), np.asarray(ref, np.float32).view(np.uint32))
        enc = dcformat.encode_codebook("w", cb, idx, w.shape, "float32", scales=s, scale_axis=axis)
        assert enc.info.scale_axis == axis

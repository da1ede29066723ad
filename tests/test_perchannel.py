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

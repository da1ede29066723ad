"""Pruning and k-means weight sharing (numpy)."""

import numpy as np
import pytest

from converters.prune import magnitude_mask, std_mask
from converters.quantize import INITS, kmeans_1d, quantize


@pytest.mark.parametrize("s", [0.0, 0.5, 0.9, 0.99])
def test_magnitude_mask_hits_target(s):
    w = np.random.default_rng(0).standard_normal(10_000)
    keep = magnitude_mask(w, s)
    assert abs((1 - keep.mean()) - s) < 1e-3
    assert np.abs(w[keep]).min() >= np.abs(w[~keep]).max() if (~keep).any() else True


def test_already_zero_stays_zero_and_counts():
    w = np.array([0.0, 0.0, 1.0, -2.0, 3.0, 0.5])
    keep = magnitude_mask(w, 0.5)
    assert not keep[:2].any() and keep.sum() == 3


def test_std_mask():
    w = np.random.default_rng(1).standard_normal(1000)
    assert (std_mask(w, 1.0) == (np.abs(w) > w.std())).all()


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_quantize_keeps_zero_and_bounds_codebook(init, bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal(20_000).astype(np.float32)
    w[magnitude_mask(w, 0.8) == 0] = 0
    cb, idx = quantize(w, bits, init=init)
    q = cb[idx]
    assert (q[w == 0] == 0).all() and (q[w != 0] != 0).all()
    assert np.count_nonzero(cb) <= 2**bits
    err = np.abs(q - w)[w != 0]
    assert err.max() <= (w.max() - w.min()) / 2  # nearest centroid


def test_kmeans_exact_when_few_values():
    v = np.repeat([-1.5, 0.25, 3.0], 100)
    assert np.array_equal(kmeans_1d(v, 4), [-1.5, 0.25, 3.0])


def test_kmeans_beats_linear_grid():
    v = np.random.default_rng(2).standard_normal(50_000)
    c = kmeans_1d(v, 16, init="density")
    mse = lambda cents: np.mean((cents[np.abs(v[:, None] - cents).argmin(1)] - v) ** 2)
    assert mse(c) < mse(np.linspace(v.min(), v.max(), 16))


def test_bad_arguments():
    with pytest.raises(ValueError):
        magnitude_mask(np.ones(3), 1.0)
    with pytest.raises(ValueError):
        quantize(np.ones(3), 9)
    with pytest.raises(ValueError):
        quantize(np.ones(3), 2, init="nope")


@pytest.mark.parametrize("case", range(6))
def test_compiled_lloyd_equals_the_numpy_one_bit_for_bit(case, monkeypatch):
    """Lloyd's iterations run compiled (converters/fit_kernels.lloyd); the numpy version is kept as the
    reference: the same centroids, bit for bit, with importance weights, few distinct values, empty
    centroids re-seeded, every initialisation."""
    import converters.quantize as q

    rng = np.random.default_rng(300 + case)
    v = rng.standard_normal(int(rng.integers(100, 50000))) * np.exp(rng.normal(0, 2))
    if case == 2:
        v = np.round(v, 1)  # few distinct values
    if case == 5:
        v = np.concatenate([v, [40.0, -35.0]])  # outliers: empty centroids between them
    weights = np.abs(rng.standard_normal(v.size)) if case in (1, 4) else None
    k, init = (32, 256, 16, 5, 64, 128)[case], ("linear", "density", "forgy", "kmeans++", "linear", "linear")[case]
    got = q.kmeans_1d(v, k, init=init, weights=weights, seed=case)
    monkeypatch.setattr(q, "LLOYD", "numpy")
    want = q.kmeans_1d(v, k, init=init, weights=weights, seed=case)
    assert got.tobytes() == want.tobytes()

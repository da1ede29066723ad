"""One-shot weight sharing of a layer whose calibration inputs are known (no retraining).

Where plain compression prunes by magnitude and rounds each weight to its nearest centroid,
this uses what the calibration set says about the layer's inputs (converters/hessian.py):

1. the codebook is importance-weighted k-means: each weight's error counts by E[x^2] of
   the input feature it multiplies (SqueezeLLM-style sensitivity weighting, diagonal);
2. pruning and rounding are error-compensated (converters/obs.py, OBS / SparseGPT / GPTQ):
   weights are fixed one input feature at a time and the not-yet-fixed ones move to
   cancel the output error, so ``||X W^T - X Q^T||`` is minimised, not ``||W - Q||``.

The result has the same form as :func:`converters.quantize.quantize` -- a codebook (0.0
first when anything is pruned) and one index per weight -- so it is stored and decoded
exactly like any other codebook tensor.
"""

from __future__ import annotations

import numpy as np

from . import hessian, obs
from .quantize import centroids, kmeans_1d, pack


DAMP_BASE = 0.1


def damping(cols: int, rows: int) -> float:
    """Damping of H (a fraction of its mean diagonal) for ``cols`` features seen in ``rows`` samples:
    an H estimated from few rows is noisy and compensation would fit that noise (held-out error
    rises above plain rounding's), so it shrinks toward its diagonal as rows get fewer. Measured on
    random correlated layers: 0.1 + cols/rows keeps the held-out error below magnitude pruning's
    from 64 to 2048 rows for 128 features, with or without outlier features."""
    return DAMP_BASE + cols / max(rows, 1)


def share(w: np.ndarray, layer: hessian.Layer, sparsity: float, bits: int, init: str = "linear",
          seed: int = 0, strength: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, indices) of ``w`` pruned to ``sparsity`` and shared to ``2**bits`` centroids with
    error compensation. Weights that are zero already stay zero; with ``sparsity`` at or below
    their share, the existing zeros are the mask (a model pruned elsewhere keeps its pattern).
    ``strength`` > 0: the codebook is entropy-constrained (converters.ecvq, importance-weighted) instead of k-means."""
    if not layer.h:
        raise ValueError(f"{layer.weight}: no calibration inputs were collected for this layer")
    cdtype = w.dtype if w.dtype.kind == "f" else np.dtype(np.float32)
    flat = np.asarray(w).reshape(-1)
    nz = flat != 0
    zero_share = 1.0 - float(nz.mean()) if flat.size else 0.0
    imp = np.asarray(hessian.importance(layer, w.shape)).reshape(-1)
    fixed = sparsity <= zero_share
    survive = nz.copy()
    if not fixed:  # the codebook is for the weights that will stay: the largest by diagonal OBS saliency w^2 H_jj
        saliency = flat.astype(np.float64) ** 2 * imp
        k = int(round(flat.size * sparsity))
        if k:
            survive[np.argsort(saliency, kind="stable")[:k]] = False
    pruning = not fixed or zero_share > 0
    if strength and survive.any():  # ECVQ's codebook: fewer, rate-aware centroids; rounding stays compensated
        from .ecvq import ecvq

        cents, _ = ecvq(flat[survive], bits, strength, init=init, seed=seed, keep_zero=False, importance=imp[survive])
        cents = cents.astype(np.float64)
    if not (strength and survive.any()) or cents.size > centroids(bits, pruning):
        cents = (kmeans_1d(flat[survive], centroids(bits, pruning), init=init, seed=seed, weights=imp[survive])
                 if survive.any() else np.zeros(0))
    cents = np.unique(cents.astype(cdtype)[cents.astype(cdtype) != 0]).astype(np.float64)
    if cents.size == 0:
        return np.zeros(1, cdtype), np.zeros(w.shape, np.uint8)
    keep_parts = hessian.to_rows(np.asarray(w) != 0, layer) if fixed else None
    keep = None if not fixed else np.stack(keep_parts).astype(bool)
    _, idx = obs.compensate(np.stack(hessian.to_rows(w, layer)), np.stack(layer.h), cents,  # every group in one sweep
                            sparsity=0.0 if fixed else sparsity, keep=keep,
                            damp=damping(layer.h[0].shape[0], layer.rows_seen))
    idx = hessian.from_rows(list(idx), np.zeros(w.shape, np.int64), layer)
    return pack(cents, idx, cdtype)


__all__ = ["share"]

"""Magnitude pruning (Deep Compression, stage 1): which weights become exactly zero. numpy only."""

from __future__ import annotations

import numpy as np


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask that zeroes the ``sparsity`` fraction of smallest-magnitude weights.

    Weights that are already zero count towards the target and stay zero.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    a = np.abs(np.asarray(w)).reshape(-1)
    k = int(round(sparsity * a.size))
    keep = a != 0
    if k == 0:
        return keep.reshape(np.shape(w))
    thresh = np.partition(a, k - 1)[k - 1]
    keep &= a > thresh
    # ties at the threshold: keep the later ones so exactly k are dropped where possible
    short = (a.size - k) - int(keep.sum())
    if short > 0:
        tied = np.flatnonzero((a == thresh) & (a != 0))
        keep[tied[tied.size - short :]] = True
    return keep.reshape(np.shape(w))


def threshold_mask(w: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-mask of weights whose magnitude exceeds ``threshold``."""
    return np.abs(w) > threshold


def std_mask(w: np.ndarray, quality: float) -> np.ndarray:
    """Keep-mask with threshold = quality x the layer's standard deviation (Han et al. 2015)."""
    return threshold_mask(w, quality * float(np.std(w)))

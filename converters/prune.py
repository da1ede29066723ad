"""Magnitude pruning (Deep Compression, stage 1): which weights become exactly zero. numpy only."""

from __future__ import annotations

import numpy as np


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask that zeroes the ``sparsity`` fraction of smallest-magnitude weights.

    Weights that are already zero count towards the target and stay zero.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    w = np.asarray(w)
    flat = w.reshape(-1)
    k = int(round(sparsity * flat.size))
    keep = flat != 0
    if k == 0:
        return keep.reshape(w.shape)
    a = np.abs(flat)
    a.partition(k - 1)  # in place: one float copy of the layer, not two
    thresh = a[k - 1]
    del a
    keep &= (flat > thresh) | (flat < -thresh)  # |w| > thresh, with boolean temporaries only
    # ties at the threshold: keep the later ones so exactly k are dropped where possible
    short = (flat.size - k) - int(np.count_nonzero(keep))
    if short > 0:
        tied = np.flatnonzero(((flat == thresh) | (flat == -thresh)) & (flat != 0))
        keep[tied[tied.size - short :]] = True
    return keep.reshape(w.shape)


def threshold_mask(w: np.ndarray, threshold: float) -> np.ndarray:
    """Keep-mask of weights whose magnitude exceeds ``threshold``."""
    return np.abs(w) > threshold


def std_mask(w: np.ndarray, quality: float) -> np.ndarray:
    """Keep-mask with threshold = quality x the layer's standard deviation (Han et al. 2015)."""
    return threshold_mask(w, quality * float(np.std(w)))

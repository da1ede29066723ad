"""Weight sharing: 1-D k-means over a layer's non-zero weights (Deep Compression, stage 2).

Works on a fine histogram of the values (2**16 bins, per-bin sums for exact means), so a
100M-weight layer costs two passes over the data plus O(bins) per Lloyd step (one pass over the sorted
bins, compiled: converters/fit_kernels.py) -- no n x k distance matrix, no Python loop over weights.
"""

from __future__ import annotations

import numpy as np

from .defaults import INITS  # noqa: F401 (re-exported)

HIST_BINS = 1 << 16


CHUNK = 1 << 20  # elements per pass: bounds the temporaries of huge layers (~32 bytes each)


class Histogram:
    """Counts and sums of values in equal-width bins over [lo, hi] (computed in chunks).

    With ``weights`` (one importance per value, >= 0), ``count`` is each bin's total importance
    and ``sum`` its importance-weighted sum, so Lloyd steps on the bins are weighted k-means:
    the centroids minimise sum(importance x squared error) (activation-aware weight sharing).
    """

    def __init__(self, values: np.ndarray, bins: int = HIST_BINS, weights: np.ndarray | None = None):
        v = np.asarray(values).reshape(-1)
        wt = None if weights is None else np.asarray(weights, np.float64).reshape(-1)
        if wt is not None:
            if wt.size != v.size:
                raise ValueError(f"{wt.size} importance weights for {v.size} values")
            mean = float(wt.mean()) if wt.size else 0.0
            if not np.isfinite(mean) or mean <= 0:
                wt = None  # nothing to weight by: plain k-means
            else:  # every value counts a little, so none is lost from the histogram
                wt = np.maximum(wt, 1e-6 * mean)
        self.lo, self.hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        width = (self.hi - self.lo) or 1.0
        count = np.zeros(bins)
        total = np.zeros(bins)
        for start in range(0, v.size, CHUNK):
            c = v[start : start + CHUNK].astype(np.float64)
            b = np.minimum(((c - self.lo) * (bins / width)).astype(np.int64), bins - 1)
            w = None if wt is None else wt[start : start + CHUNK]
            count += np.bincount(b, weights=w, minlength=bins)
            total += np.bincount(b, weights=c if w is None else c * w, minlength=bins)
        nz = count > 0
        self.centers = total[nz] / count[nz]
        self.count, self.sum = count[nz], total[nz]


def _init(h: Histogram, k: int, method: str, rng: np.random.Generator) -> np.ndarray:
    if method == "linear":  # evenly spaced over [min, max]: keeps the rare large weights
        return np.linspace(h.lo, h.hi, k)
    cdf = np.cumsum(h.count) / h.count.sum()
    if method == "density":  # evenly spaced in the CDF
        q = (np.arange(k) + 0.5) / k
        return h.centers[np.minimum(np.searchsorted(cdf, q), h.centers.size - 1)]
    if method == "forgy":  # k random weights
        pick = np.searchsorted(cdf, rng.random(k))
        return np.sort(h.centers[np.minimum(pick, h.centers.size - 1)])
    if method == "kmeans++":
        # D^2 sampling over the histogram's bins (weighted by their counts), keeping each bin's
        # squared distance to its nearest chosen centre up to date: O(bins) per centre, not O(bins x k)
        c = [h.centers[min(np.searchsorted(cdf, rng.random()), h.centers.size - 1)]]
        near = (h.centers - c[0]) ** 2
        for _ in range(k - 1):
            d2 = near * h.count
            total = d2.sum()
            if total <= 0:
                break
            cum = np.cumsum(d2)
            pick = h.centers[min(np.searchsorted(cum / total, rng.random()), h.centers.size - 1)]
            c.append(pick)
            np.minimum(near, (h.centers - pick) ** 2, out=near)
        return np.sort(np.array(c))
    raise ValueError(f"unknown centroid init {method!r}; choose one of {', '.join(INITS)}")


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (centroids sorted ascending) for each value."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, values).astype(np.int64)


LLOYD = "numba"  # Lloyd's iterations: "numba" (converters/fit_kernels.py) or "numpy" (_lloyd_numpy, the reference)


def _lloyd(h: Histogram, c: np.ndarray, iters: int) -> np.ndarray:
    if LLOYD != "numba" or c.size == 0:
        return _lloyd_numpy(h, c, iters)
    from .fit_kernels import lloyd

    atol = 1e-12 * max(abs(h.lo), abs(h.hi), 1e-30)
    out, steps, ok = lloyd(np.ascontiguousarray(h.centers, np.float64), np.ascontiguousarray(h.count, np.float64),
                           np.ascontiguousarray(h.sum, np.float64), np.ascontiguousarray(c, np.float64), iters, atol)
    return out if ok else _lloyd_numpy(h, out, iters - steps)


def _lloyd_numpy(h: Histogram, c: np.ndarray, iters: int) -> np.ndarray:
    for _ in range(iters):
        a = assign(h.centers, c)
        cnt = np.bincount(a, weights=h.count, minlength=c.size)
        s = np.bincount(a, weights=h.sum, minlength=c.size)
        new = np.where(cnt > 0, s / np.where(cnt > 0, cnt, 1), c)
        done = np.allclose(new, c, rtol=0, atol=1e-12 * max(abs(h.lo), abs(h.hi), 1e-30))
        c = new
        if done:
            break
    return c


def _reseed(h: Histogram, c: np.ndarray) -> bool:
    """Move every empty centroid into the cluster with the largest (weighted) squared error, at
    that cluster's bin of largest error -- splitting it; True if any moved."""
    a = assign(h.centers, c)
    cnt = np.bincount(a, weights=h.count, minlength=c.size)
    empty = np.flatnonzero(cnt <= 0)
    if not empty.size:
        return False
    err = h.count * (h.centers - c[a]) ** 2
    moved = False
    for e in empty:
        sse = np.bincount(a, weights=err, minlength=c.size)
        worst = int(np.argmax(sse))
        if sse[worst] <= 0:
            break
        members = np.flatnonzero(a == worst)
        b = members[np.argmax(err[members])]
        if h.centers[b] == c[worst]:
            break
        c[e] = h.centers[b]
        a[b], err[b] = e, 0.0  # that bin now sits on the new centroid
        moved = True
    c.sort()
    return moved


def kmeans_1d(values, k: int, init: str = "linear", iters: int = 30, seed: int = 0,
              hist: Histogram | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Sorted, distinct centroids (at most k) minimising squared error over ``values``
    (``hist``: their Histogram, when already computed -- a search trying several k reuses it;
    ``weights``: an importance per value, for weighted k-means).

    Centroids that end up with no values are re-seeded by splitting the cluster with the largest
    error and the iterations resume, so the codebook asked for is the codebook used: fewer than
    ``k`` centroids come back only when there are fewer than ``k`` distinct values (bins).
    """
    if init not in INITS:
        raise ValueError(f"unknown centroid init {init!r}; choose one of {', '.join(INITS)}")
    h = Histogram(values, weights=weights) if hist is None else hist
    if h.centers.size == 0:
        return np.zeros(0)
    if h.centers.size <= k:  # few occupied bins: maybe few distinct values, then exact
        distinct = np.unique(np.asarray(values, np.float64))
        if distinct.size <= k:
            return distinct
    c = np.sort(_init(h, k, init, np.random.default_rng(seed)).astype(np.float64))
    c = _lloyd(h, c, iters)
    for _ in range(k):  # each round fills at least one empty centroid
        if not _reseed(h, c):
            break
        c = _lloyd(h, c, iters)
    used = np.bincount(assign(h.centers, c), weights=h.count, minlength=c.size) > 0
    return np.unique(c[used])


def centroids(bits: int, has_zero: bool) -> int:
    """Non-zero centroids for ``bits``: 2**bits, but 255 at 8 bits when the zero needs an entry too, so
    that every index still fits a byte (uint8 indices; runtime compact mode keeps them so)."""
    return (1 << bits) - (1 if has_zero and bits == 8 else 0)


def pack(cents: np.ndarray, idx: np.ndarray, cdtype) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, indices) from sorted non-zero centroids and indices into them (-1 = pruned): the
    codebook gets a 0.0 entry first when anything is pruned; indices are uint8, uint16 past 256 entries."""
    pruned = idx < 0
    if pruned.any():
        codebook = np.concatenate([np.zeros(1), cents]).astype(cdtype)
        indices = np.where(pruned, 0, idx + 1)
    else:
        codebook, indices = cents.astype(cdtype), idx
    return codebook, indices.astype(np.uint16 if codebook.size > 256 else np.uint8)


def quantize(weights, bits: int, init: str = "linear", seed: int = 0, keep_zero: bool = True,
             hist: Histogram | None = None, importance: np.ndarray | None = None):
    """(codebook, indices) for ``weights``; zeros stay exactly zero (codebook entry 0.0).

    The non-zero weights share at most 2**bits centroids; when ``keep_zero`` and the
    tensor has zeros, the codebook also holds 0.0, which pruned positions index. Indices
    are uint8 (at 8 bits the zero takes one of the 256 entries), shaped like ``weights``.
    ``importance`` (weights' shape, >= 0): weighted k-means, e.g. E[x^2] of each weight's input
    feature (converters.hessian.importance), so the centroids fit the weights that matter.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    w = np.asarray(weights).reshape(-1)
    cdtype = w.dtype if w.dtype.kind == "f" else np.dtype(np.float32)
    nz = w != 0
    nonzero = w[nz]
    imp = None if importance is None else np.broadcast_to(importance, np.shape(weights)).reshape(-1)[nz]
    has_zero = nonzero.size < w.size
    cents = (kmeans_1d(nonzero, centroids(bits, has_zero and keep_zero), init=init, seed=seed, hist=hist, weights=imp)
             if nonzero.size else np.zeros(0))
    del nz, imp
    del nonzero
    cents = cents.astype(cdtype)
    cents = np.unique(cents[cents != 0])  # a centroid that rounds to 0 would alias pruned zeros
    if cents.size == 0:
        return np.zeros(1, cdtype), np.zeros(np.shape(weights), np.uint8)
    zero = keep_zero and has_zero
    codebook = np.concatenate([np.zeros(1, cdtype), cents]) if zero else cents
    idx = np.empty(w.size, np.uint16 if codebook.size > 256 else np.uint8)
    c64 = cents.astype(np.float64)
    for start in range(0, w.size, CHUNK):
        c = w[start : start + CHUNK]
        a = assign(c.astype(np.float64), c64)
        if zero:
            a = np.where(c != 0, a + 1, 0)
        idx[start : start + CHUNK] = a
    return codebook, idx.reshape(np.shape(weights))

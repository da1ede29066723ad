"""Entropy-constrained weight sharing (ECVQ: Chou, Lookabaugh & Gray 1989; DeepCABAC's rate-distortion
quantization is the same idea).

Plain weight sharing (converters.quantize) picks the codebook that minimises squared error and only then
Huffman-codes the indices: the bytes are never part of the objective. ECVQ assigns each weight to the
centroid ``j`` minimising

    importance x (w - c_j)^2  +  lam x D0 x bits_j

where ``bits_j`` is the length of j's code in the Huffman code built from the current assignment (plus, in a
sparse layer, the marginal cost of one more stored position, log2(zeros / nonzeros)), ``D0`` is the mean
(importance-weighted) squared error of plain k-means on the layer, and ``lam`` is the *strength*: how many
k-means errors one bit is worth. Assignment, centroid update (weighted means) and code rebuild alternate until
the assignment stops changing. Rare centroids get long codes and lose their weights; a centroid left with none
is dropped (smaller codebook, shorter code table). In a pruned layer the zero is a candidate too, costing no
index and no position: a small weight whose bytes buy little is pruned.

Every step works on a fine histogram (64 bins per centroid, at least 2**12, at most 2**16 of the non-zero values, each with its count,
importance and importance-weighted sum), so a step costs O(bins x k) and the layer is read a fixed number of
times: conversion time stays linear in the weights. All weights of one bin share a centroid. Deterministic (no
random numbers; ties go to the lower index). ``strength = 0`` is plain k-means, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from .defaults import DEFAULT_STRENGTH, MAX_STRENGTH, parse_strength  # noqa: F401 (re-exported, used by callers)
from .quantize import CHUNK, HIST_BINS, quantize

MAX_ITERS = 30
_COST_CHUNK = 1 << 13  # bins per block of the bins x centroids cost matrix (64k x 256 float64 = 8 MB)
ASSIGN = "numba"  # an assignment step: "numba" (converters/fit_kernels.py) or "numpy" (_assign_numpy, the reference)


def _assign_numpy(x, wt, cn, cz, rr, lam, out) -> None:
    """fit_kernels.ecvq_assign in numpy, the cost matrix in blocks of _COST_CHUNK bins: the reference."""
    for s0 in range(0, x.size, _COST_CHUNK):
        xs, ws, ns = x[s0 : s0 + _COST_CHUNK, None], wt[s0 : s0 + _COST_CHUNK, None], cn[s0 : s0 + _COST_CHUNK, None]
        cost = ws * (xs - cz) ** 2 + (lam * ns) * rr
        out[s0 : s0 + _COST_CHUNK] = np.argmin(cost, axis=1)


def _code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (bits) of symbols with these counts; inf for an unused symbol; 0 for a lone one."""
    from dcformat import huffman
    from dcformat.constants import INDEX_CODE_LENGTH

    ln = huffman.code_lengths(np.asarray(counts, np.int64), INDEX_CODE_LENGTH).astype(np.float64)
    if np.count_nonzero(counts) == 1:
        ln[:] = 0.0  # a single-symbol code spends no bits
    ln[np.asarray(counts) <= 0] = np.inf
    return ln


class _Bins:
    """Occupied bins of the non-zero values: raw count, importance, importance-weighted sum, and per value its bin."""

    def __init__(self, values: np.ndarray, imp: np.ndarray | None, bins: int = HIST_BINS):
        self.lo, self.hi = float(values.min()), float(values.max())
        self.scale = bins / ((self.hi - self.lo) or 1.0)
        self.nbins = bins
        n = np.zeros(bins)
        w = np.zeros(bins)
        s = np.zeros(bins)
        for start in range(0, values.size, CHUNK):
            c = values[start : start + CHUNK].astype(np.float64)
            b = self.bin_of(c)
            wt = None if imp is None else imp[start : start + CHUNK]
            n += np.bincount(b, minlength=bins)
            w += np.bincount(b, weights=wt, minlength=bins) if wt is not None else np.bincount(b, minlength=bins)
            s += np.bincount(b, weights=c if wt is None else c * wt, minlength=bins)
        self.occupied = np.flatnonzero(n > 0)
        self.n, self.w = n[self.occupied], w[self.occupied]
        self.x = s[self.occupied] / self.w  # importance-weighted mean of each bin
        self.sum = s[self.occupied]

    def bin_of(self, c: np.ndarray) -> np.ndarray:
        return np.minimum(((c - self.lo) * self.scale).astype(np.int64), self.nbins - 1)


def _importance(importance, shape, nz) -> np.ndarray | None:
    if importance is None:
        return None
    imp = np.broadcast_to(np.asarray(importance, np.float64), shape).reshape(-1)[nz]
    mean = float(imp.mean()) if imp.size else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return None
    return np.maximum(imp, 1e-6 * mean)  # as converters.quantize.Histogram: every value counts a little


def ecvq(weights, bits: int, strength: float, init: str = "linear", seed: int = 0, keep_zero: bool = True,
         importance: np.ndarray | None = None, prune: bool = True, info: dict | None = None):
    """(codebook, indices) like :func:`converters.quantize.quantize`, chosen by entropy-constrained weight sharing.

    ``strength`` (lam above) 0 gives exactly ``quantize``'s result. ``prune``: in a layer that already has zeros,
    weights may also become zero (where their index and position cost more than their error is worth).
    ``info`` (a dict) receives what happened: iterations, centroids used, weights pruned, the estimated coded
    bits and the mean squared error (importance-weighted) of plain k-means and of ECVQ.
    """
    strength = parse_strength(strength) if not isinstance(strength, (int, float)) else float(strength)
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"ECVQ strength must be a number >= 0, got {strength!r}")
    codebook, indices = quantize(weights, bits, init=init, seed=seed, keep_zero=keep_zero, importance=importance)
    if strength == 0:
        return codebook, indices
    w = np.asarray(weights).reshape(-1)
    nz = w != 0
    v = w[nz]
    n, nnz = int(w.size), int(v.size)
    cdtype = codebook.dtype
    zero = bool(keep_zero and nnz < n)
    c0 = codebook.astype(np.float64)
    cents = c0[1:] if zero else c0
    if nnz == 0 or cents.size == 0:
        return codebook, indices
    imp = _importance(importance, np.shape(weights), nz)
    k = cents.size
    h = _Bins(v, imp, bins=min(HIST_BINS, max(1 << 12, 64 * k)))
    a = np.searchsorted((cents[1:] + cents[:-1]) / 2, h.x).astype(np.int64)  # k-means' nearest centroid
    d0 = float(np.dot(h.w, (h.x - cents[a]) ** 2)) / nnz
    if not d0 > 0:  # exact already (few distinct values): nothing to trade
        return codebook, indices
    lam = strength * d0
    allow_zero = zero and prune
    sparse = zero and nnz * 2 <= n  # the layout the encoder will likely pick: positions cost, zeros do not

    def rates(assign):
        """Bits of each choice (centroids 0..k-1, then the zero) under the code built from ``assign``."""
        cnt = np.bincount(assign, weights=h.n, minlength=k + 1).round().astype(np.int64)
        m = int(cnt[:k].sum())  # non-zeros stored
        if sparse:
            ln = _code_lengths(cnt[:k])
            pos = math.log2((n - m) / m) if 0 < m < n else 0.0  # marginal bits of one more stored position
            return np.concatenate([ln + max(pos, 0.0), [0.0]])
        full = cnt.copy()
        full[k] += n - nnz  # the layer's own zeros share the zero symbol
        ln = _code_lengths(full if zero else cnt[:k])
        return np.concatenate([ln[:k], [ln[k] if zero else np.inf]])

    def step(c, r):
        """Best choice of each bin."""
        cz = np.concatenate([c, [0.0]])
        rr = r.copy()
        if not allow_zero:
            rr[k] = np.inf
        out = np.empty(h.x.size, np.int64)
        if ASSIGN == "numba":
            from .fit_kernels import ecvq_assign

            ecvq_assign(h.x, h.w, h.n, cz, rr, lam, out)
        else:
            _assign_numpy(h.x, h.w, h.n, cz, rr, lam, out)
        return out

    def cost_of(c, assign, r):
        cz = np.concatenate([c, [0.0]])
        return float(np.dot(h.w, (h.x - cz[assign]) ** 2) + lam * np.dot(h.n, r[assign]))

    c = cents.copy()
    r = rates(a)
    best = (cost_of(c, a, r), c.copy(), a.copy())
    it = stale = 0
    for it in range(1, MAX_ITERS + 1):
        new = step(c, r)
        wsum = np.bincount(new, weights=h.w, minlength=k + 1)[:k]
        ssum = np.bincount(new, weights=h.sum, minlength=k + 1)[:k]
        c = np.where(wsum > 0, ssum / np.where(wsum > 0, wsum, 1), c)
        r = rates(new)
        j = cost_of(c, new, r)
        changed = not np.array_equal(new, a)
        a = new
        if j < best[0] * (1 - 1e-6):
            best, stale = (j, c.copy(), a.copy()), 0
        else:
            stale += 1
        if not changed or stale >= 3:  # settled, or cycling between codes of equal cost
            break
    _, c, a = best

    # the codebook: used centroids in ascending order, then the layer's indices through its bins
    used = np.flatnonzero(np.bincount(a, weights=h.n, minlength=k + 1)[:k] > 0)
    cvals = c[used].astype(cdtype)
    keep = (cvals != 0) if zero else np.ones(cvals.size, bool)  # one rounding to 0 joins the pruned zeros
    order = np.argsort(cvals[keep], kind="stable")
    kept = used[keep][order]
    base = 1 if zero else 0
    remap = np.zeros(k + 1, np.int64)  # choice -> codebook index (0: the zero, when the layer has one)
    remap[kept] = np.arange(kept.size) + base
    cb = np.concatenate([np.zeros(1, cdtype), cvals[keep][order]]) if zero else cvals[keep][order]
    if cb.size == 0:
        return codebook, indices
    sym = remap[a]  # per occupied bin
    lut = np.zeros(h.nbins, np.int64)
    lut[h.occupied] = sym
    idx = np.zeros(n, np.uint16 if cb.size > 256 else np.uint8)
    for start in range(0, n, CHUNK):
        chunk = w[start : start + CHUNK]
        m = chunk != 0
        out = np.zeros(chunk.size, np.int64)
        out[m] = lut[h.bin_of(chunk[m].astype(np.float64))]
        idx[start : start + CHUNK] = out
    idx = idx.reshape(np.shape(weights))
    if info is not None:
        cz = np.concatenate([c, [0.0]])
        info.update(strength=strength, iterations=it, centroids=int(kept.size), centroids_kmeans=int(k),
                    pruned=int(np.round(np.dot(h.n, a == k))),
                    mse_kmeans=d0, mse=float(np.dot(h.w, (h.x - cz[a]) ** 2)) / nnz)
    return cb, idx

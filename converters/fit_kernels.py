"""Compiled inner loops of the fitting (numba), each the same arithmetic, element by element, as the numpy
code it replaced, which is kept as the reference (the tests check them bit for bit):

* :func:`sweep` -- the column sweep of converters.obs.compensate (reference: obs._sweep_numpy). The numpy
  loop makes ~10 calls per column on a few hundred numbers each: for a 384 x 384 layer ~4,000 calls per
  block, more time than the arithmetic.
* :func:`lloyd` -- Lloyd iterations of 1-D k-means on a histogram (reference: quantize._lloyd_numpy):
  per iteration one pass over the sorted bins instead of a binary search and two bincounts.
* :func:`ecvq_assign` -- an ECVQ assignment step, the cheapest choice of every histogram bin
  (reference: ecvq._assign_numpy): one pass, not a bins x centroids cost matrix built in chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def sweep(w1, u1, d, prune, s, cb, mids, rounding, q, idx, err):  # pragma: no cover - compiled
    """One block of columns: for each group g and column j, each row's weight is pruned (``prune``) or
    rounded to ``s * cb[nearest]`` (``rounding``; else kept), the error divided by ``d[g, j]`` goes to
    ``err`` and is taken off the block's later columns through row j of ``u1`` (OBS). Writes ``q``, ``idx``
    (-1 where pruned; untouched without ``rounding``), ``err``; updates ``w1`` in place."""
    groups, rows, width = w1.shape
    for g in range(groups):
        for j in range(width):
            dj = d[g, j]
            for r in range(rows):
                v = w1[g, r, j]
                if rounding:
                    a = np.searchsorted(mids, v / s[g, r])
                    if prune[g, r, j]:
                        qv = 0.0
                        idx[g, r, j] = -1
                    else:
                        qv = cb[a] * s[g, r]
                        idx[g, r, j] = a
                else:
                    qv = 0.0 if prune[g, r, j] else v
                q[g, r, j] = qv
                e = (v - qv) / dj
                err[g, r, j] = e
                for c in range(j, width):
                    w1[g, r, c] -= e * u1[g, j, c]


@njit(cache=True, nogil=True)
def ecvq_assign(x, wt, cn, cz, rr, lam, out):  # pragma: no cover - compiled
    """For each bin i, the choice c minimising ``wt[i] * (x[i] - cz[c])**2 + (lam * cn[i]) * rr[c]``, the first
    of equal costs (and the first NaN, if any), as np.argmin over the row of costs."""
    for i in range(x.size):
        xi = x[i]
        wi = wt[i]
        li = lam * cn[i]
        best = np.inf
        pick = 0
        for c in range(cz.size):
            dd = xi - cz[c]
            cost = wi * (dd * dd) + li * rr[c]
            if cost < best:
                best = cost
                pick = c
            elif cost != cost:  # NaN: np.argmin returns the first
                pick = c
                break
        out[i] = pick


@njit(cache=True, nogil=True)
def lloyd(centers, count, total, c, iters, atol):  # pragma: no cover - compiled
    """Up to ``iters`` Lloyd steps from the sorted centroids ``c`` over histogram bins (``centers``, their
    ``count`` and ``total``): each bin goes to the nearest centroid (the first above the midpoints below
    it, as np.searchsorted), sums are added in bin order (as np.bincount), an empty centroid stays; stops
    after the step that moved no centroid by more than ``atol``. Returns (centroids, steps done, ok): not ok
    when the midpoints are out of order (a binary search and this walk could then differ: the caller goes on
    in numpy from there)."""
    k = c.size
    c = c.copy()
    cnt = np.zeros(k)
    s = np.zeros(k)
    mids = np.empty(max(k - 1, 0))
    for step in range(iters):
        for j in range(k - 1):
            mids[j] = (c[j + 1] + c[j]) / 2
            if j and not mids[j - 1] <= mids[j]:
                return c, step, False
        cnt[:] = 0.0
        s[:] = 0.0
        a = 0
        prev = -np.inf
        for i in range(centers.size):
            x = centers[i]
            if x < prev:
                a = 0
            prev = x
            while a < k - 1 and mids[a] < x:  # searchsorted(mids, x), side left: the midpoints below x
                a += 1
            cnt[a] += count[i]
            s[a] += total[i]
        done = True
        for j in range(k):
            new = s[j] / cnt[j] if cnt[j] > 0 else c[j]
            if not abs(new - c[j]) <= atol:
                done = False
            c[j] = new
        if done:
            return c, step + 1, True
    return c, iters, True

"""Compiled inner loops of the fitting (numba), each the same arithmetic, element by element, as the numpy
code it replaced, which is kept as the reference (the tests check them bit for bit):

* :func:`sweep` -- the column sweep of converters.obs.compensate (reference: obs._sweep_numpy). The numpy
  loop makes ~10 calls per column on a few hundred numbers each: for a 384 x 384 layer ~4,000 calls per
  block, more time than the arithmetic.
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

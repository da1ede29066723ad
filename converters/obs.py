"""Error-compensating one-shot pruning and weight sharing (OBS / SparseGPT / GPTQ): numpy, the column sweep compiled.

A layer computes ``y = x @ W.T`` (rows of ``W`` are output neurons, columns input features;
a convolution is the same after im2col, columns = in-channels x kernel). With calibration
inputs ``X`` (one row per sample or image position) and ``H = X.T @ X``, the output error
of a changed weight ``Q`` is ``||X (W - Q).T||^2 = sum over rows r of (w_r - q_r) H (w_r - q_r).T``.
Magnitude pruning and nearest-centroid rounding minimise ``||W - Q||`` instead, which
ignores that inputs are correlated and that some features are large.

Optimal Brain Surgeon's update (as GPTQ and SparseGPT apply it, one column at a time):
fixing column ``j`` to ``q_j`` costs ``e = (w_j - q_j) / [H^-1]_jj`` and is compensated
exactly, to second order, by moving the columns not yet fixed:
``W[:, j+1:] -= e [H^-1]_{j, j+1:}``. Processing columns left to right with the upper
Cholesky factor of ``H^-1`` makes each step O(rows x cols); columns are handled in blocks
so the big updates are matrix products (GPTQ's lazy batch updates). SparseGPT picks the
pruned weights per block by ``w^2 / [H^-1]_jj^2`` (the OBS saliency) and zeroes them in
the same sweep, so pruning and rounding are compensated together.

Memory: ``H`` and its inverse factor are cols x cols float64 (a 4096-feature layer: 128 MiB
each); :data:`MAX_COLUMNS` bounds it, wider layers fall back to the diagonal of ``H``
(importance-weighted rounding without compensation).
"""

from __future__ import annotations

import numpy as np

MAX_COLUMNS = 8192  # cols x cols float64 Hessians above this are not formed (512 MiB)
DEFAULT_BLOCK = 128
DEFAULT_DAMP = 0.01  # fraction of the mean diagonal added to H (GPTQ's percdamp)
SWEEP = "numba"  # the column sweep: "numba" (converters/fit_kernels.py) or "numpy" (_sweep_numpy, the reference)


def nearest(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted ``codebook`` for each value (ties go up)."""
    mids = (codebook[1:] + codebook[:-1]) / 2
    return np.searchsorted(mids, values)


STACKED_MAX_COLUMNS = 32  # stacks of matrices this small are factored by one numpy call


def _per_matrix(f, a: np.ndarray) -> np.ndarray:
    """``f`` (np.linalg.cholesky / inv) of a stack: one call per matrix for a large stack of large matrices
    (numpy's stacked call took ~6x the CPU of a loop on 512 128x128 matrices: an LSTM with one H per gate
    row), one stacked call for small matrices (a depthwise convolution's 384 9x9 or 25x25 ones; on 2 cores the
    Cholesky of 384 9x9 took 2.7 ms as a loop and 0.18 ms stacked, the results bit for bit the same)."""
    if a.shape[0] <= 16 or a.shape[-1] <= STACKED_MAX_COLUMNS:
        return f(a)
    return np.stack([f(np.ascontiguousarray(x)) for x in a])


def inverse_factor(h: np.ndarray, damp: float = DEFAULT_DAMP) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor U of (H + damping)^-1, dead-feature mask), for one H (cols x cols)
    or a stack of them (groups x cols x cols, factored at once).

    Features that never occur (zero diagonal) get a unit diagonal: their weights change
    nothing in the output, and the factorisation stays defined.
    """
    h = np.array(h, dtype=np.float64, copy=True)
    single = h.ndim == 2
    h = h[None] if single else h
    n = h.shape[-1]
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    for g in np.flatnonzero(dead.any(axis=1)):
        h[g][dead[g], :] = 0
        h[g][:, dead[g]] = 0
        h[g][dead[g], dead[g]] = 1
    mean = np.einsum("gii->gi", h).mean(axis=1)
    mean = np.where(mean > 0, mean, 1.0)
    flipped = h[:, ::-1, ::-1]  # J H J, J the reversal: if J H J = M M^T then U = J M^-1 J is upper and U^T U = H^-1
    eye = np.eye(n)
    for attempt in range(6):  # raise the damping until H is positive definite (rank-deficient X)
        try:
            m = _per_matrix(np.linalg.cholesky, flipped + eye * (damp * mean * (10 ** attempt))[:, None, None])
            break
        except np.linalg.LinAlgError:
            continue
    else:  # pragma: no cover - h + I * 1e3 * mean(diag) is positive definite for any PSD h
        raise np.linalg.LinAlgError("the input second moment is not positive semi-definite")
    u = _per_matrix(np.linalg.inv, m)[:, ::-1, ::-1]  # GPTQ's factor: one Cholesky and one triangular inverse
    return (u[0], dead[0]) if single else (u, dead)


def compensate(w: np.ndarray, h: np.ndarray, codebook: np.ndarray | None = None, *, scales: np.ndarray | None = None,
               sparsity: float = 0.0, keep: np.ndarray | None = None, block: int = DEFAULT_BLOCK,
               damp: float = DEFAULT_DAMP) -> tuple[np.ndarray, np.ndarray | None]:
    """Prune and/or round ``w`` (rows x cols) minimising ``||X (W - Q).T||`` for ``H = X.T X``.

    ``w`` may also be a stack (groups x rows x cols) with one H per group (groups x cols x cols):
    a grouped or depthwise convolution is done in one sweep, not one per group.
    ``codebook``: sorted values the kept weights are rounded to (None: no rounding, only
    pruning); ``scales``: a per-row factor, weight ``r`` is ``scales[r] * codebook[index]``.
    ``sparsity``: fraction of each block's weights pruned (per group), chosen by OBS saliency as
    the sweep goes (SparseGPT); ``keep``: a fixed mask instead (False = pruned), e.g. from a
    model pruned elsewhere. Returns (Q, indices or None), Q in float32, pruned weights
    exactly 0 and never counted as a codebook entry (indices there are -1).
    """
    w = np.asarray(w, dtype=np.float64)
    single = w.ndim == 2
    w = w[None] if single else w
    h = np.asarray(h)
    h = h[None] if h.ndim == 2 else h
    groups, rows, cols = w.shape
    if h.shape != (groups, cols, cols):
        raise ValueError(f"H is {h.shape[1:] if single else h.shape}, the layer has {cols} input features")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity {sparsity} is not in [0, 1)")
    cb = None if codebook is None else np.asarray(codebook, np.float64)
    if cb is not None and (cb.ndim != 1 or cb.size == 0 or np.any(np.diff(cb) < 0)):
        raise ValueError("the codebook must be a sorted, non-empty 1-D array")
    s = np.ones((groups, rows)) if scales is None else np.asarray(scales, np.float64).reshape(groups, rows)
    s = np.where(s == 0, 1.0, s)
    u, dead = inverse_factor(h, damp)
    work = w.copy()
    work[np.broadcast_to(dead[:, None, :], work.shape)] = 0
    q = np.zeros_like(work)
    idx = None if cb is None else np.full(work.shape, -1, np.int64)
    fixed_mask = None if keep is None else np.asarray(keep, bool).reshape(work.shape)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = work[:, :, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        d = np.einsum("gii->gi", u1)  # groups x block
        if fixed_mask is not None:
            prune = ~fixed_mask[:, :, i1:i2]
        elif sparsity:
            saliency = (w1 ** 2 / d[:, None, :] ** 2).reshape(groups, -1)
            k = int(saliency.shape[1] * sparsity)
            prune = np.zeros(saliency.shape, bool)
            if k:
                order = np.argsort(saliency, axis=1, kind="stable")[:, :k]
                np.put_along_axis(prune, order, True, axis=1)
            prune = prune.reshape(w1.shape)
        else:
            prune = np.zeros(w1.shape, bool)
        prune |= dead[:, None, i1:i2]
        if SWEEP == "numba":
            from .fit_kernels import sweep

            qb = np.empty_like(w1)
            ib = np.empty(w1.shape, np.int64)
            mids = np.zeros(0) if cb is None else (cb[1:] + cb[:-1]) / 2  # as nearest()
            sweep(w1, np.ascontiguousarray(u1), np.ascontiguousarray(d), np.ascontiguousarray(prune), s,
                  np.zeros(1) if cb is None else cb, mids, cb is not None, qb, ib, err)
            q[:, :, i1:i2] = qb
            if idx is not None:
                idx[:, :, i1:i2] = ib
        else:
            _sweep_numpy(w1, u1, d, prune, s, cb, q, idx, err, i1)
        if i2 < cols:
            work[:, :, i2:] -= np.matmul(err, u[:, i1:i2, i2:])
    q = q.astype(np.float32)
    if single:
        return q[0], None if idx is None else idx[0]
    return q, idx


def _sweep_numpy(w1, u1, d, prune, s, cb, q, idx, err, i1) -> None:
    """The column sweep of one block in numpy, a few calls per column: the reference the compiled sweep
    (converters/fit_kernels.py) is checked against."""
    for j in range(w1.shape[2]):
        col = w1[:, :, j]
        if cb is None:
            qc = np.where(prune[:, :, j], 0.0, col)
        else:
            a = nearest(col / s, cb)
            qc = np.where(prune[:, :, j], 0.0, cb[a] * s)
            idx[:, :, i1 + j] = np.where(prune[:, :, j], -1, a)
        q[:, :, i1 + j] = qc
        e = (col - qc) / d[:, j][:, None]
        w1[:, :, j:] -= e[:, :, None] * u1[:, None, j, j:]
        err[:, :, j] = e


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """``||X (W - Q).T||^2 / ||X W.T||^2`` from ``H = X.T X`` (relative squared output error)."""
    d = np.asarray(w, np.float64) - np.asarray(q, np.float64)
    w = np.asarray(w, np.float64)
    num = float(np.einsum("ij,jk,ik->", d, h, d))
    den = float(np.einsum("ij,jk,ik->", w, h, w))
    return num / den if den else 0.0


__all__ = ["compensate", "inverse_factor", "nearest", "output_error", "MAX_COLUMNS"]

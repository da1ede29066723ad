"""Weight sharing with per-channel scales: one codebook per tensor, one scale per output channel.

A BN-folded or depthwise convolution has output channels whose ranges differ by an order of
magnitude or more (PP-OCRv4 det: median max/min of the channels' max-abs 16x), so one codebook
for the whole tensor spends its entries on the wide channels and rounds the narrow ones to
zero. Here every channel ``c`` (along ``axis``: the output channel -- axis 0 of a Conv filter and
of Gemm's B with transB, axis 1 of MatMul's B and of Gemm's B without transB, the row of an
embedding table) is divided by its scale ``s[c]``, the normalised values share one k-means
codebook, and the decoder computes ``W[c, ...] = s[c] * codebook[index]`` (format v1.2
per-channel scales; pruned weights stay exactly 0).

So that the objective stays the output error, the k-means importance of a normalised value is
its weight's importance times ``s[c]**2`` (an error ``d`` on the normalised value is ``s[c] * d``
on the weight). With calibration inputs (converters/hessian.Layer), indices are chosen by the
error-compensating sweep of converters/obs.py rounding to ``s[c] * codebook`` and, with
``method="lsq"``, each channel's scale is then refitted by least squares against the layer's
input second moment: ``s[c] = <w_c, q_c>_H / <q_c, q_c>_H`` minimises ``||X (w_c - s q_c)^T||``
for the chosen indices ``q_c`` (it never raises a channel's output error above the first
scale's, which is one feasible choice). ``tools/bench_perchannel.py`` compares the methods on
PP-OCR; numpy only.
"""

from __future__ import annotations

import numpy as np

from .quantize import assign, centroids, kmeans_1d, pack

SCALE_METHODS = ("maxabs", "rms", "lsq")
DEFAULT_METHOD = "lsq"  # tools/bench_perchannel.py on PP-OCRv4 det: see BENCHMARKS.md
SCALE_BYTES = 4  # a float32 scale per channel


def estimate_bytes(n: int, sparsity: float, bits: int, channels: int) -> float:
    """converters.budget.estimate_bytes of the tensor plus its scales."""
    from .budget import estimate_bytes as plain

    return plain(n, sparsity, bits) + SCALE_BYTES * channels


def _moved(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` as channels x rest (float64)."""
    w = np.asarray(w, np.float64)
    return np.moveaxis(w, axis % w.ndim, 0).reshape(w.shape[axis % w.ndim], -1)


def initial_scales(m: np.ndarray, method: str) -> np.ndarray:
    """Per row of ``m`` (channels x rest): the largest |w| ("maxabs", and the start of "lsq") or the
    root mean square of the non-zero weights times 3 ("rms": the tails are clipped to the codebook's
    range instead of stretching it). A channel of zeros gets 1."""
    if method not in SCALE_METHODS:
        raise ValueError(f"unknown scale method {method!r}; choose one of {', '.join(SCALE_METHODS)}")
    if method == "rms":
        nz = np.maximum((m != 0).sum(axis=1), 1)
        s = 3.0 * np.sqrt((m * m).sum(axis=1) / nz)
    else:
        s = np.abs(m).max(axis=1) if m.size else np.zeros(m.shape[0])
    return np.where(s > 0, s, 1.0)


def _codebook(normalised: np.ndarray, imp: np.ndarray | None, bits: int, zero: bool, init: str, seed: int,
              cdtype) -> np.ndarray:
    cents = kmeans_1d(normalised, centroids(bits, zero), init=init, seed=seed, weights=imp) if normalised.size \
        else np.zeros(0)
    cents = cents.astype(cdtype)
    return np.unique(cents[cents != 0]).astype(np.float64)


def share(w: np.ndarray, axis: int, sparsity: float, bits: int, *, layer=None, method: str = DEFAULT_METHOD,
          init: str = "linear", seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codebook, indices, scales) of ``w`` pruned to ``sparsity`` and shared to ``2**bits`` centroids
    with one scale per channel along ``axis`` (``scales`` float32, one per ``w.shape[axis]``).

    ``layer`` (a converters.hessian.Layer with H): importance-weighted codebook, OBS/GPTQ
    compensation and (``lsq``) scales refitted against H; its rows must be the channels along
    ``axis`` (converters.perchannel.layer_axis). Without it: magnitude pruning, nearest rounding,
    scales refitted by plain least squares. Weights already zero stay zero; with ``sparsity`` at or
    below their share the existing zeros are the mask.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if method not in SCALE_METHODS:
        raise ValueError(f"unknown scale method {method!r}; choose one of {', '.join(SCALE_METHODS)}")
    w = np.asarray(w)
    cdtype = np.dtype(np.float64) if w.dtype == np.float64 else np.dtype(np.float32)  # codebook entries
    if layer is not None:
        if layer_axis(layer, w.ndim) != axis % w.ndim:
            raise ValueError(f"{layer.weight}: channel axis {axis} is not the layer's output axis")
        return _share_compensated(w, layer, sparsity, bits, method, init, seed, cdtype)
    m = _moved(w, axis)
    nz = m != 0
    zero_share = 1.0 - float(nz.mean()) if m.size else 0.0
    keep = nz.copy()
    if sparsity > zero_share:
        from .prune import magnitude_mask

        keep &= magnitude_mask(m, sparsity)
    s = initial_scales(np.where(keep, m, 0.0), method)
    normalised = m / s[:, None]
    imp = np.broadcast_to((s * s)[:, None], m.shape)  # error on the weight = s x error on the normalised value
    zero = not keep.all()
    cents = _codebook(normalised[keep], imp[keep], bits, zero, init, seed, cdtype)
    if cents.size == 0:
        return np.zeros(1, cdtype), np.zeros(w.shape, np.uint8), s.astype(np.float32)
    idx = np.where(keep, assign(normalised, cents), -1)
    if method == "lsq":
        q = np.where(keep, cents[np.maximum(idx, 0)], 0.0)
        num, den = (m * q).sum(axis=1), (q * q).sum(axis=1)
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), s)
    codebook, indices = pack(cents, idx, cdtype)
    indices = np.moveaxis(indices.reshape(np.moveaxis(w, axis % w.ndim, 0).shape), 0, axis % w.ndim)
    codebook, s = _half(codebook, s)
    return codebook, np.ascontiguousarray(indices), s


def layer_axis(layer, ndim: int) -> int:
    """The weight axis that a Layer's rows (converters.hessian.to_rows) are: its output channels."""
    if layer.op == "RNN":  # [rows, features] or [directions, rows, features]
        return max(ndim - 2, 0)
    if layer.op == "Conv" or (layer.op == "Gemm" and layer.trans_b):
        return 0
    return 1 if ndim >= 2 else 0


def _share_compensated(w, layer, sparsity, bits, method, init, seed, cdtype):
    from . import hessian, obs
    from .oneshot import damping

    if not layer.h:
        raise ValueError(f"{layer.weight}: no calibration inputs were collected for this layer")
    rows = np.stack(hessian.to_rows(w, layer))  # groups x rows x cols: rows are the output channels
    h = np.stack(layer.h)
    g, r, c = rows.shape
    nz = rows != 0
    zero_share = 1.0 - float(nz.mean()) if rows.size else 0.0
    diag = np.einsum("gii->gi", h)  # importance of each input feature
    imp_w = np.broadcast_to(diag[:, None, :], rows.shape)
    fixed = sparsity <= zero_share
    survive = nz.copy()
    if not fixed:  # the codebook is for the weights that will stay: largest OBS saliency w^2 H_jj
        sal = (rows ** 2 * imp_w).reshape(-1)
        k = int(round(sal.size * sparsity))
        if k:
            flat = survive.reshape(-1)
            flat[np.argsort(sal, kind="stable")[:k]] = False
    s = initial_scales(np.where(survive, rows, 0.0).reshape(g * r, c), method).reshape(g, r)
    normalised = rows / s[:, :, None]
    imp = imp_w * (s * s)[:, :, None]
    pruning = not fixed or zero_share > 0
    cents = _codebook(normalised[survive], imp[survive], bits, pruning, init, seed, cdtype)
    if cents.size == 0:
        return np.zeros(1, cdtype), np.zeros(w.shape, np.uint8), np.ones(w.shape[layer_axis(layer, w.ndim)], np.float32)
    damp = damping(h.shape[-1], layer.rows_seen)
    _, idx = obs.compensate(rows, h, cents, scales=s, sparsity=0.0 if fixed else sparsity,
                            keep=nz if fixed else None, damp=damp)
    if method == "lsq":  # refit each channel's scale for its indices: least output error on the calibration set
        q = np.where(idx >= 0, cents[np.maximum(idx, 0)], 0.0)
        qh = np.einsum("grc,gcd->grd", q, h)
        num = np.einsum("grd,grd->gr", qh, rows)
        den = np.einsum("grd,grd->gr", qh, q)
        s = np.where(den > 0, num / np.where(den > 0, den, 1.0), s)
    indices = hessian.from_rows(list(idx), np.zeros(w.shape, np.int64), layer)
    codebook, indices = pack(cents, indices, cdtype)
    codebook, s = _half(codebook, s.reshape(-1))
    return codebook, indices, s


HALF = True  # codebook entries and scales rounded to float16 values, stored as float16 (storage())


def _half(codebook: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, float32 scales) with both exactly representable in float16, where that keeps every
    scale finite and non-zero: the scales are first multiplied by a power of two that brings the largest
    near 1 and the codebook divided by it (the products do not change), then both are rounded to float16
    (relative error <= 2**-11, measured with the rest by the budget). Otherwise float32 scales."""
    s = np.asarray(s, np.float64)
    if not HALF or not s.size or codebook.dtype != np.float32 or not np.all(np.isfinite(s)) or np.any(s == 0):
        return codebook, s.astype(np.float32)
    shift = 2.0 ** -np.round(np.log2(np.abs(s).max()))
    s16 = (s * shift).astype(np.float16)
    cb16 = (codebook.astype(np.float64) / shift).astype(np.float16)
    if not (np.all(np.isfinite(s16)) and np.all(s16 != 0) and np.all(np.isfinite(cb16))
            and np.array_equal(cb16 != 0, codebook != 0) and np.unique(cb16).size == cb16.size):
        return codebook, s.astype(np.float32)
    return cb16.astype(np.float32), s16.astype(np.float32)


def storage(codebook: np.ndarray, scales: np.ndarray) -> dict:
    """encode_codebook's ``codebook_dtype`` / ``scale_dtype``: float16 where every entry and scale is a
    float16 value already (share() makes them so), which stores them exactly in half the bytes."""
    cb, sc = np.asarray(codebook), np.asarray(scales)
    if cb.dtype != np.float32 or sc.dtype != np.float32:
        return {}
    exact = lambda a: bool(np.all(np.isfinite(a))) and np.array_equal(a.astype(np.float16).astype(np.float32), a)  # noqa: E731
    return {"codebook_dtype": "float16", "scale_dtype": "float16"} if exact(cb) and exact(sc) else {}


def decode(codebook: np.ndarray, indices: np.ndarray, scales: np.ndarray, axis: int, dtype) -> np.ndarray:
    """What a reader gives back: ``scales[c] * codebook[index]`` in float32 (then ``dtype``)."""
    vals = np.asarray(codebook, np.float32)[indices]
    shape = [1] * vals.ndim
    shape[axis % vals.ndim] = -1
    return (vals * np.asarray(scales, np.float32).reshape(shape)).astype(dtype)


__all__ = ["share", "decode", "storage", "estimate_bytes", "initial_scales", "layer_axis", "SCALE_METHODS", "DEFAULT_METHOD"]

"""Deep Compression of a model's weights: pruning, k-means weight sharing, Huffman-coded storage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import dcformat

from .prune import magnitude_mask, threshold_mask
from .quantize import CHUNK, quantize
from .settings import LayerSetting

DEFAULT_BITS = {"conv": 8, "fc": 5}  # as in the paper
DEFAULT_SPARSITY = {"conv": 0.3, "fc": 0.5}  # cautious without retraining; --sparsity 0 keeps a pruned model as is
DEFAULT_MIN_SIZE = 512


@dataclass
class Settings:
    sparsity: LayerSetting = field(default_factory=lambda: LayerSetting("--sparsity"))
    threshold_std: LayerSetting = field(default_factory=lambda: LayerSetting("--threshold-std"))
    threshold: LayerSetting = field(default_factory=lambda: LayerSetting("--threshold"))
    prune_neurons: LayerSetting = field(default_factory=lambda: LayerSetting("--prune-neurons"))
    bits: LayerSetting = field(default_factory=lambda: LayerSetting("--bits"))
    init: str = "linear"
    min_size: int = DEFAULT_MIN_SIZE
    lossless: bool = False
    seed: int = 0

    def all(self) -> list[LayerSetting]:
        return [self.sparsity, self.threshold_std, self.threshold, self.prune_neurons, self.bits]

    def describe(self) -> dict:
        d = {s.option.lstrip("-").replace("-", "_"): s.describe() for s in self.all()}
        d.update(init=self.init, min_size=self.min_size, lossless=self.lossless, seed=self.seed,
                 default_bits=DEFAULT_BITS, default_sparsity=DEFAULT_SPARSITY)
        return d


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def neuron_mask(w: np.ndarray, fraction: float, axis: int) -> np.ndarray:
    """Keep-mask zeroing the ``fraction`` of output neurons/filters (along ``axis``) of smallest L2 norm."""
    axis = axis % w.ndim
    moved = np.moveaxis(np.asarray(w, np.float32), axis, 0).reshape(w.shape[axis], -1)
    norms = np.sqrt(np.einsum("ij,ij->i", moved, moved))
    k = int(round(fraction * norms.size))
    keep_rows = np.ones(norms.size, bool)
    if k:
        keep_rows[np.argsort(norms, kind="stable")[:k]] = False
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.broadcast_to(keep_rows.reshape(shape), w.shape)


def choose_layout(codebook, indices, dtype: str) -> tuple[str, int | None]:
    """(encoding, gap_bits) that ``dcformat.encode_codebook`` picks by itself for these arguments.

    Worked out in chunks of the indices: the encoder's own estimate holds about 18 bytes per
    element of the layer at once (positions, gaps and their remainders as int64), which for a
    large layer is more than the whole model. Same size model, same tie-breaking.
    """
    from dcformat import streams
    from dcformat.constants import (DEFAULT_LANE_SIZE, DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_RAW, ITEMSIZE,
                                    MAX_CODEBOOK, MAX_GAP_BITS, MIN_GAP_BITS, UINT_OF_SIZE)
    from dcformat.records import section_length

    lane = DEFAULT_LANE_SIZE
    cbd = "float16" if dtype == "float16" else "float32"
    cb = np.asarray(codebook, dtype=np.float64).reshape(-1).astype(DTYPES[cbd])
    cbt = cb.astype(DTYPES[dtype])
    is_zero = cbt.view(UINT_OF_SIZE[cbt.dtype.itemsize]) == 0  # +0.0 entries become the sparse zero symbol
    flat = np.asarray(indices).reshape(-1)
    n = flat.size
    bits = range(MIN_GAP_BITS, MAX_GAP_BITS + 1)
    counts = np.zeros(cb.size, np.int64)
    ghist = {b: np.zeros(1 << b, np.int64) for b in bits}
    nfill = dict.fromkeys(bits, 0)
    nnz, last = 0, -1
    for start in range(0, n, CHUNK):
        c = flat[start : start + CHUNK]
        counts += np.bincount(c, minlength=cb.size)
        pos = np.flatnonzero(~is_zero[c]) + start
        if pos.size:
            gaps = np.diff(pos, prepend=last) - 1
            last, nnz = int(pos[-1]), nnz + pos.size
            for b in bits:
                ghist[b] += np.bincount(gaps & ((1 << b) - 1), minlength=1 << b)
                nfill[b] += int((gaps >> b).sum())
    k = int(np.count_nonzero(~is_zero))
    nz_counts = counts[~is_zero]

    def sparse_size(b):
        g = ghist[b].copy()
        g[(1 << b) - 1] += nfill[b]
        ih = np.zeros(k + 1, np.int64)
        ih[1:] = nz_counts
        ih[0] += nfill[b]
        m = nnz + nfill[b]
        return section_length({"codebook": k * ITEMSIZE[cbd], "lane_bases": 8 * streams.num_lanes(m, lane),
                               "gaps": streams.estimate_stream_bytes(g, lane),
                               "indices": streams.estimate_stream_bytes(ih, lane)})

    sizes = {b: sparse_size(b) for b in bits}
    gap_bits = min(sizes, key=lambda b: (sizes[b], b))
    est = {ENC_RAW: n * ITEMSIZE[dtype],
           ENC_CB_DENSE: section_length({"codebook": cb.size * ITEMSIZE[cbd],
                                         "indices": streams.estimate_stream_bytes(counts, lane)}),
           ENC_CB_SPARSE: sizes[gap_bits]}
    if cb.size > MAX_CODEBOOK:
        del est[ENC_CB_DENSE]
    if k > MAX_CODEBOOK:
        del est[ENC_CB_SPARSE]
    best = min(est, key=lambda e: (est[e], e))
    return best, (gap_bits if best == ENC_CB_SPARSE else None)


def compress_tensor(name: str, w: np.ndarray, role: str, axis: int, s: Settings) -> tuple[dcformat.EncodedTensor, dict]:
    """Prune, share and encode one tensor; returns the encoded tensor and its report row."""
    t0 = time.perf_counter()
    params = int(w.size)
    nz_before = int(np.count_nonzero(w))
    compressible = role in ("conv", "fc") and _is_float(w) and params >= max(s.min_size, 1)
    finite = not compressible or s.lossless or bool(np.isfinite(w).all())  # NaN/inf: no magnitude, no k-means
    row = {"name": name, "shape": list(w.shape), "dtype": str(w.dtype), "params": params, "role": role if compressible else "other",
           "sparsity_before": 1 - nz_before / params if params else 0.0}
    if s.lossless or not compressible or not finite:
        enc = dcformat.encode(name, w)
        row.update(action="lossless" if s.lossless and compressible else "kept" if finite else "kept (not finite)",
                   bits=None)
    else:
        shape, dtype = w.shape, dcformat.constants.dtype_name(w.dtype)
        keep = w != 0
        target = s.sparsity.get(name, DEFAULT_SPARSITY[role])
        if target:
            keep &= magnitude_mask(w, target)
        q = s.threshold_std.get(name)
        if q:
            keep &= threshold_mask(w, q * float(np.std(w.astype(np.float32))))
        t = s.threshold.get(name)
        if t:
            keep &= threshold_mask(w, t)
        f = s.prune_neurons.get(name)
        if f:
            keep &= neuron_mask(w, f, axis)
        pruned = np.where(keep, w, np.zeros((), w.dtype))
        del keep, w  # compress() hands over its only reference: the layer's float copy goes now
        b = s.bits.get(name, DEFAULT_BITS[role])
        codebook, indices = quantize(pruned, b, init=s.init, seed=s.seed)
        del pruned
        encoding, gap_bits = choose_layout(codebook, indices, dtype) if indices.size else (None, None)
        enc = dcformat.encode_codebook(name, codebook, indices, shape, dtype, encoding=encoding, gap_bits=gap_bits)
        del indices
        row.update(action="pruned+shared", bits=b, target_sparsity=target)
    row.update(
        encoding=enc.encoding, nonzeros=enc.info.nonzeros,
        sparsity=1 - enc.info.nonzeros / params if params else 0.0,
        codebook_size=enc.info.codebook_size, gap_bits=enc.info.gap_bits, bytes=enc.nbytes,
        ratio=(params * 4 / enc.nbytes) if enc.nbytes else None, seconds=time.perf_counter() - t0,
    )
    return enc, row


def _take(weights: dict, name: str) -> np.ndarray:
    """The array, leaving None in the dict: compress_tensor then holds the only reference and frees it early."""
    w, weights[name] = weights[name], None
    return w


def compress(source, settings: Settings, progress=None):
    """Compress every weight of a Source; returns (encoded tensors, rows) in the source's order."""
    tensors, rows = [], []
    names = list(source.weights)
    for i, name in enumerate(names):
        enc, row = compress_tensor(name, _take(source.weights, name), source.roles.get(name, "other"),
                                   source.out_axes.get(name, 0), settings)
        tensors.append(enc)
        rows.append(row)
        if progress:
            progress(i + 1, len(names), name)
    return tensors, rows

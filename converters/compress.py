"""Deep Compression of a model's weights: pruning, k-means weight sharing, Huffman-coded storage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import dcformat

from .prune import magnitude_mask, threshold_mask
from .quantize import quantize
from .settings import LayerSetting

DEFAULT_BITS = {"conv": 8, "fc": 5}  # as in the paper
DEFAULT_SPARSITY = {"conv": 0.3, "fc": 0.5}  # cautious without retraining; --sparsity 0 keeps a pruned model as is
DEFAULT_MIN_SIZE = 1024


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


def compress_tensor(name: str, w: np.ndarray, role: str, axis: int, s: Settings) -> tuple[dcformat.EncodedTensor, dict]:
    """Prune, share and encode one tensor; returns the encoded tensor and its report row."""
    t0 = time.perf_counter()
    params = int(w.size)
    nz_before = int(np.count_nonzero(w))
    compressible = role in ("conv", "fc") and _is_float(w) and params >= s.min_size
    row = {"name": name, "shape": list(w.shape), "dtype": str(w.dtype), "params": params, "role": role if compressible else "other",
           "sparsity_before": 1 - nz_before / params if params else 0.0}
    if s.lossless or not compressible:
        enc = dcformat.encode(name, w)
        row.update(action="lossless" if s.lossless and compressible else "kept", bits=None)
    else:
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
        del keep
        b = s.bits.get(name, DEFAULT_BITS[role])
        codebook, indices = quantize(pruned, b, init=s.init, seed=s.seed)
        del pruned
        dtype = dcformat.constants.dtype_name(w.dtype)
        enc = dcformat.encode_codebook(name, codebook, indices, w.shape, dtype)
        row.update(action="pruned+shared", bits=b, target_sparsity=target)
    row.update(
        encoding=enc.encoding, nonzeros=enc.info.nonzeros,
        sparsity=1 - enc.info.nonzeros / params if params else 0.0,
        codebook_size=enc.info.codebook_size, gap_bits=enc.info.gap_bits, bytes=enc.nbytes,
        ratio=(params * 4 / enc.nbytes) if enc.nbytes else None, seconds=time.perf_counter() - t0,
    )
    return enc, row


def compress(source, settings: Settings, progress=None):
    """Compress every weight of a Source; returns (encoded tensors, rows) in the source's order."""
    tensors, rows = [], []
    names = list(source.weights)
    for i, name in enumerate(names):
        w = source.weights[name]
        enc, row = compress_tensor(name, w, source.roles.get(name, "other"), source.out_axes.get(name, 0), settings)
        source.weights[name] = None  # free the float copy as we go
        tensors.append(enc)
        rows.append(row)
        if progress:
            progress(i + 1, len(names), name)
    return tensors, rows

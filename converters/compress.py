"""Deep Compression of a model's weights: pruning, k-means weight sharing, Huffman-coded storage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import dcformat
from dcformat.constants import dtype_name as _dtype_name

from . import ecvq as _ecvq
from .defaults import DEFAULT_BITS, DEFAULT_MIN_SIZE, DEFAULT_SPARSITY  # noqa: F401 (re-exported)
from .prune import magnitude_mask, threshold_mask
from .quantize import CHUNK
from .roles import COMPRESSIBLE
from .settings import LayerSetting


@dataclass
class Settings:
    sparsity: LayerSetting = field(default_factory=lambda: LayerSetting("--sparsity"))
    threshold_std: LayerSetting = field(default_factory=lambda: LayerSetting("--threshold-std"))
    threshold: LayerSetting = field(default_factory=lambda: LayerSetting("--threshold"))
    prune_neurons: LayerSetting = field(default_factory=lambda: LayerSetting("--prune-neurons"))
    bits: LayerSetting = field(default_factory=lambda: LayerSetting("--bits"))
    ecvq: LayerSetting = field(default_factory=lambda: LayerSetting("--ecvq", _ecvq.DEFAULT_STRENGTH))
    init: str = "linear"
    min_size: int = DEFAULT_MIN_SIZE
    lossless: bool = False
    seed: int = 0
    plan: dict | None = None  # name -> {"sparsity", "bits", "scale_axis"} or {"mantissa"} (float rounding) chosen by
    # the budget search (others stay raw)
    reasons: dict = field(default_factory=dict)  # name -> why the search left it raw
    roles: list = field(default_factory=list)  # --role overrides: (pattern, role), first match wins
    layers: dict = field(default_factory=dict)  # name -> converters.hessian.Layer: share error-compensated
    compensate: bool = True  # with a graph and calibration inputs, collect the layers' H for that
    channel_scales: str = "auto"  # per-channel scales: "auto" (the budget search picks), "on", "off"
    sequential: bool = False  # the search fits its plan's layers in order (converters.sequential)
    graph_opt: str = "auto"  # ONNX Runtime's basic graph optimisations at conversion (converters.graphopt.MODES)

    def all(self) -> list[LayerSetting]:
        return [self.sparsity, self.threshold_std, self.threshold, self.prune_neurons, self.bits, self.ecvq]

    def describe(self) -> dict:
        d = {s.option.lstrip("-").replace("-", "_"): s.describe() for s in self.all()}
        d.update(init=self.init, min_size=self.min_size, lossless=self.lossless, seed=self.seed,
                 default_bits=DEFAULT_BITS, default_sparsity=DEFAULT_SPARSITY)
        d["compensate"] = self.compensate
        d["channel_scales"] = self.channel_scales
        d["sequential"] = self.sequential
        d["graph_opt"] = self.graph_opt
        if self.roles:
            d["role"] = dict(self.roles)
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


# float16 holds a float32 codebook's centroids to a relative 2^-11 (half an ulp) when each is 0 or of magnitude in
# [2^-14, 65504]: an error some 10x below the sharing's own at 8 bits, for half the codebook's bytes.
FP16_MIN_NORMAL, FP16_MAX = 2.0 ** -14, 65504.0


def codebook_dtype(codebook, dtype: str) -> str:
    """The dtype the centroids of a ``dtype`` tensor are stored in: float16 for float32 tensors whose centroids
    are all 0 or within float16's normal range (LeNet-5 at 3 bits: 82 bytes fewer; shared biases at 5 bits: 64
    bytes fewer per tensor; tools/bench_ecvq.py), else float16 for float16 tensors and float32 otherwise."""
    if dtype == "float16":
        return "float16"
    c = np.abs(np.asarray(codebook, np.float64).reshape(-1))
    ok = dtype == "float32" and np.isfinite(c).all() and bool(((c == 0) | ((c >= FP16_MIN_NORMAL) & (c <= FP16_MAX))).all())
    return "float16" if ok else "float32"


def choose_layout(codebook, indices, dtype: str, cbd: str | None = None) -> tuple[str, int | None]:
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
    cbd = cbd or ("float16" if dtype == "float16" else "float32")
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


def pruned_dtype(dtype: str):
    from dcformat.constants import DTYPES

    return DTYPES[dtype]


def _raw_reason(name, w, role, s: Settings, finite: bool) -> str:
    """Why a tensor is stored as it is (the summary says it)."""
    if s.lossless:
        return "--lossless"
    if not finite:
        return "not finite (NaN/inf)"
    if s.plan is not None and name in s.reasons:
        return s.reasons[name]
    if not _is_float(w):
        return f"not float ({w.dtype})"
    if w.size < max(s.min_size, 1):
        return f"small (< --min-size {s.min_size})"
    if role not in COMPRESSIBLE:
        return f"role {role}: stored exactly (--role NAME=fc to compress it)"
    return "kept"


def compress_tensor(name: str, w: np.ndarray, role: str, axis: int, s: Settings,
                    keep_recon: bool = False) -> tuple[dcformat.EncodedTensor, dict, np.ndarray | None]:
    """Prune, share and encode one tensor; returns the encoded tensor, its report row and (with
    ``keep_recon``) the array the decoder will give back."""
    t0 = time.perf_counter()
    params = int(w.size)
    nz_before = int(np.count_nonzero(w))
    if s.plan is not None and not s.lossless:
        compressible = s.plan.get(name) is not None
    else:
        compressible = role in COMPRESSIBLE and _is_float(w) and params >= max(s.min_size, 1)
    finite = not compressible or s.lossless or bool(np.isfinite(w).all())  # NaN/inf: no magnitude, no k-means
    row = {"name": name, "shape": list(w.shape), "dtype": str(w.dtype), "params": params,
           "role": role,
           "sparsity_before": 1 - nz_before / params if params else 0.0, "reason": None}
    recon = None
    rounded = (s.plan or {}).get(name, None) if compressible and finite and not s.lossless else None
    if rounded is not None and rounded.get("mantissa") is not None:  # float rounding (converters.mantissa)
        from .mantissa import round_mantissa

        recon = round_mantissa(w, rounded["mantissa"])
        del w
        enc = dcformat.encode(name, recon)
        row.update(action="rounded", bits=None, mantissa=rounded["mantissa"],
                   reason=f"error budget: 8-bit sharing disturbed the outputs too much; kept as floats rounded to "
                          f"{rounded['mantissa']} mantissa bits")
    elif s.lossless or not compressible or not finite:
        enc = dcformat.encode(name, w)
        recon = w
        row.update(action="lossless" if s.lossless and compressible else "kept" if finite else "kept (not finite)",
                   bits=None, reason=_raw_reason(name, w, role, s, finite))
    else:
        shape, dtype = w.shape, _dtype_name(w.dtype)
        chosen = s.plan.get(name) if s.plan is not None else None
        target = chosen["sparsity"] if chosen else s.sparsity.get(name, DEFAULT_SPARSITY[role])
        b = chosen["bits"] if chosen else s.bits.get(name, DEFAULT_BITS[role])
        q, t, f = s.threshold_std.get(name), s.threshold.get(name), s.prune_neurons.get(name)
        layer = s.layers.get(name) if not (q or t or f) else None  # thresholds and neurons: plain masks
        if chosen:
            scale_axis = chosen.get("scale_axis")
        elif s.channel_scales == "on" and not (q or t or f):
            from .budget import channel_axis

            scale_axis = channel_axis(w, layer, axis)
        else:
            scale_axis = None
        scales = None
        if scale_axis is not None:  # one scale per output channel (format v1.2)
            from . import perchannel

            codebook, indices, scales = perchannel.share(w, scale_axis, target or 0.0, b, layer=layer, init=s.init,
                                                         seed=s.seed)
            del w
        elif layer is not None:  # calibration inputs known: error-compensated pruning and sharing
            from .oneshot import share

            lam = s.ecvq.get(name)
            codebook, indices = share(w, layer, target or 0.0, b, init=s.init, seed=s.seed, strength=lam)
            row["ecvq"] = {"strength": lam, "codebook_only": True}
            del w
        else:
            keep = w != 0
            if target:
                keep &= magnitude_mask(w, target)
            if q:
                keep &= threshold_mask(w, q * float(np.std(w.astype(np.float32))))
            if t:
                keep &= threshold_mask(w, t)
            if f:
                keep &= neuron_mask(w, f, axis)
            pruned = np.where(keep, w, np.zeros((), w.dtype))
            del keep, w  # compress() hands over its only reference: the layer's float copy goes now
            lam = s.ecvq.get(name)
            ecvq_info = {}
            codebook, indices = _ecvq.ecvq(pruned, b, lam, init=s.init, seed=s.seed, info=ecvq_info)
            row["ecvq"] = ecvq_info or {"strength": lam}
            del pruned
        cbd = codebook_dtype(codebook, dtype) if scales is None else None
        if cbd == "float16" and dtype != "float16":  # the centroids as stored: what the decoder gives back
            codebook = np.asarray(codebook).astype(np.float16).astype(np.asarray(codebook).dtype)
        if not keep_recon:
            recon = None
        elif scales is None:
            recon = codebook.astype(pruned_dtype(dtype))[indices]
        else:
            from .perchannel import decode

            recon = decode(codebook, indices, scales, scale_axis, pruned_dtype(dtype))
        if scales is None:
            encoding, gap_bits = choose_layout(codebook, indices, dtype, cbd) if indices.size else (None, None)
            extra = {"codebook_dtype": cbd}
        else:  # the encoder's own estimate (dcformat.encode.estimate_codebook_bytes) counts the scales
            from .perchannel import storage  # float16 codebook and scales where they are float16 values

            encoding, gap_bits, extra = None, None, {"scales": scales, "scale_axis": scale_axis,
                                                     **storage(codebook, scales)}
        enc = dcformat.encode_codebook(name, codebook, indices, shape, dtype, encoding=encoding, gap_bits=gap_bits,
                                       **extra)
        del indices
        row.update(action="pruned+shared", bits=b, target_sparsity=target, compensated=layer is not None,
                   scales="channel" if scales is not None else "tensor")
    row.update(
        encoding=enc.encoding, nonzeros=enc.info.nonzeros,
        sparsity=1 - enc.info.nonzeros / params if params else 0.0,
        codebook_size=enc.info.codebook_size, gap_bits=enc.info.gap_bits, bytes=enc.nbytes,
        ratio=(params * 4 / enc.nbytes) if enc.nbytes else None, seconds=time.perf_counter() - t0,
    )
    return enc, row, recon if keep_recon else None


def _take(weights: dict, name: str) -> np.ndarray:
    """The array, leaving None in the dict: compress_tensor then holds the only reference and frees it early."""
    w, weights[name] = weights[name], None
    return w


def compress(source, settings: Settings, progress=None, recon: dict | None = None):
    """Compress every weight of a Source; returns (encoded tensors, rows) in the source's order.

    With ``recon`` (a dict), it receives name -> the array each tensor decodes to."""
    tensors, rows = [], []
    names = list(source.weights)
    for i, name in enumerate(names):
        enc, row, r = compress_tensor(name, _take(source.weights, name), source.roles.get(name, "other"),
                                      source.out_axes.get(name, 0), settings, keep_recon=recon is not None)
        if recon is not None:
            recon[name] = r
        tensors.append(enc)
        rows.append(row)
        if progress:
            progress(i + 1, len(names), name)
    return tensors, rows


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def short_name(k: int) -> str:
    """The k-th of "a" .. "z", "A" .. "Z", "ba" .. : the shortest names first (a letter for each of the first 52)."""
    s = LETTERS[k % 52]
    k //= 52
    while k:
        s = LETTERS[k % 52] + s
        k //= 52
    return s


def compact_graph(model):
    """A copy of the ONNX ``model`` with fewer bytes and the same computation: the values between nodes
    renamed ``a``, ``b``, ... (short_name; the graph's inputs, outputs and initializers keep their names), node
    names and doc strings dropped. A model with subgraphs or local functions (which may name outer
    values) is returned unchanged. Saves about 90 bytes of LeNet-5's deflated graph (tools/bench_ecvq.py)."""
    from onnx import AttributeProto

    if model is None or len(model.functions) or any(
            a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        return model
    m = type(model)()
    m.CopyFrom(model)
    g = m.graph
    keep = ({v.name for v in g.input} | {v.name for v in g.output} | {t.name for t in g.initializer}
            | {t.name for t in g.sparse_initializer})
    rename, k = {}, 0
    for n in g.node:
        for i, x in enumerate(n.input):
            n.input[i] = rename.get(x, x)
        for i, o in enumerate(n.output):
            if o and o not in keep:
                while short_name(k) in keep:
                    k += 1
                rename[o] = n.output[i] = short_name(k)
                k += 1
        n.ClearField("name")  # cleared, not set to "": an empty string set is still written (proto2)
        n.ClearField("doc_string")
    for v in g.value_info:
        v.name = rename.get(v.name, v.name)
    for a in g.quantization_annotation:
        a.tensor_name = rename.get(a.tensor_name, a.tensor_name)
    g.ClearField("doc_string")
    m.ClearField("doc_string")
    return m


INLINE_MAX_BYTES = 64  # integer tensors up to this size (shapes, axes, indices) are kept in the graph


def inline_constants(model, tensors: list):
    """(graph, tensors): small integer tensors (``raw``, at most INLINE_MAX_BYTES: a Reshape's shape, an
    Unsqueeze's axes) moved into the graph, their bytes in the TensorProto (spec 5.2: a TensorProto that
    holds its data is used as it is), so that they need no tensor record (LeNet-5's Unsqueeze axes: a
    55-byte record for 8 bytes of data; tools/bench_ecvq.py). Float tensors (weights) stay records, and so
    does everything in a model with subgraphs or local functions. ``model`` is changed in place."""
    from onnx import AttributeProto, TensorProto

    from dcformat.constants import GRAPH_TENSOR_KEY

    if model is None or len(model.functions) or any(
            a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        return model, tensors
    small = {t.name: t for t in tensors if t.encoding == "raw" and t.info.dtype.startswith(("int", "uint"))
             and t.nbytes <= INLINE_MAX_BYTES}
    if not small:
        return model, tensors
    refs = [(t, False) for t in model.graph.initializer]
    refs += [(a.t, True) for n in model.graph.node for a in n.attribute if a.type == AttributeProto.TENSOR]
    refs += [(x, True) for n in model.graph.node for a in n.attribute if a.type == AttributeProto.TENSORS for x in a.tensors]
    done = set()
    for t, attr in refs:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        name = {e.key: e.value for e in t.external_data}.get(GRAPH_TENSOR_KEY)
        if name not in small:
            continue
        t.ClearField("external_data")
        t.ClearField("data_location")
        t.raw_data = small[name].parts["data"].tobytes()
        if attr:  # a node's tensor: its name names nothing
            t.ClearField("name")
        done.add(name)
    return model, [t for t in tensors if t.name not in done]

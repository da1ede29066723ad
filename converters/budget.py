"""The error budget: choose each layer's sparsity and bits from measured output errors.

1. Sensitivity scan. A layer whose calibration inputs are known (converters/hessian.Layer, H =
   X^T X) is scanned *locally*: every candidate setting (per channel where the tensor has channels,
   per tensor, a bounded set of (sparsity, bits)) is built exactly as compress_tensor will build it,
   its layer output error ``||X (W - Q)^T|| / ||X W^T||`` comes from H (no model run) and its bytes
   from the encoder's own estimate (dcformat.estimate_codebook_bytes: the Huffman-coded indices, not
   ``bits`` per weight). Beside the codebooks, each candidate is scanned rounded to SCAN_MANTISSA
   mantissa bits (converters.mantissa: floats, float-planes-coded; between 8-bit sharing and raw),
   and raw itself costs its float-planes bytes. The plan (2) chooses among codebooks and raw; rounding
   is a back-off step (3), one of the refinement's moves (4) and, after it, the layers still raw move to
   it where the measured error allows (_round_raw). Two whole-model runs per layer (8 and 5 bits) measure how that layer's output
   error shows in the model's output (its *gain* curve: a power law through the two points); a
   setting's predicted model error is the curve at its local error.
   Other candidate weights (no H: tables, shared weights, layers seen in too few calibration rows)
   are scanned the same way with the relative weight error ``||W - Q|| / ||W||`` as the local error
   and magnitude pruning, nearest rounding (what compress_tensor does without H). Model errors are
   dcformat.fidelity's error under the search's metric (``--metric``: the relative L2 error, or the
   decision error of probability outputs; worst output) on the first SCAN_SAMPLES calibration samples
   (8; on PP-OCRv4 rec a few inputs that move the output most are not among them and some layers' gains
   come out up to 8x low, but the 64-sample scan tried instead cost the detector its word spacing in OCR
   and rec 5x the conversion time: BENCHMARKS.md, "The budget search: greedy refinement").
   One ONNX Runtime session serves every trial: the candidate weights are graph inputs, fed
   at each run, so no model is re-serialised per trial.
2. Plan: the smallest estimated file whose predicted error is within the budget. Errors of
   independent perturbations add in power, so the prediction is sqrt(sum of squared per-layer
   errors); a multiple-choice knapsack solved by a Lagrangian search plus a greedy pass (the
   idea of converters.pipeline.choose_plan, on measured output errors instead of accuracy).
3. Verify: the whole planned model is measured; while it is over the budget the knapsack is re-run
   with a tighter target, then the layer that contributes most is backed off to a safer setting (float
   rounding or raw at last). With held-out samples (calibration samples the H, the scan and the plan never saw) the
   final model is measured on them too, and the plan is tightened while their error is over the
   budget: the file's metadata reports both errors.
4. Refine (on the calibration samples, before the held-out check): where the verified error is still
   below REFINE_UNTIL x its limit, a greedy pass (_refine) moves layers to cheaper options, rounding
   included (most bytes saved per unit of predicted error first, so a raw layer's rounding, which costs
   next to no error, goes before the codebook moves that use up the limit: on PP-OCRv4 rec, rounding
   only after them left two 230,400-weight layers raw, 1.56 MB, when the codebook moves had taken the
   measured error to 0.9996 x the limit), a batch sized by the measured/predicted ratio, and keeps
   a batch only when the measured error stays within the limit (else half of it; at most
   REFINE_TRIALS measurements). No plan over the limit is kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from dcformat import fidelity
from dcformat import inputs as inp

from . import mantissa
from .prune import magnitude_mask
from .quantize import Histogram, quantize

SCAN_SPARSITIES = (0.1, 0.25, 0.5, 0.75)
SCAN_BITS = (8, 7, 6, 5, 4, 3, 2)
SEARCH_DTYPES = ("float32", "float16", "float64")
PLAN_SHARE = 0.5  # the plan aims at this share of the budget: the additive model is approximate
VERIFY_SHARE = 0.6  # the verified error on the calibration set must be within this share: held-out inputs
# of small calibration sets measured up to ~2.5x higher (tools/bench_real_models.py)
SCAN_SAMPLES = 8  # calibration samples of the scan's gain runs (all of them for verification)


def _h(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def estimate_bytes(n: int, sparsity: float, bits: int) -> float:
    """Estimated stored bytes of a layer before it is built (the training pipeline's planner, and
    converters.perchannel.estimate_bytes): where the non-zeros are (entropy of the zero pattern, which
    the Huffman-coded gaps approach) plus ``bits`` per non-zero plus the codebook. dcconvert's own
    search measures each built setting with dcformat.estimate_codebook_bytes instead."""
    p = 1.0 - sparsity
    return n * (_h(p) + p * bits) / 8 + 4 * (2 ** bits)


SCAN_COMPENSATED = True  # the scan measures the compensated settings the verification and the file will use


def pruned_compensated(w: np.ndarray, layer, sparsity: float) -> np.ndarray:
    """``w`` pruned to ``sparsity`` with OBS/SparseGPT compensation (no rounding)."""
    from . import hessian, obs
    from .oneshot import damping

    q, _ = obs.compensate(np.stack(hessian.to_rows(w, layer)), np.stack(layer.h), sparsity=sparsity,
                          damp=damping(layer.h[0].shape[0], layer.rows_seen))
    return hessian.from_rows(list(q), w, layer).astype(w.dtype)


def reconstruct(w: np.ndarray, sparsity: float, bits: int, init: str = "linear", seed: int = 0,
                hist: Histogram | None = None, layer=None, strength: float = 0.0,
                scale_axis: int | None = None) -> np.ndarray:
    """What compress_tensor stores for ``w`` at (sparsity, bits), decoded: same masks, same k-means
    (``layer``: its calibration inputs are known, so the error-compensated one-shot sharing;
    ``scale_axis``: one scale per channel along it, converters.perchannel)."""
    if scale_axis is not None:
        from . import perchannel

        cb, idx, sc = perchannel.share(w, scale_axis, sparsity, bits, layer=layer, init=init, seed=seed)
        return perchannel.decode(cb, idx, sc, scale_axis, w.dtype)
    if layer is not None:
        from .oneshot import share

        cb, idx = share(w, layer, sparsity, bits, init, seed, strength=strength)
        return cb.astype(w.dtype)[idx]
    keep = w != 0
    if sparsity:
        keep &= magnitude_mask(w, sparsity)
    pruned = np.where(keep, w, np.zeros((), w.dtype))
    if strength:  # entropy-constrained sharing, as compress_tensor does it
        from .ecvq import ecvq

        cb, idx = ecvq(pruned, bits, strength, init=init, seed=seed)
    else:
        cb, idx = quantize(pruned, bits, init=init, seed=seed, hist=hist if not sparsity else None)
    return cb.astype(w.dtype)[idx]


class Runner:
    """The source graph in ONNX Runtime, its weights handed over as external initializers (used in
    place, never serialised) and the ``variable`` ones as graph inputs fed at every run."""

    def __init__(self, graph, weights: dict, variable=(), extra_outputs=()):
        import onnx
        import onnxruntime as ort
        from onnx import helper

        from dcformat.graph import fill_weights, iter_tensors, reference

        model = onnx.ModelProto()
        model.CopyFrom(graph)
        have = {o.name for o in model.graph.output}
        for name in extra_outputs:  # intermediate values asked for (the inputs of layers, for their H)
            if name not in have:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
        self.variable = [v for v in variable]
        var = set(self.variable)
        g = model.graph
        inputs = {i.name for i in g.input}
        ext_names, ext_values, ext_records, kept = [], [], set(), []
        refs: dict[str, int] = {}
        for _, t in iter_tensors(g):
            r = reference(t)
            refs[r] = refs.get(r, 0) + 1
        for t in g.initializer:
            name = reference(t)
            if name is not None and name in var:
                if t.name not in inputs:
                    g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
                continue
            kept.append(t)
            if name is None or name not in weights:
                continue
            arr = weights[name]
            if arr.dtype.kind == "f" and arr.dtype.name != "bfloat16" and arr.nbytes >= 4096 and refs.get(name) == 1:
                ext_names.append(t.name)
                ext_values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
                ext_records.add(name)
        if len(kept) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(kept)
        self.proto_names = {}  # record name -> graph input name
        nodes = []
        for node in g.node:  # main-graph Constant nodes holding a variable weight become inputs too
            r = _constant_record(node)
            if r is not None and r in var:
                t = next(a.t for a in node.attribute if a.name == "value")
                g.input.append(helper.make_tensor_value_info(node.output[0], t.data_type, list(t.dims)))
                self.proto_names[r] = node.output[0]
            else:
                nodes.append(node)
        if len(nodes) != len(g.node):
            del g.node[:]
            g.node.extend(nodes)
        fill_weights(model, {k: v for k, v in weights.items() if k not in var and k not in ext_records},
                     only_listed=True)
        so = ort.SessionOptions()
        so.log_severity_level = 4  # failures come back as exceptions, which the CLI turns into one line
        # ORT's workers spin for a while after each run, taking the cores from the numpy (BLAS) work that
        # follows every run of a search: 20 ORT runs of PP-OCR cls, each followed by 20 384x384 products,
        # spent 76 ms per batch of products spinning, 48-53 ms not (and the runs were no slower)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if ext_names:
            so.add_external_initializers(ext_names, ext_values)
        self._keep = ext_values
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=so,
                                            providers=["CPUExecutionProvider"])
        for t in graph.graph.initializer:
            name = reference(t)
            if name in var:
                self.proto_names[name] = t.name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, calib, decl, weights: dict, overrides: dict | None = None) -> dict:
        overrides = overrides or {}
        extra = {self.proto_names[v]: overrides.get(v, weights[v]) for v in self.variable}
        return inp.run_set(self.session, calib, decl, feeds_extra=extra, output_names=self.output_names)


def _constant_record(node) -> str | None:
    """The record a main-graph Constant node's value refers to, if any."""
    from dcformat.graph import reference

    if node.op_type != "Constant" or len(node.output) != 1:
        return None
    for a in node.attribute:
        if a.name == "value" and a.HasField("t"):
            return reference(a.t)
    return None


def _error(ref, got, metric: str = fidelity.METRIC) -> float:
    """The model's error under ``metric`` (dcformat.fidelity.METRICS)."""
    return fidelity.compare(ref, got, metric=metric)["error"]


@dataclass
class Search:
    budget: float
    errors: dict = field(default_factory=dict)  # name -> {"sparsity": {s: e}, "bits": {b: e}, "channel_bits": {b: e}}
    plan: dict = field(default_factory=dict)  # name -> {"sparsity", "bits", "scale_axis"} or None (raw)
    verified: float | None = None
    backoffs: list = field(default_factory=list)
    replans: list = field(default_factory=list)
    refinements: list = field(default_factory=list)  # _refine's batches: layers, measured error, kept
    held_out: float | None = None  # the final model's error on the held-out samples
    held_out_samples: int = 0
    trials: int = 0
    seconds: float = 0.0
    metric: str = fidelity.METRIC  # what the budget bounds (dcformat.fidelity.METRICS)
    sequential: dict = field(default_factory=lambda: {"passes": 0, "seconds": 0.0})  # converters.sequential's cost
    refits: dict = field(default_factory=dict)  # name -> (W*, Layer with H_hat) of the final plan (sequential)

    def describe(self) -> dict:
        return {"budget": self.budget, "metric": self.metric, "trials": self.trials,
                "verified_error": self.verified, "held_out_error": self.held_out,
                "held_out_samples": self.held_out_samples, "replans": self.replans,
                "refinements": self.refinements,
                "backoffs": self.backoffs, "seconds": round(self.seconds, 2),
                **({"sequential": self.sequential} if self.sequential.get("passes") else {}),
                "scan": {n: {"sparsity": {str(k): v for k, v in e["sparsity"].items()},
                             "bits": {str(k): v for k, v in e["bits"].items()},
                             "channel_bits": {str(k): v for k, v in e.get("channel_bits", {}).items()},
                             **({"gain": e["gain"], "local": e["local"]} if "local" in e else {})}
                         for n, e in self.errors.items()}}


def candidates(graph, weights: dict, min_size: int) -> tuple[list[str], dict]:
    """(weights the search may compress, {name: why another one stays raw})."""
    from dcformat.graph import reference

    from dcformat.graph import iter_tensors

    in_main = {reference(t) for t in graph.graph.initializer} | {_constant_record(n) for n in graph.graph.node}
    refs: dict[str, int] = {}
    for _, t in iter_tensors(graph.graph):
        r = reference(t)
        refs[r] = refs.get(r, 0) + 1
    cands, reasons = [], {}
    for name, w in weights.items():
        if w.dtype.kind != "f" and w.dtype.name != "bfloat16":
            reasons[name] = f"not float ({w.dtype})"
        elif w.size < max(min_size, 1):
            reasons[name] = f"small (< --min-size {min_size})"
        elif w.dtype.name not in SEARCH_DTYPES:
            reasons[name] = f"{w.dtype} is not searched"
        elif name not in in_main or refs.get(name, 0) != 1:
            reasons[name] = "in a Constant node or subgraph: its effect on the outputs is not measured"
        elif not np.isfinite(w).all():
            reasons[name] = "not finite (NaN/inf)"
        else:
            cands.append(name)
    return cands, reasons


def _options(name: str, n: int, itemsize: int, e: dict, limit: float, fixed_s=None, fixed_b=None,
             channels: int = 0, scale_axis: int | None = None) -> list[dict]:
    """Settings of one layer with their predicted squared error and estimated bytes; raw first.
    Per-channel settings (``e["channel_bits"]``: one scale per channel along ``scale_axis``) cost
    the plain estimate plus ``channels`` scales (converters.perchannel.estimate_bytes)."""
    from .perchannel import estimate_bytes as channel_bytes

    opts = [{"sparsity": None, "bits": None, "scale_axis": None, "err2": 0.0, "bytes": float(n * itemsize)}]
    ss = {0.0: 0.0, **{s: v for s, v in e["sparsity"].items() if v <= limit}}
    bb = {b: v for b, v in e["bits"].items() if v <= limit}
    if fixed_s is not None:
        ss = {fixed_s: e["sparsity"].get(fixed_s, 0.0)}
    if fixed_b is not None:
        bb = {fixed_b: e["bits"].get(fixed_b, 0.0)}
    cb = {b: v for b, v in e.get("channel_bits", {}).items() if v <= limit}
    if fixed_b is not None and fixed_b in e.get("channel_bits", {}):
        cb = {fixed_b: e["channel_bits"][fixed_b]}
    for s, es in ss.items():
        for kind, table in ((None, bb), (scale_axis, cb)):
            for b, eb in table.items():
                est = estimate_bytes(n, s, b) if kind is None else channel_bytes(n, s, b, channels)
                if est < n * itemsize or fixed_s is not None or fixed_b is not None:
                    opts.append({"sparsity": float(s), "bits": int(b), "scale_axis": kind, "err2": es * es + eb * eb,
                                 "bytes": est})
    return opts


def choose(options: dict, target: float) -> dict:
    """Per layer the option minimising total bytes with sum(err2) <= target**2 (converters.knapsack)."""
    from .knapsack import plan

    return plan(options, "err2", target * target)


LOCAL_SETTINGS = ((0.0, 8), (0.0, 7), (0.0, 6), (0.0, 5), (0.0, 4), (0.0, 3),
                  (0.25, 6), (0.25, 5), (0.25, 4), (0.5, 5), (0.5, 4), (0.5, 3))  # (sparsity, bits), finest first
LOCAL_TENSOR_BITS = (8, 6, 5, 4)  # one codebook per tensor, beside per channel: a bounded few
GAIN_SETTINGS = ((0.0, 8), (0.0, 5))  # the settings whose whole-model errors measure a layer's gain


def _gain_curve(points):
    """Model error as a function of a layer's local error, from measured (local, model) pairs: one
    pair, proportional; two or more, a power law through the extreme two (exponent kept in [1, 3]:
    never below proportional, never wilder than cubic) and beyond the larger one; below the smaller
    one, proportional (small perturbations move the output linearly; a steeper law would promise the
    float-rounding rungs, whose local errors lie far below 8-bit sharing's, errors they do not give:
    PP-OCRv4 rec, every weight at 7 mantissa bits, measures 0.069)."""
    if not points:
        return lambda loc: loc
    points = sorted(points)
    (l1, m1), (l2, m2) = points[0], points[-1]
    if len(points) == 1 or l2 <= l1 * 1.05:
        g = max(m1 / l1, m2 / l2)
        return lambda loc: g * loc
    p = min(max(math.log(m2 / m1) / math.log(l2 / l1), 1.0), 3.0)
    return lambda loc: m1 * loc / l1 if loc <= l1 else m2 * (loc / l2) ** p if loc >= l2 else \
        m1 * (loc / l1) ** (math.log(m2 / m1) / math.log(l2 / l1))
TIGHTEN = 0.8  # a re-plan aims at this share of what the last measurement allowed
MAX_REPLANS = 6
LOOSEN_BELOW = 0.6  # a verified error below this share of the limit re-plans at a looser target
MAX_LOOSEN = 4.0  # by at most this factor at a time
REFINE_TRIALS = 6  # measurements the greedy refinement (_refine) may spend after the re-plans
REFINE_UNTIL = 0.9  # it refines while the measured error is below this share of the limit
REFINE_AIM = 0.95  # a batch of moves is sized to reach this share of the limit at the measured/predicted ratio
HELD_SHARE = 0.8  # the held-out error must be within this share of the budget (the held-out set is small too)
CACHE_BYTES = 512 << 20  # reconstructions of scanned settings kept for the plan (recomputed beyond)


def local_error(w: np.ndarray, q: np.ndarray, layer) -> float:
    """The layer's relative output error ``||X (W - Q)^T|| / ||X W^T||`` from its H (all groups);
    without a layer (no H: a table, a weight used twice) the relative weight error ``||W - Q|| / ||W||``."""
    from . import hessian

    if layer is None:
        a, d = np.asarray(w, np.float64), np.asarray(w, np.float64) - np.asarray(q, np.float64)
        den = float(np.vdot(a, a))
        return math.sqrt(float(np.vdot(d, d)) / den) if den > 0 else 0.0

    rows = np.stack(hessian.to_rows(w, layer))
    d = rows - np.stack(hessian.to_rows(q, layer))
    h = np.stack(layer.h)
    num = float(np.einsum("grc,grc->", np.matmul(d, h), d))
    den = float(np.einsum("grc,grc->", np.matmul(rows, h), rows))
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def _built(w, sparsity, bits, init, seed, layer, strength, scale_axis):
    """(decoded array, estimated stored bytes) of ``w`` at one setting, as compress_tensor builds it."""
    import dcformat

    if scale_axis is not None:
        from . import perchannel

        cb, idx, sc = perchannel.share(w, scale_axis, sparsity, bits, layer=layer, init=init, seed=seed)
        est = dcformat.estimate_codebook_bytes(cb, idx, w.shape, _dtype(w), scales=sc, scale_axis=scale_axis,
                                               **perchannel.storage(cb, sc))
        return perchannel.decode(cb, idx, sc, scale_axis, w.dtype), float(est.nbytes)
    if layer is not None:
        from .oneshot import share

        cb, idx = share(w, layer, sparsity, bits, init, seed, strength=strength)
    else:  # as compress_tensor: magnitude pruning, then (ECVQ) weight sharing
        keep = w != 0
        if sparsity:
            keep &= magnitude_mask(w, sparsity)
        pruned = np.where(keep, w, np.zeros((), w.dtype))
        del keep
        from .ecvq import ecvq

        cb, idx = ecvq(pruned, bits, strength, init=init, seed=seed)
    est = dcformat.estimate_codebook_bytes(cb, idx, w.shape, _dtype(w))
    return cb.astype(w.dtype)[idx], float(est.nbytes)


def _dtype(w) -> str:
    from dcformat.constants import dtype_name

    return dtype_name(w.dtype)


def search(graph, weights: dict, calib: dict, decl, budget: float, *, min_size: int, init: str = "linear",
           seed: int = 0, fixed_sparsity=None, fixed_bits=None, progress=None, echo=None,
           layers: dict | None = None, strength=None, axes: dict | None = None,
           channel_scales: str = "auto", held: dict | None = None,
           metric: str = fidelity.METRIC, sequential: bool = False) -> tuple[Search, dict]:
    """Scan, plan and verify; returns (the Search record, {name: why it stays raw}).

    ``axes`` (name -> output axis, converters.roles): with ``channel_scales`` "auto" every layer is
    also scanned with one scale per output channel (converters.perchannel) and the plan picks per
    layer whichever of the two is smaller at its error; "on": per-channel only, "off": never.

    ``layers`` (name -> converters.hessian.Layer with H): those weights are scanned locally (module
    docstring) and built error-compensated, as compress_tensor builds them. ``strength(name)``: the
    layer's ECVQ strength (converters.ecvq) for one codebook per tensor. ``held``: held-out
    calibration samples (same inputs as ``calib``), measured after the plan is verified on ``calib``;
    while their error is over HELD_SHARE x budget the plan is tightened. ``metric``: the model error the
    budget bounds and every trial measures (dcformat.fidelity.METRICS: "rel_l2", "decision").

    ``sequential``: the plan's layers with an H are fitted in topological order, each to the float
    model's outputs from the inputs the compressed layers before it give (converters.sequential),
    for every verification; ``Search.refits`` then holds each such layer's (W*, Layer with H_hat)
    for the final plan, from which compress_tensor builds it (converters.sequential.install)."""
    layers = layers or {}
    strength = strength or (lambda name: 0.0)

    def scan_layer(name):
        return layers.get(name) if SCAN_COMPENSATED else None

    t0 = time.perf_counter()
    cands, reasons = candidates(graph, weights, min_size)
    res = Search(budget, metric=metric)
    if not cands:
        res.verified = 0.0
        res.seconds = time.perf_counter() - t0
        return res, reasons
    runner = Runner(graph, weights, cands)
    n = inp.num_samples(calib, decl)
    scan_set = {k: v[: min(n, SCAN_SAMPLES)] for k, v in calib.items()}
    base_scan = runner.run(scan_set, decl, weights)
    res.trials += 1
    fixed_sparsity = fixed_sparsity or (lambda name: None)
    fixed_bits = fixed_bits or (lambda name: None)
    options = {}
    cache: dict = {}
    cached = [0]

    def keep(key, arr):
        if cached[0] + arr.nbytes <= CACHE_BYTES:
            cache[key] = arr
            cached[0] += arr.nbytes

    for i, name in enumerate(cands):
        w = weights[name]
        fs, fb = fixed_sparsity(name), fixed_bits(name)
        ax = channel_axis(w, layers.get(name), (axes or {}).get(name, 0)) if channel_scales != "off" else None
        res.errors[name], options[name] = _scan_local(name, w, scan_layer(name), ax, channel_scales, fs, fb, budget,
                                                      runner, scan_set, decl, weights, base_scan, init, seed,
                                                      strength(name), res, keep)
        if progress:
            progress(i + 1, len(cands), name)
    # verify on every calibration sample against the same session's exact outputs; tighten, then back off
    base = runner.run(calib, decl, weights)
    recon = {}

    seq = _sequential(graph, weights, calib, decl, layers, cands) if sequential else None
    dirty = [False]  # with seq: the plan changed since its layers were last fitted in order

    def rebuild(name):
        c = plan[name]
        if c["bits"] is None:
            recon.pop(name, None)
        if seq is not None and name in seq.layers:
            dirty[0] = True  # fitted in order, before the next measurement (sync)
            return
        if c["bits"] is None:
            if c.get("mantissa") is not None:  # float rounding (converters.mantissa)
                recon[name] = build(name, weights[name], None, ("round", c["mantissa"], None))
            return
        key = (name, c["sparsity"], c["bits"], c["scale_axis"])
        if key in cache:
            recon[name] = cache[key]
        else:
            recon[name] = reconstruct(weights[name], c["sparsity"], c["bits"], init, seed, layer=layers.get(name),
                                      strength=strength(name), scale_axis=c["scale_axis"])

    def build(name, w, lay, key):
        s_, b_, ax_ = key
        if s_ == "round":  # float rounding to b_ mantissa bits
            return cache[(name, "round", b_)] if w is weights[name] and (name, "round", b_) in cache \
                else mantissa.round_mantissa(w, b_)
        if w is weights[name] and (name, s_, b_, ax_) in cache:  # not refitted: what the scan built
            return cache[(name, s_, b_, ax_)]
        return reconstruct(w, s_, b_, init, seed, layer=lay, strength=strength(name), scale_axis=ax_)

    def sync():
        """The sequentially fitted layers of the current plan into ``recon`` (converters.sequential)."""
        if seq is None or not dirty[0]:
            return
        t = time.perf_counter()
        key = lambda c: (("round", c["mantissa"], None) if c.get("mantissa") is not None else None) \
            if c["bits"] is None else (c["sparsity"], c["bits"], c["scale_axis"])  # noqa: E731
        others = {n: a for n, a in recon.items() if n not in seq.layers}
        got = seq.apply({n: key(plan[n]) for n in seq.layers}, build, others,
                        tuple(sorted((n, key(plan[n])) for n in others)))
        for n in seq.layers:
            recon.pop(n, None)
        recon.update({n: r[0] for n, r in got.items()})
        res.refits = {n: (r[1], r[2]) for n, r in got.items() if r[1] is not weights[n]}
        res.sequential["passes"] += 1
        res.sequential["seconds"] += time.perf_counter() - t
        dirty[0] = False

    def measure(data, ref):
        sync()
        res.trials += 1
        return _error(ref, runner.run(data, decl, weights, recon), metric)

    target = PLAN_SHARE * budget
    limit = VERIFY_SHARE * budget
    # the planner's choices: the codebooks and raw; float rounding comes in as a back-off step and, once
    # a plan holds, as a measured move of the refinement and for the layers left raw (_round_raw): its
    # predicted errors are the least reliable (PP-OCRv4 rec: plans that mixed it in measured up to 6x
    # their prediction and ended larger)
    plan_options = {n: [o for o in opts if o.get("mantissa") is None] for n, opts in options.items()}
    plan = choose(plan_options, target)
    for name in cands:
        rebuild(name)
    err = measure(calib, base)

    def target_search(which, target, err, measure_set, limit, ceiling):
        """Re-plan at the target the measurements allow: tighter when over ``limit``, looser (up to
        ``ceiling``) when well below it, bisecting between the loosest target within it and the
        tightest over it; the smallest plan within the limit is kept. Returns (plan, error, target)."""
        nonlocal plan
        best = (dict(plan), err) if err <= limit else None
        good, bad = (target, None) if err <= limit else (None, target)
        for _ in range(MAX_REPLANS):
            if err <= limit and (err >= LOOSEN_BELOW * limit or target >= ceiling):
                break
            if good is not None and bad is not None:
                if bad / good < 1.15:
                    break
                target = math.sqrt(good * bad)
            elif bad is not None:
                target = bad * TIGHTEN * limit / err
            else:
                target = min(good * min(MAX_LOOSEN, TIGHTEN * limit / max(err, 1e-12)), ceiling)
            res.replans.append({"set": which, "error_before": err, "target": target})
            if echo:
                echo(f"budget: measured {err:.3g} (limit {limit:.3g}) on the {which} samples; re-planning at "
                     f"{target:.3g}")
            new = choose(plan_options, target)
            if new == plan:  # the same plan: what it measured holds for this target too
                if err <= limit:
                    good = target
                else:
                    bad = target
                continue
            plan = new
            for name in cands:
                rebuild(name)
            err = measure_set()
            if err <= limit:
                good = target
                if best is None or _plan_bytes(plan) < _plan_bytes(best[0]):
                    best = (dict(plan), err)
            else:
                bad = target
        if best is not None and best[0] != plan:
            plan, err = dict(best[0]), best[1]
            for name in cands:
                rebuild(name)
        return err, (good if good is not None else target)

    err, target = target_search("calibration", target, err, lambda: measure(calib, base), limit, budget)
    err = _back_off(res, plan, options, rebuild, recon, lambda: measure(calib, base), limit, echo)
    err = _refine(res, plan, options, rebuild, lambda: measure(calib, base), err, limit)
    err = _round_raw(res, plan, options, rebuild, lambda: measure(calib, base), err, limit)
    res.verified = err
    if held is not None and inp.num_samples(held, decl):
        base_held = runner.run(held, decl, weights)
        hlimit = HELD_SHARE * budget
        herr = measure(held, base_held)
        herr, target = target_search("held-out", target, herr, lambda: measure(held, base_held), hlimit, target)
        herr = _back_off(res, plan, options, rebuild, recon, lambda: measure(held, base_held), hlimit, echo)
        if herr <= hlimit:  # a re-plan on the held-out samples may have left layers raw again

            def both():  # the worse of the two sets, each as a share of its limit
                return max(measure(calib, base) / limit, measure(held, base_held) / hlimit)

            if _round_raw(res, plan, options, rebuild, both, None, 1.0) is not None:
                herr = measure(held, base_held)
        res.held_out = herr
        res.held_out_samples = inp.num_samples(held, decl)
        res.verified = measure(calib, base)
    sync()  # the plan kept last may not have been measured since it was restored
    if seq is not None:
        res.sequential.update(runs=seq.runs, refits=seq.refits, layers=len(seq.layers),
                              seconds=round(res.sequential["seconds"], 2))
    for name in cands:
        c = plan[name]
        if c["bits"] is None and c.get("mantissa") is not None:
            res.plan[name] = {"sparsity": None, "bits": None, "scale_axis": None, "mantissa": c["mantissa"]}
        elif c["bits"] is None:
            res.plan[name] = None
            e = res.errors[name]
            shared = list(e["bits"].values()) + list(e.get("channel_bits", {}).values())
            best8 = min([v for v in (e["bits"].get(8), e.get("channel_bits", {}).get(8)) if v is not None]
                        or [min(shared or [math.inf])])
            reasons[name] = (f"error budget: 8-bit sharing alone gives {best8:.3g} "
                             f"(budget {budget:g})" if all(v > budget * PLAN_SHARE for v in shared)
                             else "error budget: compressing it saved too little for the error it added")
        else:
            res.plan[name] = {"sparsity": c["sparsity"], "bits": c["bits"], "scale_axis": c["scale_axis"]}
    res.seconds = time.perf_counter() - t0
    return res, reasons


def _sequential(graph, weights, calib, decl, layers, cands):
    """converters.sequential.Sequential over the candidates with an H, or None where there are none."""
    # main-graph Gemm/MatMul/Conv only: Sequential reads a layer's input as a main-graph value (a recurrent
    # layer's are several, a subgraph layer's must be exposed through its If / Loop): the others keep their H
    fitted = {n: lay for n, lay in layers.items() if n in set(cands) and lay.h and lay.op != "RNN" and not lay.path}
    if not fitted:
        return None
    from .sequential import Sequential

    return Sequential(graph, weights, calib, decl, fitted, cands)


def _plan_bytes(plan: dict) -> float:
    return sum(c["bytes"] for c in plan.values())


def _round_raw(res, plan, options, rebuild, measure, err: float | None, limit: float) -> float | None:
    """The layers ``plan`` leaves raw move to float rounding (converters.mantissa) where the measured error
    stays within ``limit``: _refine over options that are the layer's raw setting and its rounding rungs,
    up to the limit itself (the moves add little error: 10 mantissa bits is a relative 2^-11 a weight).
    ``err``: the plan's measured error (None: measured here, only when some layer has rungs to move to).
    Returns the error of the plan it leaves, ``err`` unchanged when there was nothing to move."""
    rounding = {n: [plan[n]] + [o for o in options[n] if o.get("mantissa") is not None] if _is_raw(plan[n])
                else [plan[n]] for n in plan}
    if not any(len(v) > 1 for v in rounding.values()):
        return err
    return _refine(res, plan, rounding, rebuild, measure, measure() if err is None else err, limit, until=1.0)


def _refine(res, plan, options, rebuild, measure, err: float, limit: float, until: float = None) -> float:
    """Spend what the measured error leaves of ``limit``: layers move to cheaper options, the most bytes
    saved per unit of predicted squared error first, as many as the headroom allows when the predicted
    error is scaled by measured/predicted of the current plan; a batch is kept only when the measured
    error stays within ``limit``, else half of it is tried (a single move over the limit retires its
    layer). At most REFINE_TRIALS measurements; ``plan`` is changed in place; returns the measured error
    of the plan it leaves, which is never over ``limit`` when ``err`` was not. Silent (a line per batch
    would crowd stderr): ``res.refinements`` records each batch."""
    if err > limit:
        return err
    retired: set = set()
    trials = 0
    until = REFINE_UNTIL if until is None else until
    while trials < REFINE_TRIALS and err < until * limit:
        pred2 = sum(c["err2"] for c in plan.values())
        scale2 = err * err / pred2 if pred2 > 0 else 1.0  # measured over predicted, squared
        room = (REFINE_AIM * limit) ** 2 / max(scale2, 1e-30) - pred2  # predicted err2 the moves may add
        moves = []
        for name in sorted(plan):
            if name in retired:
                continue
            cur = plan[name]
            best, score = None, 0.0
            for c in options[name]:
                saved = cur["bytes"] - c["bytes"]
                if saved <= 0:
                    continue
                sc = saved / max(c["err2"] - cur["err2"], 1e-30)
                if sc > score:
                    best, score = c, sc
            if best is not None:
                moves.append((-score, name, best))
        if not moves:
            break
        moves.sort(key=lambda m: (m[0], m[1]))
        k, added = 0, 0.0
        for _, name, c in moves:
            added += max(c["err2"] - plan[name]["err2"], 0.0)
            if k and added > room:
                break
            k += 1
        while trials < REFINE_TRIALS:
            batch = moves[:k]
            before = {name: plan[name] for _, name, _ in batch}
            for _, name, c in batch:
                plan[name] = c
                rebuild(name)
            new = measure()
            trials += 1
            saved = sum(before[n]["bytes"] - plan[n]["bytes"] for n in before)
            res.refinements.append({"layers": sorted(before), "error": new, "kept": new <= limit,
                                    "bytes_saved": saved})
            if new <= limit:
                err = new
                break
            for name, c in before.items():
                plan[name] = c
                rebuild(name)
            if k == 1:
                retired.add(batch[0][1])
                break
            k //= 2
    return err


def _back_off(res, plan, options, rebuild, recon, measure, limit, echo) -> float:
    """While the measured error is over ``limit``, the layer with the largest predicted share goes to
    its next safer option (raw at last); returns the last measured error."""
    err = measure()
    while err > limit and recon:
        worst = max(recon, key=lambda nm: plan[nm]["err2"])
        cur = plan[worst]
        safer = [c for c in options[worst] if c["err2"] < cur["err2"] / 4 or _is_raw(c)]
        nxt = min(safer, key=lambda c: (c["bytes"], c["err2"]))
        res.backoffs.append({"layer": worst, "from": _label(cur), "to": _label(nxt), "error_before": err})
        if echo:
            echo(f"budget: measured {err:.3g} > {limit:.3g}; backing off {worst} ({_label(cur)} -> {_label(nxt)})")
        plan[worst] = nxt
        rebuild(worst)
        err = measure()
    return err


def _scan_local(name, w, lay, ax, channel_scales, fs, fb, budget, runner, scan_set, decl, weights, base_scan, init,
                seed, lam, res, keep):
    """(scan record, options) of a weight: local errors of a bounded set of settings (from its H, or
    its weight error where it has none), two model runs for the gain curve (module docstring). Settings are tried finest first per sparsity and kind; a
    kind stops at the first setting predicted over the budget."""
    kinds = []
    if ax is not None:
        kinds.append(ax)
    if ax is None or channel_scales != "on":
        kinds.append(None)
    settings = [(s, b) for s, b in LOCAL_SETTINGS if (fs is None or s == fs) and (fb is None or b == fb)]
    if fs is not None and not any(s == fs for s, _ in settings):
        settings = [(fs, b) for b in SCAN_BITS if fb is None or b == fb]
    if not settings:
        settings = [(fs or 0.0, fb)]
    e = {"sparsity": {}, "bits": {}, "channel_bits": {}, "local": {}, "gain": None}
    # the gain: whole-model runs with the layer at the GAIN_SETTINGS (its finest setting when fixed); between
    # and beyond them the model error follows a power law of the local error (a deep network's output moves
    # more than in proportion to a layer's error once that is large)
    gk = kinds[0]
    points = [g for g in GAIN_SETTINGS if g in settings] or [settings[0]]
    built = {}
    measured = []
    for gs in points:
        q, nbytes = _built(w, gs[0], gs[1], init, seed, lay, lam, gk)
        loc = local_error(w, q, lay)
        model = _error(base_scan, runner.run(scan_set, decl, weights, {name: q}), res.metric)
        res.trials += 1
        built[(gs[0], gs[1], gk)] = (q, nbytes, loc)
        if loc > 0 and model > 0:
            measured.append((loc, model))
    predict = _gain_curve(measured)
    e["gain"] = [[lo, mo] for lo, mo in measured]
    raw_bytes = mantissa.estimate_bytes(w)  # an exact copy as dcformat.encode stores it (float-planes)
    opts = [{"sparsity": None, "bits": None, "scale_axis": None, "err2": 0.0, "bytes": raw_bytes}]
    if fs is None and fb is None:  # float rounding: the near-lossless rungs between 8-bit sharing and raw
        full = mantissa.mantissa_bits(w.dtype)
        for m in mantissa.SCAN_MANTISSA:
            if full is None or m >= full:
                continue
            q = mantissa.round_mantissa(w, m)
            loc = local_error(w, q, lay)
            pred = predict(loc)
            nbytes = mantissa.estimate_bytes(q)
            e["local"][f"round {m}"] = [loc, pred, nbytes]
            if nbytes < raw_bytes:
                opts.append({"sparsity": None, "bits": None, "scale_axis": None, "mantissa": m, "err2": pred * pred,
                             "bytes": nbytes})
                keep((name, "round", m), q)
    for kind in kinds:
        stopped = set()  # sparsities whose coarser settings are over the budget
        for s, b in settings:
            if kind is None and ax is not None and b not in LOCAL_TENSOR_BITS and fb is None:
                continue
            if s in stopped:
                continue
            key = (s, b, kind)
            if key in built:
                q, nbytes, loc = built[key]
            else:
                q, nbytes = _built(w, s, b, init, seed, lay, lam, kind)
                loc = local_error(w, q, lay)
            pred = predict(loc)
            tag = "channel" if kind is not None else "tensor"
            e["local"][f"{tag} {s:g} {b}"] = [loc, pred, nbytes]
            if s == 0:
                e["channel_bits" if kind is not None else "bits"][b] = pred
            fixed = fs is not None or fb is not None
            if pred > budget and not fixed:
                stopped.add(s)
                continue
            if nbytes < raw_bytes or fixed:
                opts.append({"sparsity": float(s), "bits": int(b), "scale_axis": kind, "err2": pred * pred,
                             "bytes": nbytes})
                keep((name, float(s), int(b), kind), q)
    return e, opts


def _is_raw(c) -> bool:
    return c["bits"] is None and c.get("mantissa") is None


def _label(c) -> str:
    if c["bits"] is None:
        return "raw" if c.get("mantissa") is None else f"rounded to {c['mantissa']} mantissa bits"
    return f"{c['sparsity']:.0%} pruned, {c['bits']} bits" + (" per channel" if c.get("scale_axis") is not None else "")


MIN_CHANNEL_SIZE = 4  # elements per channel below which a scale each costs more than it can save


def channel_axis(w: np.ndarray, layer, axis: int) -> int | None:
    """The axis of ``w``'s per-channel scales, or None where a tensor has no channels to scale: the
    rows of its Layer (converters.perchannel.layer_axis) when it has one, else its output ``axis``
    (converters.roles: a Conv's filters, MatMul's columns, an embedding table's rows)."""
    from .perchannel import layer_axis

    if w.ndim < 2 or (layer is not None and layer.op == "RNN" and w.ndim == 3 and w.shape[0] > 1):
        return None  # a bidirectional recurrent weight: its channels are (direction, row) pairs, not one axis
    ax = layer_axis(layer, w.ndim) if layer is not None else axis % w.ndim
    if w.shape[ax] < 2 or w.size // w.shape[ax] < MIN_CHANNEL_SIZE:
        return None
    return ax

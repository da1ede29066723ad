"""How far a compressed model's outputs are from the original's, on a set of samples. numpy only.

Per graph output, over the N samples of a calibration set (y_i: the original model's output for
sample i, y'_i: the compressed model's, both flattened, in float64):

* ``rel_l2`` -- relative L2 error over the whole set: sqrt(sum_i ||y_i - y'_i||^2) / sqrt(sum_i ||y_i||^2)
  (0 when both are all zeros, inf when only y is);
* ``cosine_mean`` / ``cosine_min`` -- cosine similarity <y_i, y'_i> / (||y_i|| ||y'_i||) per sample
  (1 when both are zero, 0 when one is), its mean and its worst sample;
* ``max_abs`` -- the largest |y - y'| over all elements of all samples;
* ``top1`` -- for classifier-like outputs (float, rank >= 2, last axis of 2 .. 100,000 entries,
  rank <= 3), the fraction of positions (all but the last axis, over all samples) whose argmax
  over the last axis agrees; None for other outputs.

* ``kind`` -- what the output holds, judged on the original's outputs (output_kind): "softmax"
  (probabilities over the last axis), "sigmoid" (per-element probabilities in [0, 1]) or "values";
* ``decision_error`` -- for probability outputs, how far the decisions moved towards changing
  (arg-max over the last axis for softmax, p > 0.5 for sigmoid): per decision the share of its
  margin that the new output closed (decision_ratios; 1 = the decision changed), capped at 1, and
  the root mean square over all decisions of all samples: a changed decision counts as much as
  a full margin, small moves of confident decisions hardly count. ``decisions`` / ``decisions_changed``:
  how many there are, how many changed. For "values" outputs it is ``rel_l2``.

The model's error (what ``--max-error`` bounds) is the largest error over its outputs under the
metric (``--metric``): ``rel_l2`` (the default), or ``decision`` (``decision_error``, i.e. rel_l2 for
outputs that are not probabilities). Non-finite elements (NaN, inf in either output) are left out
of the sums and counted.

dcconvert stores the record in the .dcz metadata under the key ``"fidelity"`` (schema 1 shown; JSON,
infinities written as the string "inf")::

    {"schema": 1, "measured": true, "metric": "rel_l2" | "decision", "metric_text": "...",
     "calibration": {"source": "synthetic" | PATH, "synthetic": bool, "samples": N, "seed": int (synthetic),
                     "inputs": {name: {"dtype", "shape", "table_rows" (if traced)}}},
     "budget": E | null (explicit settings), "within_budget": bool | null,
     "max_rel_l2": float, "worst_output": name, "min_cosine": float | null,
     "error": float (under "metric"), "error_output": name,
     "outputs": {name: {"shape" (one sample), "samples", "shape_mismatch", "rel_l2", "cosine_mean",
                        "cosine_min", "max_abs", "top1" | null, "top1_positions" | null, "nonfinite",
                        "kind", "decision_error", "decisions" | null, "decisions_changed" | null}},
     "search": {"trials", "verified_error", "held_out_error", "held_out_samples", "replans": [{"set", "error_before",
                "target"}], "backoffs": [{"layer", "from", "to", "error_before"}], "refinements": [{"layers",
                "error", "kept", "bytes_saved"}]} (budget search),
     "warning": bool}

and for weights-only inputs ``{"schema": 1, "measured": false, "reason": "...",
"tensor_snr_db": {name: dB}}``.

Schema 2 (issue 16: a LeNet-5 file's metadata is 5% of the file) is schema 1 stored in fewer bytes:

* the measured numbers are rounded (``rounded``): cosines (``cosine_mean``, ``cosine_min``,
  ``min_cosine``) to COSINE_DECIMALS decimals, the digits dcconvert and dcinspect print; every other
  measured float (errors, ``max_abs``, ``top1``, dB) to DIGITS significant digits, one more than they
  print. ``budget`` (the user's number) is kept as given. The report of ``dcconvert --json`` holds the
  same rounded numbers, so that dcinspect prints what dcconvert printed;
* ``compact`` leaves out every field whose value is its default: ``metric_text`` the metric's text,
  ``budget`` / ``within_budget`` null, ``error`` / ``error_output`` those of rel_l2 (``max_rel_l2`` /
  ``worst_output``), ``min_cosine`` the smallest output ``cosine_min``; per output ``samples`` the calibration's,
  ``shape_mismatch`` false, ``nonfinite`` 0, ``kind`` "values", ``decision_error`` the output's
  rel_l2, ``decisions`` / ``decisions_changed`` / ``top1`` / ``top1_positions`` null); ``expand``
  puts them back (a schema 1 record, which has them all, comes back unchanged).
"""


from __future__ import annotations

import math

import numpy as np

METRIC = "rel_l2"  # the default metric
METRIC_TEXT = "relative L2 error ||y - y'|| / ||y|| over all calibration samples, worst output"
METRICS = {
    "rel_l2": METRIC_TEXT,
    "decision": "decision error: outputs that are probabilities (softmax over the last axis, or per-element "
                "sigmoid) by how far their decisions (arg-max; p > 0.5) moved towards changing, others by relative "
                "L2; worst output",
}
SCHEMA = 2  # version of the "fidelity" metadata record (2: rounded numbers, defaults left out; expand reads 1 and 2)
DIGITS = 4  # significant digits of a stored error, max_abs, top-1 agreement or dB (printed with 3)
COSINE_DECIMALS = 6  # decimals of a stored cosine (printed with 6)
COSINES = ("cosine_mean", "cosine_min", "min_cosine")
UNROUNDED = ("budget",)  # the user's --max-error, as given
PROB_TOL = 1e-3  # a softmax output's last-axis sums are within this of 1 on every position
SIGMOID_CUT = 0.5  # a per-element probability's decision


def classifier_like(y: np.ndarray) -> bool:
    return y.dtype.kind == "f" and 2 <= y.ndim <= 3 and 2 <= y.shape[-1] <= 100_000


def output_kind(ref: list) -> str:
    """What one output holds, judged on the original model's outputs (a list of per-sample arrays):
    "softmax" (float, last axis of 2 or more entries, every value in [0, 1] and every last-axis sum
    within PROB_TOL of 1), "sigmoid" (every value in [0, 1], not softmax) or "values" (anything else,
    and outputs with non-finite values)."""
    if not ref:
        return "values"
    arrs = [np.asarray(a) for a in ref]
    if any(a.dtype.kind != "f" or a.size == 0 for a in arrs):
        return "values"
    lo = min(float(np.min(a)) for a in arrs)
    hi = max(float(np.max(a)) for a in arrs)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
        return "values"
    if all(a.ndim >= 1 and a.shape[-1] >= 2 for a in arrs) and all(
            float(np.max(np.abs(np.sum(a, axis=-1, dtype=np.float64) - 1.0))) <= PROB_TOL for a in arrs):
        return "softmax"
    return "sigmoid"


def decision_ratios(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """Per decision (softmax: each position, all axes but the last; sigmoid: each element), how far the
    new output ``b`` moved the original's decision towards changing, relative to its margin: 0 unchanged
    or firmer, 1 at the flip, over 1 changed. Softmax: top class k of ``a``, for every other class l the
    closed share of its gap, ``((a_k - a_l) - (b_k - b_l)) / (a_k - a_l)``, the largest over l;
    sigmoid: ``(|a - c| - s (b - c)) / |a - c|`` with ``c`` = SIGMOID_CUT and ``s`` the side of ``a``.
    A tie (zero margin) counts 1 when the new output leaves it on the other side, else 0."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if kind == "softmax":
        a = a.reshape(-1, a.shape[-1])
        b = b.reshape(-1, b.shape[-1])
        rows = np.arange(a.shape[0])
        k = a.argmax(-1)
        gap = a[rows, k][:, None] - a
        closed = gap - (b[rows, k][:, None] - b)
        gap[rows, k] = np.inf  # the top class itself: no gap to close
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(gap > 0, closed / gap, np.where(closed > 0, 1.0, 0.0))
        r[rows, k] = 0.0
        return np.maximum(r.max(-1), 0.0)
    a = a.reshape(-1) - SIGMOID_CUT
    b = b.reshape(-1) - SIGMOID_CUT
    side = np.where(a >= 0, 1.0, -1.0)
    m = np.abs(a)
    closed = m - side * b
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(m > 0, closed / m, np.where(closed > 0, 1.0, 0.0))
    return np.maximum(r, 0.0)


def compare_output(ref: list, new: list) -> dict:
    """Metrics of one output: ``ref`` and ``new`` are lists of per-sample arrays."""
    shapes_ref = [list(np.shape(a)) for a in ref]
    shapes_new = [list(np.shape(a)) for a in new]
    if len(ref) != len(new) or shapes_ref != shapes_new:
        return {"shape": shapes_ref[0] if shapes_ref else None, "shape_new": shapes_new[0] if shapes_new else None,
                "shape_mismatch": True, "samples": len(ref), "rel_l2": math.inf, "cosine_mean": None,
                "cosine_min": None, "max_abs": None, "top1": None, "nonfinite": 0, "kind": output_kind(ref),
                "decision_error": math.inf, "decisions": None, "decisions_changed": None}
    num = den = 0.0
    cos, max_abs, nonfinite = [], 0.0, 0
    agree = total = 0
    top = bool(ref) and classifier_like(np.asarray(ref[0]))
    for a, b in zip(ref, new):
        a = np.asarray(a, np.float64).reshape(-1)
        b = np.asarray(b, np.float64).reshape(-1)
        fin = np.isfinite(a) & np.isfinite(b)
        if not fin.all():
            nonfinite += int(fin.size - np.count_nonzero(fin))
            a, b = a[fin], b[fin]
        d = a - b
        num += float(d @ d)
        na, nb = float(a @ a), float(b @ b)
        den += na
        if d.size:
            max_abs = max(max_abs, float(np.max(np.abs(d))))
        if na == 0 and nb == 0:
            cos.append(1.0)
        elif na == 0 or nb == 0:
            cos.append(0.0)
        else:
            cos.append(float(np.clip((a @ b) / math.sqrt(na * nb), -1.0, 1.0)))
    if top:
        for a, b in zip(ref, new):
            a, b = np.asarray(a), np.asarray(b)
            agree += int(np.count_nonzero(a.argmax(-1) == b.argmax(-1)))
            total += int(a.size // a.shape[-1])
    rel = math.sqrt(num) / math.sqrt(den) if den > 0 else (0.0 if num == 0 else math.inf)
    kind = output_kind(ref)
    dec = {"decision_error": rel, "decisions": None, "decisions_changed": None}
    if kind != "values" and all(np.isfinite(np.asarray(b)).all() for b in new):
        sq, count, changed = 0.0, 0, 0
        for a, b in zip(ref, new):
            r = decision_ratios(a, b, kind)
            sq += float(np.sum(np.minimum(r, 1.0) ** 2))
            count += r.size
            changed += int(np.count_nonzero(r > 1))
        dec = {"decision_error": math.sqrt(sq / count) if count else 0.0, "decisions": count,
               "decisions_changed": changed}
    elif kind != "values":  # non-finite values where the original had probabilities: the decisions are lost
        dec = {"decision_error": math.inf, "decisions": None, "decisions_changed": None}
    return {"kind": kind, **dec, "shape": shapes_ref[0] if shapes_ref else None, "shape_mismatch": False, "samples": len(ref),
            "rel_l2": rel, "cosine_mean": float(np.mean(cos)) if cos else None,
            "cosine_min": float(np.min(cos)) if cos else None, "max_abs": max_abs,
            "top1": agree / total if top and total else None, "top1_positions": total if top else None,
            "nonfinite": nonfinite}


def output_error(m: dict, metric: str = METRIC) -> float:
    """One output's error under ``metric`` (METRICS): rel_l2, or decision_error."""
    return m["rel_l2"] if metric == "rel_l2" else m["decision_error"]


def compare(ref: dict, new: dict, names=None, metric: str = METRIC) -> dict:
    """Metrics per output (dicts output name -> list of per-sample arrays) and the model's error.

    Returns {"schema", "metric", "outputs": {name: metrics}, "error" (the largest output error under
    ``metric``), "error_output" (that output), "max_rel_l2", "worst_output" (the largest rel_l2 and its
    output), "min_cosine", "samples"}."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
    names = list(ref) if names is None else list(names)
    outs = {n: compare_output(ref[n], new.get(n, [])) for n in names}
    worst = max(outs, key=lambda n: outs[n]["rel_l2"]) if outs else None
    by = max(outs, key=lambda n: output_error(outs[n], metric)) if outs else None
    cosines = [o["cosine_min"] for o in outs.values() if o["cosine_min"] is not None]
    return {"schema": SCHEMA, "metric": metric, "outputs": outs,
            "error": output_error(outs[by], metric) if by else 0.0, "error_output": by,
            "max_rel_l2": outs[worst]["rel_l2"] if worst else 0.0, "worst_output": worst,
            "min_cosine": min(cosines) if cosines else None,
            "samples": next(iter(outs.values()))["samples"] if outs else 0}


def snr_db(ref: np.ndarray, new: np.ndarray) -> float | None:
    """Reconstruction signal-to-noise ratio of a tensor in dB (inf when exact, None when the tensor is zero)."""
    a = np.asarray(ref, np.float64).reshape(-1)
    b = np.asarray(new, np.float64).reshape(-1)
    fin = np.isfinite(a) & np.isfinite(b)
    a, b = a[fin], b[fin]
    sig = float(a @ a)
    d = a - b
    noise = float(d @ d)
    if sig == 0:
        return None
    return math.inf if noise == 0 else 10 * math.log10(sig / noise)


def _g(x) -> str:
    return x if isinstance(x, str) else f"{x:.3g}"


def json_safe(x):
    """The metrics with inf/nan as strings (JSON has no infinity)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "-inf" if x < 0 else "nan"
    return x


def lines(fid: dict, indent: str = "") -> list[str]:
    """Human-readable lines, one per output (of a full or a stored record)."""
    fid = expand(fid)
    out = []
    for name, m in fid["outputs"].items():
        if m["shape_mismatch"]:
            out.append(f"{indent}{name}: shapes differ {m['shape']} vs {m.get('shape_new')}")
            continue
        s = (f"{indent}{name}: rel. L2 error {m['rel_l2']:.3g}, cosine mean {m['cosine_mean']:.6f} "
             f"min {m['cosine_min']:.6f}, max abs diff {m['max_abs']:.3g}")
        if m["top1"] is not None:
            s += f", top-1 agreement {m['top1']:.1%} of {m['top1_positions']}"
        if m.get("decisions"):
            s += (f"; {m['kind']} decisions: {m['decisions_changed']} of {m['decisions']} changed, "
                  f"decision error {_g(m['decision_error'])}")
        if m["nonfinite"]:
            s += f" ({m['nonfinite']} non-finite elements left out)"
        out.append(s)
    return out


def _round(x, key=None):
    if isinstance(x, dict):
        return {k: (v if k in UNROUNDED else _round(v, k)) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v, key) for v in x]
    if isinstance(x, float) and math.isfinite(x):
        return round(x, COSINE_DECIMALS) if key in COSINES else float(f"{x:.{DIGITS}g}")
    return x


def rounded(fid: dict) -> dict:
    """The record with its measured floats rounded as schema 2 stores them (module docstring); ints,
    strings, non-finite values and ``budget`` unchanged."""
    return {**_round(fid), "schema": SCHEMA} if isinstance(fid, dict) else fid


def _defaults(fid: dict) -> dict:
    """The top-level fields compact leaves out when they hold these values (derived from the others)."""
    outs = fid.get("outputs") or {}
    cos = [o.get("cosine_min") for o in outs.values() if isinstance(o, dict) and o.get("cosine_min") is not None]
    return {"metric_text": METRICS.get(fid.get("metric", METRIC)), "budget": None, "within_budget": None,
            "error": fid.get("max_rel_l2"), "error_output": fid.get("worst_output"),
            "min_cosine": min(cos) if cos else None}


def _output_defaults(o: dict, samples) -> dict:
    return {"samples": samples, "shape_mismatch": False, "nonfinite": 0, "kind": "values",
            "decision_error": o.get("rel_l2"), "decisions": None, "decisions_changed": None, "top1": None,
            "top1_positions": None}


def compact(fid: dict) -> dict:
    """The record as dcconvert stores it in the metadata: every field holding its default left out
    (module docstring); expand(compact(r)) == r. Records that are not measured ones are kept whole."""
    if not (isinstance(fid, dict) and fid.get("measured") and isinstance(fid.get("outputs"), dict)):
        return fid
    samples = (fid.get("calibration") or {}).get("samples")
    outs = {}
    for name, o in fid["outputs"].items():
        d = _output_defaults(o, samples)
        outs[name] = {k: v for k, v in o.items() if not (k in d and _same(v, d[k]))}
    d = _defaults(fid)
    return {k: (outs if k == "outputs" else v) for k, v in fid.items() if not (k in d and _same(v, d[k]))}


def expand(fid):
    """The full record of a stored one (compact's inverse; a schema 1 record has every field already)."""
    if not (isinstance(fid, dict) and fid.get("measured") and isinstance(fid.get("outputs"), dict)):
        return fid
    samples = (fid.get("calibration") or {}).get("samples")
    outs = {}
    for name, o in fid["outputs"].items():
        outs[name] = {**_output_defaults(o, samples), **o} if isinstance(o, dict) else o
    full = {**fid, "outputs": outs}
    return {**_defaults(full), **full}


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b

"""Per-layer rate-accuracy allocation for tools/bench_ecvq.py: each tensor its own (bits, ECVQ strength), biases
exact or shared, chosen on a validation split of the *training* images (never the test set).

Without pruning by magnitude and without error compensation (``--sparsity 0 --no-compensate``), each tensor's
weight sharing depends on that tensor alone, and its encoding is per tensor: a tensor's decoded values and its
bytes are the same in a file where every tensor has the same setting as in one of mixed settings. So the uniform
grid files of the benchmark already hold every tensor's options: its bytes (the converter's per-tensor report) and
its decoded values (read back from the file). For each option the model is run in ONNX Runtime on the validation
images with that one tensor replaced (the others float): the distortion of the option is the increase of the
validation cross-entropy (and, for a second path, of the validation error rate). Options a tensor has that are
not on its own lower convex hull of (bytes, distortion) can never be chosen by a Lagrangian allocation; the
allocation for multiplier ``lam`` takes per tensor the option minimising ``distortion + lam x bytes``, and sweeping
``lam`` over every breakpoint of the tensors' hulls walks the lower convex hull of the sum (the classic greedy:
one tensor moves one hull step at a time, the step of least distortion per byte first). Between the hull's vertices,
where no multiplier stops, a multiple-choice knapsack (dynamic programming over the bytes) gives the allocation of
least summed distortion within each of a sequence of byte budgets 0.5% apart, over the range where the validation
accuracy is within 3 points of the float model's. Every allocation found is run on the validation images with all
its tensors replaced; those on the Pareto front of (estimated bytes, validation accuracy) are the per-layer points the benchmark converts through dcconvert's own path (patterns
``--bits NAME=B``, ``--ecvq NAME=S``, ``--role NAME=fc``) and scores on the test images like every other point.
"""

from __future__ import annotations

import math

import numpy as np

EXACT = "exact"


def option_key(point: dict, name: str, is_bias: bool):
    """The setting a uniform grid point gave tensor ``name``: ("w", bits, S), a bias's ("b", bits, S) or EXACT."""
    if is_bias:
        return ("b", point["bias_bits"], point.get("bias_strength", point["strength"])) if point.get("bias_bits") \
            else EXACT
    return ("w", point["bits"], point["strength"])


def collect_options(points: list[dict], names: list[str], biases: set[str]) -> dict[str, dict]:
    """``{tensor: {key: {"bytes", "path"}}}`` from the grid's files (one file per distinct option suffices)."""
    out: dict[str, dict] = {n: {} for n in names}
    for p in points:
        lay = {r["name"]: r["bytes"] for r in p["layers"]}
        for n in names:
            k = option_key(p, n, n in biases)
            if n in lay and k not in out[n]:
                out[n][k] = {"bytes": int(lay[n]), "path": p["path"]}
    return out


def decoded(path: str, name: str) -> np.ndarray:
    import dcformat

    r = dcformat.open(path)
    try:
        return np.asarray(r[name], np.float32)
    finally:
        r.close()


class Evaluator:
    """The model in ONNX Runtime on fixed validation images, with some initializers replaced."""

    def __init__(self, onnx_path: str, x: np.ndarray, y: np.ndarray):
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load(onnx_path)
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.float = {n: numpy_helper.to_array(t) for n, t in self.inits.items()}
        self.x, self.y = np.asarray(x, np.float32).reshape(-1, 28, 28), np.asarray(y, np.int64)
        self.runs = 0

    def __call__(self, weights: dict) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in %) with ``weights`` in place of the float initializers."""
        import onnxruntime as ort
        from onnx import numpy_helper

        saved = {}
        for n, a in weights.items():
            t = self.inits[n]
            saved[n] = numpy_helper.from_array(self.float[n], n)
            t.CopyFrom(numpy_helper.from_array(np.asarray(a, np.float32).reshape(tuple(t.dims)), n))
        try:
            blob = self.model.SerializeToString()
        finally:
            for n, t in saved.items():
                self.inits[n].CopyFrom(t)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(blob, sess_options=so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        logits = np.concatenate([sess.run(None, {name: self.x[i : i + 2500]})[0] for i in range(0, len(self.x), 2500)])
        logits = logits.astype(np.float64)
        m = logits.max(1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(1)))
        nll = float(np.mean(lse - logits[np.arange(len(self.y)), self.y]))
        self.runs += 1
        return nll, float((logits.argmax(1) == self.y).mean() * 100)


def _pareto(opts: dict, dkey: str) -> list:
    """Keys of options not dominated in (bytes, dkey): sorted by bytes."""
    out, best = [], math.inf
    for k, o in sorted(opts.items(), key=lambda kv: (kv[1]["bytes"], kv[1][dkey])):
        if o[dkey] < best - 1e-15:
            out.append(k)
            best = o[dkey]
    return out


def _hull(opts: dict, dkey: str) -> list:
    """Lower convex hull of (bytes, distortion), from the most bytes (least distortion) to the fewest bytes."""
    pts = [(opts[k]["bytes"], opts[k][dkey], k) for k in _pareto(opts, dkey)]
    pts.sort(key=lambda t: -t[0])  # most bytes first: distortion ascending along the Pareto front
    hull: list = []
    for p in pts:
        while len(hull) >= 2:
            (r1, d1, _), (r2, d2, _) = hull[-2], hull[-1]
            # keep hull[-1] only if the slope (distortion per byte saved) rises from it on
            s12 = (d2 - d1) / (r1 - r2)
            s23 = (p[1] - d2) / (r2 - p[0])
            if s23 <= s12:
                hull.pop()
            else:
                break
        hull.append(p)
    return [k for _, _, k in hull]


def greedy_path(opts: dict[str, dict], dkey: str) -> list[dict]:
    """Allocations (tensor -> option key) along the Lagrangian path: all tensors at their least-distortion hull
    option, then one hull step at a time, the step with the least distortion per byte saved first."""
    hulls = {n: _hull(o, dkey) for n, o in opts.items() if o}
    pos = {n: 0 for n in hulls}
    steps = []
    for n, h in hulls.items():
        for i in range(1, len(h)):
            a, b = opts[n][h[i - 1]], opts[n][h[i]]
            steps.append(((b[dkey] - a[dkey]) / max(a["bytes"] - b["bytes"], 1e-9), n, i))
    steps.sort(key=lambda t: (t[0], t[1], t[2]))  # convex hulls: each tensor's steps come in order
    path = [{n: h[0] for n, h in hulls.items()}]
    for _, n, i in steps:
        pos[n] = i
        path.append({m: hulls[m][pos[m]] for m in hulls})
    return path


def knapsack(opts: dict[str, dict], dkey: str, budgets, unit: int = 4) -> list[dict]:
    """For each byte budget, the allocation of least summed distortion within it (multiple-choice knapsack, by
    dynamic programming over the bytes in ``unit``-byte steps): the points between the convex hull's vertices,
    where a Lagrangian sweep cannot stop. One entry per budget (None where nothing fits)."""
    names = [n for n in sorted(opts) if opts[n]]
    cap = int(max(budgets) // unit) + 1
    inf = np.inf
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    choice = []
    for n in names:
        keys = _pareto(opts[n], dkey)
        new = np.full(cap + 1, inf)
        arg = np.full(cap + 1, -1, np.int64)
        for i, k in enumerate(keys):
            r = -(-opts[n][k]["bytes"] // unit)  # rounded up: the estimate stays within the budget
            if r > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[r:] = dp[: cap + 1 - r] + opts[n][k][dkey]
            better = cand < new
            new[better], arg[better] = cand[better], i
        dp = new
        choice.append((n, keys, arg))
    best_le = np.minimum.accumulate(dp)  # within the budget: the best over every total <= it
    at = np.zeros(cap + 1, np.int64)
    for c in range(1, cap + 1):
        at[c] = c if dp[c] <= best_le[c - 1] else at[c - 1]
    out = []
    for b in budgets:
        c = min(int(b // unit), cap)
        if not np.isfinite(best_le[c]):
            out.append(None)  # no allocation fits
            continue
        c = int(at[c])
        alloc = {}
        for n, keys, arg in reversed(choice):
            i = int(arg[c])
            k = keys[i]
            alloc[n] = k
            c -= -(-opts[n][k]["bytes"] // unit)
        out.append(dict(sorted(alloc.items())))
    return out


MARGIN = 3.0  # points per cent of validation accuracy below the float model's: the range the allocations cover
STEP = 0.005  # relative step of the knapsack's byte budgets


def allocate(onnx_path: str, points: list[dict], x_val, y_val, log=print, margin: float = MARGIN,
             step: float = STEP) -> dict:
    """Measure every tensor's options on the validation images, walk the Lagrangian paths and solve the knapsacks.

    Returns ``{"options": per-tensor options (bytes, validation distortion), "candidates": [allocation, estimated
    bytes, validation nll/accuracy], "val_float": (nll, acc)}``; the candidates are the validation Pareto front."""
    ev = Evaluator(onnx_path, x_val, y_val)
    names = [r["name"] for r in points[0]["layers"] if r["name"] in ev.float and ev.float[r["name"]].size > 1]
    biases = {n for n in names if n.endswith("bias")}
    opts = collect_options(points, names, biases)
    opts = {n: o for n, o in opts.items() if len(o) > 1}  # tensors with a choice (not the reshape constant)
    nll0, acc0 = ev({})
    log(f"per-layer: validation float {acc0:.2f}% (nll {nll0:.4f}); {sum(map(len, opts.values()))} options of "
        f"{len(opts)} tensors")
    values: dict = {}
    for n, o in opts.items():
        ref = ev.float[n].astype(np.float64)
        for k, v in o.items():
            q = decoded(v["path"], n)
            v["sse"] = float(np.sum((q.astype(np.float64).reshape(ref.shape) - ref) ** 2))
            values[(n, k)] = q
        # an option with more bytes and more weight error than another is never worth a model run
        keep = set(_pareto(o, "sse"))
        for k in list(o):
            if k not in keep:
                del o[k]
                values.pop((n, k), None)
        for k, v in o.items():
            nll, acc = ev({n: values[(n, k)]})
            v["d_nll"], v["d_err"] = nll - nll0, acc0 - acc
    seen, cands = set(), []

    def run(allocs):
        for alloc in allocs:
            key = tuple(sorted(alloc.items(), key=lambda kv: kv[0]))
            if key in seen:
                continue
            seen.add(key)
            nll, acc = ev({n: values[(n, k)] for n, k in alloc.items()})
            est = sum(opts[n][k]["bytes"] for n, k in alloc.items())
            cands.append({"alloc": dict(alloc), "tensor_bytes": est, "val_nll": nll, "val_accuracy": acc})

    run(greedy_path(opts, "d_nll") + greedy_path(opts, "d_err"))  # the convex hull's vertices
    # between them, in the range that matters (validation accuracy within MARGIN of the float model's, up to the
    # first allocation that matches it): the knapsack optimum at budgets STEP apart
    ok = [c["tensor_bytes"] for c in cands if c["val_accuracy"] >= acc0 - margin]
    top = [c["tensor_bytes"] for c in cands if c["val_accuracy"] >= acc0]
    if ok:
        lo, hi = 0.9 * min(ok), (min(top) if top else max(ok))
        budgets = np.geomspace(lo, max(hi, lo * 1.01), int(math.log(max(hi, lo * 1.01) / lo) / math.log1p(step)) + 2)
        run([a for a in knapsack(opts, "d_nll", budgets) + knapsack(opts, "d_err", budgets) if a is not None])
    # the validation Pareto front of (bytes, accuracy), within the margin: the only allocations worth a file
    front, best = [], -math.inf
    for c in sorted(cands, key=lambda c: (c["tensor_bytes"], -c["val_accuracy"])):
        if c["val_accuracy"] > best + 1e-9:
            best = c["val_accuracy"]
            if c["val_accuracy"] >= acc0 - margin:
                front.append(c)
    log(f"per-layer: {len(cands)} allocations (hull vertices and knapsack optima), {len(front)} on the validation front "
        f"({ev.runs} validation runs)")
    return {"options": {n: [{"key": list(k) if isinstance(k, tuple) else k,
                             **{a: v[a] for a in ("bytes", "sse", "d_nll", "d_err")}} for k, v in o.items()]
                        for n, o in opts.items()},
            "candidates": front, "all_candidates": len(cands), "val_float": [nll0, acc0], "val_runs": ev.runs}


def _patterns(want: dict, free: set, fmt) -> str:
    """The shortest ``PATTERN=V,...,DEFAULT`` text giving each name of ``want`` its value (names in ``free`` may get
    any): a default, optionally a ``*bias`` glob, and exact names for the rest (patterns match first-to-last)."""
    names = sorted(set(want) | free)
    vals = sorted(set(want.values()), key=str)
    best = None
    for d in vals:
        for g in [None] + vals:
            items = []
            for n in names:
                eff = g if (g is not None and n.endswith("bias")) else d
                if n in want and want[n] != eff:
                    items.append(f"{n}={fmt(want[n])}")
            if g is not None:
                if not any(n.endswith("bias") and n in want and want[n] == g for n in names):
                    continue  # the glob would only add text
                items.append(f"*bias={fmt(g)}")
            text = ",".join(items + [fmt(d)])
            if best is None or len(text) < len(best):
                best = text
    return best or fmt(8)


def settings_text(alloc: dict) -> dict:
    """dcconvert's ``--bits`` / ``--ecvq`` / ``--role`` texts for an allocation, as short as the patterns allow
    (they are stored in the file's metadata): exact biases keep their role; shared ones get ``--role NAME=fc``
    (or ``*bias=fc``, with the exact ones named ``=bias`` before it, where that is shorter)."""
    shared = {n: k for n, k in alloc.items() if k != EXACT}
    exact = {n for n, k in alloc.items() if k == EXACT}
    bits = _patterns({n: k[1] for n, k in shared.items()}, exact, str)
    ecvq = _patterns({n: float(k[2]) for n, k in shared.items()}, exact, lambda v: f"{v:g}")
    sb = sorted(n for n in shared if n.endswith("bias"))
    eb = sorted(n for n in exact if n.endswith("bias"))
    role_a = ",".join(f"{n}=fc" for n in sb)
    role_b = ",".join([f"{n}=bias" for n in eb] + ["*bias=fc"]) if sb else ""
    role = role_b if (sb and len(role_b) < len(role_a)) else role_a
    return {"bits": bits, "ecvq": ecvq, "role": role}


def label(alloc: dict) -> str:
    """Short description: tensor:bits/S, exact biases as '='."""
    parts = []
    for n, k in alloc.items():
        short = n.replace(".weight", "").replace(".bias", ".b")
        parts.append(f"{short} =" if k == EXACT else f"{short} {k[1]}/{k[2]:g}")
    return "per-layer: " + ", ".join(parts)

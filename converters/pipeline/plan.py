"""Choosing per-layer sparsity and bits: the sensitivity scan and the knapsack planner within an accuracy budget."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..budget import estimate_bytes  # one estimate for both budget searches (re-exported here)
from ..prune import magnitude_mask
from ..quantize import quantize
from .config import SCAN_BITS, SCAN_SPARSITIES
from .masks import layers
from .metrics import Evaluate, _evaluate
from .train import Progress

@dataclass
class Scan:
    """Accuracy with one layer pruned (or quantized) and the others dense, per layer."""

    dense: float
    sparsity: dict = field(default_factory=dict)  # layer -> [[sparsity, accuracy], ...]
    bits: dict = field(default_factory=dict)  # layer -> [[bits, accuracy], ...]
    params: dict = field(default_factory=dict)  # layer -> number of weights

    def to_json(self) -> dict:
        return asdict(self)


def sensitivity_scan(model: nn.Module, evaluate: Evaluate, names: Iterable[str] | None = None, *,
                     sparsities=SCAN_SPARSITIES, bits=SCAN_BITS, init: str = "linear", seed: int = 0,
                     progress: Progress | None = None) -> Scan:
    """For each layer alone (others dense, no retraining): accuracy vs sparsity (magnitude
    pruning) and accuracy vs bits (k-means weight sharing). The model is left unchanged."""
    info = layers(model)
    names = list(info) if names is None else list(names)
    scan = Scan(dense=_evaluate(model, evaluate))
    for name in names:
        p = info[name].param
        saved = p.detach().clone()
        w = saved.cpu().numpy()
        scan.params[name] = int(p.numel())
        pts = []
        for s in sparsities:
            with torch.no_grad():
                p.copy_(torch.from_numpy(np.where(magnitude_mask(w, s), w, np.float32(0))))
            pts.append([float(s), _evaluate(model, evaluate)])
        scan.sparsity[name] = pts
        pts = []
        for b in bits:
            cb, ix = quantize(w, int(b), init=init, seed=seed)
            with torch.no_grad():
                p.copy_(torch.from_numpy(cb.astype(np.float32)[ix]))
            pts.append([int(b), _evaluate(model, evaluate)])
        scan.bits[name] = pts
        with torch.no_grad():
            p.copy_(saved)
        if progress:
            progress({"kind": "stage", "phase": "scan", "layer": name,
                      "message": f"scanned {name}: " + ", ".join(f"{s:.0%} {a:.1f}" for s, a in scan.sparsity[name])
                      + " | " + ", ".join(f"{b}b {a:.1f}" for b, a in scan.bits[name])})
    return scan


def _interp(points, x) -> float:
    xs, ys = zip(*sorted(points))
    return float(np.interp(x, xs, ys))


def choose_plan(scan: Scan, budget: float, fixed_sparsity: Mapping[str, float] | None = None,
                fixed_bits: Mapping[str, int] | None = None) -> dict:
    """Per-layer sparsity and bits minimising the estimated bytes with the summed per-layer
    accuracy drops (from the scan) within ``budget`` points: a multiple-choice knapsack solved
    by a Lagrangian search plus a greedy pass spending the remaining budget.

    Returns {layer: {"sparsity", "bits", "drop", "bytes"}}."""
    fixed_sparsity, fixed_bits = dict(fixed_sparsity or {}), dict(fixed_bits or {})
    options = {}
    for name, n in scan.params.items():
        spts = [[0.0, scan.dense]] + [list(p) for p in scan.sparsity[name]]
        bpts = [list(p) for p in scan.bits[name]]
        ss = [fixed_sparsity[name]] if name in fixed_sparsity else [s for s, _ in spts]
        bs = [fixed_bits[name]] if name in fixed_bits else [b for b, _ in bpts]
        opts = []
        for s in ss:
            ds = max(0.0, scan.dense - _interp(spts, s))
            for b in bs:
                db = max(0.0, scan.dense - _interp(bpts, b)) if bpts else 0.0
                opts.append({"sparsity": float(s), "bits": int(b), "drop": ds + db, "bytes": estimate_bytes(n, s, b)})
        options[name] = opts

    from ..knapsack import plan as knapsack

    plan = knapsack(options, "drop", budget, tiebreak=lambda c: (-c["bits"], c["sparsity"]), price_limit=1e15,
                    iterations=60, slack=1e-12, min_cost=1e-6)
    return {n: dict(c) for n, c in plan.items()}

"""Stage 1, pruning with retraining: the sparsity schedule (:func:`iterative_prune`) and weight-vs-neuron curves."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

from torch import nn

from . import dist
from .config import CURVE_FRACTIONS, Settings
from .masks import Masks, apply_masks, layers, magnitude_masks, neuron_masks, sparsity
from .metrics import Evaluate, _evaluate
from .train import Progress, train


def iterative_prune(model: nn.Module, data, targets: Mapping[str, float], settings: Settings, *,
                    neurons: Mapping[str, float] | None = None, evaluate: Evaluate | None = None,
                    progress: Progress | None = None, loss_fn=None, masks: Masks | None = None,
                    unit: str = "%", done: int = 0, history: list | None = None,
                    on_step: Callable[[int, Masks, list], None] | None = None) -> tuple[Masks, list]:
    """Prune to ``targets`` in the steps of ``settings.schedule``, retraining with masks after each.

    With ``settings.separate_phases`` the conv layers go through the schedule first, then the
    fully connected ones (the conv masks staying in force). Returns (masks, history).

    Resuming: with ``done`` steps already taken (``masks`` and the model as they were after step
    ``done``, ``history`` its rows) the schedule goes on from step ``done + 1``. ``on_step(k, masks,
    history)`` is called after every step (to save the state). In a multi-process run the masks
    are rank 0's on every rank."""
    info = layers(model)
    neurons = dict(neurons or {})
    masks = dict(masks or {})
    names = [n for n in targets if targets[n] or neurons.get(n)]
    if not names:
        return masks, []
    if settings.separate_phases:
        phases = [("conv", [n for n in names if info[n].role == "conv"]), ("fc", [n for n in names if info[n].role == "fc"])]
        phases = [p for p in phases if p[1]]
    else:
        phases = [("all", names)]
    history = list(history or [])
    k = 0
    for phase, pnames in phases:
        for frac in settings.schedule:
            k += 1
            if k <= done:
                continue
            step_targets = {n: targets[n] * frac for n in pnames}
            masks = neuron_masks(model, {n: neurons.get(n, 0) * frac for n in pnames}, masks)
            apply_masks(model, masks)
            masks = magnitude_masks(model, step_targets, masks)
            dist.same_tensors(masks.values())
            apply_masks(model, masks)
            label = f"{phase} step {k}" if settings.separate_phases else f"step {k}"
            acc0 = _evaluate(model, evaluate) if evaluate else None
            rows = train(model, data, settings.retrain_epochs, lr=settings.retrain_lr_, optimizer=settings.optimizer,
                         masks=masks, l1=settings.l1, l2=settings.l2, batch_size=settings.batch_size,
                         seed=settings.seed + 1000 + k, loss_fn=loss_fn, evaluate=evaluate, progress=progress,
                         phase="retrain", step=label, prox=settings.prox_l1, workers=settings.workers)
            acc = rows[-1]["accuracy"] if rows else acc0
            event = {"kind": "stage", "phase": "prune", "step": label, "fraction": frac, "sparsity": sparsity(model),
                     "accuracy_pruned": acc0, "accuracy": acc,
                     "message": f"pruned to {sparsity(model):.1%} ({label}, {frac:.0%} of the targets): "
                                + (f"{acc0:.2f}{unit}, retrained {acc:.2f}{unit}" if acc0 is not None and rows else
                                   f"{acc:.2f}{unit}" if acc is not None else "")}
            history.append({**event, "epochs": rows})
            if on_step:
                on_step(k, masks, history)
            if progress:
                progress(event)
    return masks, history


def pruning_curves(model: nn.Module, evaluate: Evaluate, fractions=CURVE_FRACTIONS, methods=("weight", "neuron"), *,
                   names: Iterable[str] | None = None, include_output: bool = False, data=None,
                   retrain_epochs: int = 0, settings: Settings | None = None, loss_fn=None,
                   progress: Progress | None = None) -> dict:
    """Accuracy vs pruned fraction for weight (magnitude) and neuron (L2-norm rows/filters) pruning.

    Each point starts from the model as given: every selected layer loses ``fraction`` of its
    weights (``weight``) or of its output neurons (``neuron``); by default all compressible
    layers but the output layer, whose rows are the classes. With ``data`` and
    ``retrain_epochs`` the network is retrained with the masks before measuring. The model
    is restored afterwards. Returns {"dense": acc, "layers": [...], method: [{fraction,
    sparsity, accuracy, retrained}, ...]}."""
    s = settings or Settings()
    info = layers(model)
    names = list(names) if names is not None else [n for n in info if include_output or n != list(info)[-1]]
    state = copy.deepcopy(model.state_dict())
    curves = {"dense": _evaluate(model, evaluate), "layers": names}
    for method in methods:
        if method not in ("weight", "neuron"):
            raise ValueError(f"unknown pruning method {method!r}: weight or neuron")
        pts = []
        for f in fractions:
            model.load_state_dict(state)
            if method == "weight":
                masks = magnitude_masks(model, {n: f for n in names})
            else:
                masks = neuron_masks(model, {n: f for n in names})
            apply_masks(model, masks)
            pt = {"fraction": float(f), "sparsity": sparsity(model, names), "accuracy": _evaluate(model, evaluate),
                  "retrained": None}
            if data is not None and retrain_epochs:
                train(model, data, retrain_epochs, lr=s.retrain_lr_, optimizer=s.optimizer, masks=masks,
                      l1=s.l1, l2=s.l2, batch_size=s.batch_size, seed=s.seed, loss_fn=loss_fn)
                pt["retrained"] = _evaluate(model, evaluate)
            pts.append(pt)
            if progress:
                progress({"kind": "stage", "phase": "curve", "method": method, **pt,
                          "message": f"{method} pruning {f:.0%}: accuracy {pt['accuracy']:.2f}%"
                          + (f", retrained {pt['retrained']:.2f}%" if pt["retrained"] is not None else "")})
        curves[method] = pts
    model.load_state_dict(state)
    return curves

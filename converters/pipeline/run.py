"""deep_compress: the stages in order (train, plan, prune + retrain, share + fine-tune, write) and its Result."""

from __future__ import annotations

import copy
import fnmatch
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import dcformat

from ..errors import ConvertError
from ..settings import SettingError
from .config import DEFAULT_BITS, DEFAULT_SPARSITY, Settings
from .export import write_dcz
from . import dist, resume
from .loaders import first_batch, model_device
from .masks import layers
from .metrics import _evaluate, accuracy_fn
from .plan import Scan, choose_plan, estimate_bytes, sensitivity_scan
from .pruning import iterative_prune
from .report import _emit, plot_scan, save_report
from .share import Quantized, finetune_centroids, quantize_layers
from .train import Progress, train


@dataclass
class Result:
    model: nn.Module
    quantized: dict  # layer -> Quantized (the exact stored codebooks and indices)
    masks: dict
    accuracy: dict  # dense, pruned, quantized, compressed
    plan: dict  # layer -> {role, params, sparsity, bits, neurons}
    settings: dict
    scan: Scan | None = None
    attempts: list = field(default_factory=list)
    history: list = field(default_factory=list)
    path: str | None = None
    dcz_bytes: int | None = None
    onnx_bytes: int | None = None
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    params: int = 0
    within_budget: bool | None = None

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.params

    def report(self) -> dict:
        """JSON-able summary."""
        return {"path": self.path, "dcz_bytes": self.dcz_bytes, "onnx_bytes": self.onnx_bytes, "params": self.params, "fp32_bytes": self.fp32_bytes,
                "ratio": self.fp32_bytes / self.dcz_bytes if self.dcz_bytes else None,
                "accuracy": self.accuracy, "within_budget": self.within_budget, "plan": self.plan,
                "settings": self.settings, "scan": self.scan.to_json() if self.scan else None,
                "attempts": self.attempts, "layers": self.rows, "notes": self.notes, "seconds": self.seconds,
                "history": [{k: v for k, v in h.items()} for h in self.history]}


def _r(x):
    return None if x is None else round(float(x), 4)


def _save_quantized(quantized: dict) -> dict:
    return {n: {"codebook": torch.from_numpy(q.codebook.copy()), "indices": torch.from_numpy(q.indices.astype(np.int32)),
                "dtype": q.indices.dtype.str, "bits": q.bits} for n, q in quantized.items()}


def _load_quantized(saved: dict) -> dict:
    return {n: Quantized(q["codebook"].numpy().astype(np.float32), q["indices"].numpy().astype(np.dtype(q["dtype"])),
                         int(q["bits"])) for n, q in saved.items()}


def _same_codebooks(model, quantized: dict) -> None:
    """In a multi-process run: rank 0's codebooks and indices (and so weights) on every rank."""
    if not dist.active():
        return
    params = dict(model.named_parameters())
    for name, q in quantized.items():
        cb, ix = torch.from_numpy(q.codebook.copy()), torch.from_numpy(q.indices.astype(np.int64))
        dist.same_tensors([cb, ix])
        q.codebook, q.indices = cb.numpy(), ix.numpy().astype(q.indices.dtype)
        with torch.no_grad():
            params[name].copy_(torch.from_numpy(q.values()))


def deep_compress(model: nn.Module, data, evaluate, settings: Settings | None = None, *, out=None,
                  input_shape=None, progress: Progress | None = None, report_dir=None, loss_fn=None,
                  source=None, dataset: str | None = None, metric: str = "accuracy", unit: str = "%",
                  state=None) -> Result:
    """Prune (with retraining), share weights (with centroid fine-tuning) and write ``out``.

    ``data`` (training): (x, y) tensors / arrays, a map-style Dataset of (input, target) (batched
    with ``settings.batch_size`` and shuffled here, reproducibly) or a DataLoader / iterable of
    batches (used as given). ``loss_fn(output, target)`` (default cross-entropy) is what training
    minimises. ``evaluate(model) -> float`` is the score to keep, higher is better (e.g.
    :func:`accuracy_fn` over a held-out split, or :func:`negative_loss_fn`); held-out data (arrays,
    a Dataset or a DataLoader) in its place means top-1 accuracy over it. ``metric`` and ``unit``
    name the score in messages and metadata; ``settings.max_accuracy_drop`` is in its units.

    The model is changed in place (and returned in the result). With ``settings.max_accuracy_drop`` a
    sensitivity scan chooses each layer's sparsity and bits (values given in ``settings``
    for a layer are kept) and the result is checked against the budget, retrying with a
    smaller scan budget when over it. ``input_shape`` (for the ONNX export) defaults to the
    shape of one training sample with batch 1. ``report_dir`` receives report.json and the
    sensitivity plots.

    ``state``: a file to save the run's state in after every stage (atomically); when it exists the
    run resumes from it and ends with the same file as an uninterrupted run. It is removed once
    ``out`` is written. In a multi-process run (torch.distributed, e.g. under torchrun) every
    rank runs this function; only rank 0 reports progress and writes files."""
    s = settings or Settings()
    t_start = time.perf_counter()
    seconds = {}
    torch.manual_seed(s.seed)
    if not callable(evaluate):
        evaluate = accuracy_fn(evaluate)
    if not dist.is_main():
        progress = None
    info = layers(model, s.min_size)
    if not info:
        raise ConvertError("the model has no nn.Linear / nn.Conv weights to compress")
    names = list(info)
    for st in (s.sparsity, s.bits, s.ecvq, s.prune_neurons):
        for pat, _ in st.patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise SettingError(f"{st.option}: pattern {pat!r} matches no layer (layers: {', '.join(names)})")
    if input_shape is None:
        x0, _ = first_batch(data)
        input_shape = (1, *x0.shape[1:])
    input_shape = tuple(int(d) for d in input_shape)
    dev = model_device(model)

    # resuming: the latest saved state, restored now; the stages it covers are skipped below
    saver = resume.State(state, resume.fingerprint(model, data, s.describe(), input_shape) if state else "")
    saved = saver.load()
    reached = saved["stage"] if saved else None

    def done(stage) -> bool:
        return reached is not None and reached >= stage

    carry = {}  # what every later state holds

    def save(stage, **fields):
        saver.save(stage, {**carry, "model": model.state_dict(), **fields})

    history = []
    if saved:
        model.load_state_dict(saved["model"])
        torch.set_rng_state(saved["rng"])
        carry = {k: saved[k] for k in ("dense_acc", "history", "seconds", "scan", "dense_state", "attempts",
                                       "result") if k in saved}
        history, seconds = carry["history"], carry["seconds"]
        _emit(progress, f"resuming from {saver.path}: saved after {resume.describe(reached)}", phase="resume")

    if not done(resume.TRAINED):
        carry.update(history=history, seconds=seconds)
        if s.epochs:
            t0 = time.perf_counter()
            if reached is None:
                _emit(progress, f"training the dense model for {s.epochs} epochs", phase="train")
            history += train(model, data, s.epochs, lr=s.lr, optimizer=s.optimizer, batch_size=s.batch_size,
                             seed=s.seed, loss_fn=loss_fn, evaluate=evaluate, progress=progress, phase="train",
                             prox=s.prox_l1, workers=s.workers, resume_from=saved.get("dense_epoch") if saved else None,
                             on_epoch=(lambda ep: save(resume.trained_epoch(ep["epoch"]), dense_epoch=ep)) if state
                             else None)
            seconds["train"] = seconds.get("train", 0.0) + time.perf_counter() - t0
        carry.update(dense_acc=_evaluate(model, evaluate))
        save(resume.TRAINED)
    dense_acc = carry["dense_acc"]
    _emit(progress, f"dense model: {metric} {dense_acc:.2f}{unit}", phase="dense", accuracy=dense_acc)

    fixed_s = {n: s.sparsity.get(n) for n in names if s.sparsity.get(n) is not None}
    fixed_b = {n: s.bits.get(n) for n in names if s.bits.get(n) is not None}
    neurons = {n: s.prune_neurons.get(n, 0.0) for n in names}
    scan = None
    if s.max_accuracy_drop is not None:
        if done(resume.SCANNED):
            scan = Scan(**carry["scan"])
        else:
            t0 = time.perf_counter()
            _emit(progress, f"sensitivity scan of {len(names)} layers (sparsity "
                            f"{', '.join(f'{x:g}' for x in s.scan_sparsities)}; "
                            f"bits {', '.join(map(str, s.scan_bits))})", phase="scan")
            scan = sensitivity_scan(model, evaluate, [n for n in names if not (n in fixed_s and n in fixed_b)],
                                    sparsities=s.scan_sparsities, bits=s.scan_bits, init=s.init, seed=s.seed,
                                    progress=progress)
            for n in names:  # fully fixed layers: a single option, no drop estimate
                if n not in scan.params:
                    scan.params[n] = info[n].numel
                    scan.sparsity[n] = [[fixed_s[n], scan.dense]]
                    scan.bits[n] = [[fixed_b[n], scan.dense]]
            seconds["scan"] = time.perf_counter() - t0
        if report_dir and dist.is_main():
            plot_scan(scan, report_dir)
        budgets = [s.max_accuracy_drop * s.scan_slack / (2 ** i) for i in range(s.max_backoff + 1)]
        plans = [choose_plan(scan, b, fixed_s, fixed_b) for b in budgets]
        # last resort: the least aggressive plan on the grid
        plans.append({n: {"sparsity": fixed_s.get(n, 0.0), "bits": fixed_b.get(n, max(s.scan_bits))} for n in names})
        unique, seen = [], set()
        for plan in plans:  # a smaller scan budget may give the same plan: try each once
            key = tuple((n, plan[n]["sparsity"], plan[n]["bits"]) for n in names)
            if key not in seen:
                seen.add(key)
                unique.append(plan)
        plans = unique
    else:
        plans = [{n: {"sparsity": fixed_s.get(n, DEFAULT_SPARSITY[info[n].role]),
                      "bits": fixed_b.get(n, DEFAULT_BITS[info[n].role])} for n in names}]

    if not done(resume.SCANNED):
        if len(plans) > 1:
            carry["dense_state"] = copy.deepcopy(model.state_dict())
        if scan is not None:
            carry["scan"] = scan.to_json()
            save(resume.SCANNED)
    dense_state = carry.get("dense_state")
    attempts = carry.setdefault("attempts", [])
    result = None
    for i, plan in enumerate(plans):
        if done(resume.shared(i)):  # this attempt is in the saved state
            if reached == resume.shared(i):
                r = carry["result"]
                masks = {n: m.to(dev) for n, m in r["masks"].items()}
                result = (plan, masks, _load_quantized(r["quantized"]), r["pruned"], r["quantized_acc"],
                          r["compressed"], r["ok"])
                if r["ok"] is None or r["ok"]:
                    break
            continue
        steps_done, masks0, hist0 = 0, None, None
        if reached is not None and reached[0] == i:  # resuming within this attempt's pruning
            steps_done = reached[2]
            masks0 = {n: m.to(dev) for n, m in saved["masks"].items()}
            hist0 = saved["attempt_history"]
        elif i:
            model.load_state_dict(dense_state)
            _emit(progress, "over budget: attempt {} with a less aggressive plan".format(i + 1), phase="backoff")
        t0 = time.perf_counter()
        targets = {n: plan[n]["sparsity"] for n in names}

        def on_step(k, masks, hist, i=i):
            save(resume.pruned(i, k), masks=masks, attempt_history=hist)

        masks, hist = iterative_prune(model, data, targets, s, neurons=neurons, evaluate=evaluate,
                                      progress=progress, loss_fn=loss_fn, masks=masks0, unit=unit, done=steps_done,
                                      history=hist0, on_step=on_step if state else None)
        pruned_acc = _evaluate(model, evaluate)
        t1 = time.perf_counter()
        quantized = quantize_layers(model, {n: plan[n]["bits"] for n in names}, s.init, s.seed,
                                    strength={n: s.ecvq.get(n) for n in names})
        _same_codebooks(model, quantized)
        quant_acc = _evaluate(model, evaluate)
        bits_used = "/".join(str(b) for b in sorted({plan[n]["bits"] for n in names}))
        _emit(progress, f"shared weights ({bits_used} bits): "
                        f"{metric} {quant_acc:.2f}{unit}", phase="quantize", accuracy=quant_acc)
        ft = finetune_centroids(model, data, quantized, epochs=s.finetune_epochs, lr=s.finetune_lr_,
                                optimizer=s.optimizer, batch_size=s.batch_size, seed=s.seed + 7, loss_fn=loss_fn,
                                masks=masks, evaluate=evaluate, progress=progress, workers=s.workers)
        acc = _evaluate(model, evaluate)
        if s.finetune_epochs:
            _emit(progress, f"after centroid fine-tuning: {metric} {acc:.2f}{unit}", phase="finetune", accuracy=acc)
        t2 = time.perf_counter()
        ok = None if s.max_accuracy_drop is None else acc >= dense_acc - s.max_accuracy_drop - 1e-9
        attempts.append({"plan": {n: dict(plan[n]) for n in names}, "pruned": _r(pruned_acc), "quantized": _r(quant_acc),
                         "compressed": _r(acc), "within_budget": ok,
                         "estimated_bytes": round(sum(estimate_bytes(info[n].numel, plan[n]["sparsity"], plan[n]["bits"])
                                                      for n in names))})
        history += hist + ft
        seconds["prune"] = seconds.get("prune", 0.0) + t1 - t0
        seconds["quantize"] = seconds.get("quantize", 0.0) + t2 - t1
        result = (plan, masks, quantized, pruned_acc, quant_acc, acc, ok)
        if state:
            carry["result"] = {"masks": masks, "quantized": _save_quantized(quantized), "pruned": pruned_acc,
                               "quantized_acc": quant_acc, "compressed": acc, "ok": ok}
            save(resume.shared(i))
        if ok is None or ok:
            break
    plan, masks, quantized, pruned_acc, quant_acc, acc, ok = result
    if ok is False:
        _emit(progress, f"warning: {metric} {acc:.2f}{unit} is still more than {s.max_accuracy_drop} points below "
                        f"{dense_acc:.2f}{unit}", phase="budget")

    full_plan = {n: {"role": info[n].role, "params": info[n].numel, "sparsity": plan[n]["sparsity"],
                     "bits": plan[n]["bits"], "neurons": neurons[n],
                     "achieved_sparsity": float(np.mean(quantized[n].values() == 0))} for n in names}
    res = Result(model=model, quantized=quantized, masks=masks,
                 accuracy={"dense": dense_acc, "pruned": pruned_acc, "quantized": quant_acc, "compressed": acc},
                 plan=full_plan, settings=s.describe(), scan=scan, attempts=attempts, history=history,
                 params=sum(p.numel() for p in model.parameters()), within_budget=ok)
    scores = {"dense": _r(dense_acc), "pruned": _r(pruned_acc), "quantized": _r(quant_acc), "compressed": _r(acc),
              "dataset": dataset or "evaluation data"}
    if metric != "accuracy" or unit != "%":  # named only when not the default, so default files keep their bytes
        scores.update(metric=metric, unit=unit)
    res.metadata = {
        "producer": f"dcz pipeline {dcformat.__version__} (torch {torch.__version__.split('+')[0]})",
        "source": source if source is not None else type(model).__name__,
        "settings": {**res.settings, "layers": {n: {k: v for k, v in p.items() if k != "achieved_sparsity"}
                                                for n, p in full_plan.items()}},
        "accuracy": scores,
    }
    if out is not None and dist.is_main():
        t0 = time.perf_counter()
        w = write_dcz(model, quantized, out, input_shape, res.metadata)
        res.path, res.dcz_bytes, res.rows, res.notes = os.fspath(out), w["bytes"], w["rows"], w["notes"]
        res.onnx_bytes = w["onnx_bytes"]
        seconds["write"] = time.perf_counter() - t0
    if out is not None:
        saver.remove()
        dist.barrier()
    seconds["total"] = time.perf_counter() - t_start
    res.seconds = seconds
    if report_dir and dist.is_main():
        save_report(res, report_dir)
    return res

"""Deep Compression with training data (Han, Mao & Dally, ICLR 2016) for PyTorch models.

The three stages, with the retraining that makes them work:

1. **Pruning with retraining** -- :func:`iterative_prune`: per-layer magnitude pruning to a
   schedule of sparsity steps (optionally conv and fully connected layers in separate
   phases), retraining after each step with the masks enforced (gradients of pruned weights
   masked, pruned weights reset to exactly zero after every optimizer step), with optional
   L1 / L2 regularisation. :func:`neuron_masks` prunes whole output neurons / filters
   (structured pruning, shapes kept).
2. **Trained quantization** -- :func:`quantize_layers` shares each layer's weights with
   k-means (:func:`converters.quantize.quantize`); :func:`finetune_centroids` then trains the
   codebooks: the gradients of all weights sharing a centroid are summed into it, pruned
   zeros stay zero, and every weight is reset to ``codebook[index]`` after each step.
3. **Huffman-coded storage** -- :func:`write_dcz` exports the model to ONNX, replaces its
   weights by references and stores each quantized layer with exactly its fine-tuned
   codebook and indices.

:func:`deep_compress` runs them all; with ``max_accuracy_drop`` a per-layer sensitivity scan
(:func:`sensitivity_scan`) picks each layer's sparsity and bits (:func:`choose_plan`) so the
estimated file is smallest within the accuracy budget, and the result is verified (and
backed off if over budget). :func:`pruning_curves` compares weight and neuron pruning.

Needs PyTorch (``pip install 'dcz[torch]'``, torch==2.13.0); the plots need matplotlib.
"""

from __future__ import annotations

import copy
import fnmatch
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

import dcformat

from .compress import neuron_mask
from .errors import ConvertError
from .prune import magnitude_mask
from .quantize import INITS, quantize
from .settings import LayerSetting, SettingError, fraction

DEFAULT_SPARSITY = {"conv": 0.6, "fc": 0.9}  # with retraining (the paper reaches 0.65-0.9 on AlexNet/VGG)
DEFAULT_BITS = {"conv": 8, "fc": 5}  # as in the paper
DEFAULT_SCHEDULE = (0.5, 0.75, 0.9, 1.0)  # fractions of each layer's target sparsity, one retraining per step
SCAN_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
SCAN_BITS = (2, 3, 4, 5, 6, 8)
CURVE_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
OPSET = 17

Progress = Callable[[dict], None]
Evaluate = Callable[[nn.Module], float]


# --------------------------------------------------------------------------- settings


def _setting(option: str, value, convert) -> LayerSetting:
    """LayerSetting from None, a number, a {pattern: value} dict, a 'fc*=0.9,0.5' string or a LayerSetting."""
    if isinstance(value, LayerSetting):
        return value
    if value is None:
        return LayerSetting(option)
    if isinstance(value, Mapping):
        s = LayerSetting(option)
        for pat, v in value.items():
            v = convert(str(v))
            if pat in ("*", "default"):
                s.default = v
            else:
                s.patterns.append((str(pat), v))
        return s
    return LayerSetting.parse(option, str(value), convert)


def _bits(text: str) -> int:
    v = int(float(text))
    if not 1 <= v <= 8 or v != float(text):
        raise ValueError(f"{text} bits is not an integer in 1..8")
    return v


@dataclass
class Settings:
    """What :func:`deep_compress` does. Per-layer values take a number (all layers), a
    ``{"fc*": 0.92, "conv*": 0.6}`` dict or the CLI's ``'fc*=0.92,conv*=0.6'`` string; patterns
    match parameter names (``fc1.weight``, ``features.0.weight``)."""

    sparsity: object = None  # target fraction of zero weights per layer; None: DEFAULT_SPARSITY by role
    bits: object = None  # weight-sharing bits per layer; None: DEFAULT_BITS by role
    prune_neurons: object = None  # fraction of whole output neurons / filters to prune per layer
    schedule: tuple = DEFAULT_SCHEDULE  # pruning steps as fractions of the target (last is 1.0)
    separate_phases: bool = False  # prune conv layers first, then fully connected ones
    epochs: int = 0  # training of the dense model before compressing
    retrain_epochs: int = 2  # retraining after each pruning step
    finetune_epochs: int = 2  # centroid fine-tuning
    lr: float = 1e-3  # dense training
    retrain_lr: float | None = None  # default lr / 2
    finetune_lr: float | None = None  # default lr / 4
    batch_size: int = 64
    optimizer: str = "adam"  # or "sgd" (momentum 0.9)
    l1: float = 0.0  # L1 penalty on the compressible weights while (re)training
    l2: float = 0.0  # L2 penalty (sum of squares) on the compressible weights
    init: str = "linear"  # k-means centroid initialisation
    min_size: int = 0  # Linear/Conv weights with fewer elements are kept exact
    max_accuracy_drop: float | None = None  # points; enables the sensitivity scan and the budget check
    scan_sparsities: tuple = SCAN_SPARSITIES
    scan_bits: tuple = SCAN_BITS
    scan_slack: float = 8.0  # scan drops are without retraining (pessimistic): first try budget x slack, halve on failure
    max_backoff: int = 4  # further attempts (halving the scan budget) when the result is over budget
    seed: int = 0

    def __post_init__(self):
        self.sparsity = _setting("--sparsity", self.sparsity, fraction)
        self.bits = _setting("--bits", self.bits, _bits)
        self.prune_neurons = _setting("--prune-neurons", self.prune_neurons, fraction)
        sched = [float(s) for s in self.schedule]
        if not sched or any(not 0 < s <= 1 for s in sched) or sorted(sched) != sched:
            raise SettingError(f"--schedule: steps must rise within (0, 1], got {self.schedule}")
        if sched[-1] != 1.0:
            sched.append(1.0)
        self.schedule = tuple(sched)
        if self.optimizer not in ("adam", "sgd"):
            raise SettingError(f"--optimizer: {self.optimizer!r} is not adam or sgd")
        if self.init not in INITS:
            raise SettingError(f"--init: {self.init!r} is not one of {', '.join(INITS)}")
        for name in ("epochs", "retrain_epochs", "finetune_epochs", "min_size", "max_backoff"):
            if int(getattr(self, name)) < 0:
                raise SettingError(f"--{name.replace('_', '-')}: must be >= 0")
        if self.batch_size < 1:
            raise SettingError("--batch-size: must be >= 1")
        for name in ("lr", "l1", "l2"):
            if not getattr(self, name) >= 0:
                raise SettingError(f"--{name}: must be >= 0")
        if self.max_accuracy_drop is not None and not self.max_accuracy_drop >= 0:
            raise SettingError("--max-accuracy-drop: must be >= 0")
        self.scan_sparsities = tuple(sorted({float(s) for s in self.scan_sparsities} - {0.0}))
        self.scan_bits = tuple(sorted({_bits(str(b)) for b in self.scan_bits}))
        if not self.scan_bits:
            raise SettingError("--scan-bits: give at least one")

    @property
    def retrain_lr_(self) -> float:
        return self.lr / 2 if self.retrain_lr is None else self.retrain_lr

    @property
    def finetune_lr_(self) -> float:
        return self.lr / 4 if self.finetune_lr is None else self.finetune_lr

    def describe(self) -> dict:
        d = {}
        for k in ("sparsity", "bits", "prune_neurons"):
            d[k] = getattr(self, k).describe()
        for k in ("schedule", "separate_phases", "epochs", "retrain_epochs", "finetune_epochs", "lr", "batch_size",
                  "optimizer", "l1", "l2", "init", "min_size", "max_accuracy_drop", "seed"):
            v = getattr(self, k)
            d[k] = list(v) if isinstance(v, tuple) else v
        d["retrain_lr"], d["finetune_lr"] = self.retrain_lr_, self.finetune_lr_
        if self.max_accuracy_drop is not None:
            d.update(scan_sparsities=list(self.scan_sparsities), scan_bits=list(self.scan_bits),
                     scan_slack=self.scan_slack, max_backoff=self.max_backoff)
        return d


# --------------------------------------------------------------------------- layers, data, training


@dataclass
class Layer:
    """A compressible weight: the ``weight`` of an nn.Linear (role fc) or nn.ConvNd (role conv)."""

    name: str  # parameter name, e.g. fc1.weight
    module: str  # module name, e.g. fc1
    role: str  # fc | conv
    out_axis: int  # axis of the output neurons / filters
    param: nn.Parameter
    bias: str | None  # parameter name of the bias, if any

    @property
    def numel(self) -> int:
        return self.param.numel()


def layers(model: nn.Module, min_size: int = 0) -> dict[str, Layer]:
    """The compressible weights of ``model`` in definition order, by parameter name."""
    out = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            role, axis = "fc", 0
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            role, axis = "conv", 0
        elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            role, axis = "conv", 1
        else:
            continue
        w = getattr(mod, "weight", None)
        if not isinstance(w, nn.Parameter) or w.numel() < max(min_size, 1) or not w.is_floating_point():
            continue
        prefix = f"{mname}." if mname else ""
        bias = f"{prefix}bias" if isinstance(getattr(mod, "bias", None), nn.Parameter) else None
        out[f"{prefix}weight"] = Layer(f"{prefix}weight", mname, role, axis, w, bias)
    return out


def _as_tensor(a, dtype=None) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t if dtype is None else t.to(dtype)


def batches(data, batch_size: int = 64, shuffle: bool = True, generator: torch.Generator | None = None):
    """(x, y) batches from a DataLoader / iterable of (x, y, ...) or from (x, y) tensors / arrays."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = _as_tensor(data[0]), _as_tensor(data[1])
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()
        y = y.long() if not y.is_floating_point() else y
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            yield x[idx], y[idx]
        return
    for b in data:
        yield b[0], b[1]


def first_batch(data):
    for x, y in batches(data, 2, shuffle=False):
        return x, y
    raise ConvertError("the training data is empty")


def accuracy_fn(x, y, batch_size: int = 1024) -> Evaluate:
    """An evaluate(model) -> accuracy in percent over (x, y)."""
    x, y = _as_tensor(x, torch.float32), _as_tensor(y).long()

    def evaluate(model: nn.Module) -> float:
        return float((predict(model, x, batch_size) == y).float().mean() * 100)

    return evaluate


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes (argmax of the logits), in eval mode."""
    was = model.training
    model.eval()
    x = _as_tensor(x, torch.float32)
    out = torch.cat([model(x[s : s + batch_size]).argmax(1) for s in range(0, len(x), batch_size)]) if len(x) else \
        torch.zeros(0, dtype=torch.long)
    model.train(was)
    return out


@torch.no_grad()
def mean_loss(model: nn.Module, data, loss_fn=None, batch_size: int = 1024) -> float:
    """Mean training loss over ``data`` in eval mode (no regularisation terms)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in batches(data, batch_size, shuffle=False):
        total += float(loss_fn(model(x), y)) * len(x)
        n += len(x)
    model.train(was)
    return total / max(n, 1)


def _evaluate(model: nn.Module, evaluate: Evaluate) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = float(evaluate(model))
    model.train(was)
    return acc


Masks = dict  # parameter name -> bool tensor (True = keep)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Set the masked weights to exactly +0.0."""
    params = dict(model.named_parameters())
    for name, m in masks.items():
        params[name].masked_fill_(~m, 0.0)


def sparsity(model: nn.Module, names: Iterable[str] | None = None) -> float:
    """Fraction of exact zeros over the named parameters (default: the compressible weights)."""
    params = dict(model.named_parameters())
    names = list(layers(model)) if names is None else list(names)
    total = sum(params[n].numel() for n in names)
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    return zeros / total if total else 0.0


def _optimizer(params, kind: str, lr: float):
    params = list(params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def train(model: nn.Module, data, epochs: int, *, lr: float = 1e-3, optimizer: str = "adam", masks: Masks | None = None,
          l1: float = 0.0, l2: float = 0.0, batch_size: int = 64, seed: int = 0, loss_fn=None,
          evaluate: Evaluate | None = None, progress: Progress | None = None, phase: str = "train",
          step: str | None = None) -> list[dict]:
    """Train ``model``; with ``masks`` the masked weights get no gradient and are reset to zero
    after every optimizer step, so they are exactly zero throughout. Returns one row per epoch."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    masks = masks or {}
    params = dict(model.named_parameters())
    regularised = [params[n] for n in layers(model)]
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], optimizer, lr)
    gen = torch.Generator().manual_seed(seed)
    history = []
    apply_masks(model, masks)
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in batches(data, batch_size, generator=gen):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            total += float(loss.detach()) * len(x)
            n += len(x)
            if l1:
                loss = loss + l1 * sum(p.abs().sum() for p in regularised)
            if l2:
                loss = loss + l2 * sum((p * p).sum() for p in regularised)
            loss.backward()
            for name, m in masks.items():
                g = params[name].grad
                if g is not None:
                    g.masked_fill_(~m, 0.0)
            opt.step()
            apply_masks(model, masks)
        if not math.isfinite(total):
            raise ConvertError(f"{phase}: the loss became {total / max(n, 1)} in epoch {epoch + 1} (training diverged); "
                               "try a lower learning rate")
        row = {"kind": "epoch", "phase": phase, "step": step, "epoch": epoch + 1, "epochs": epochs,
               "loss": total / max(n, 1), "sparsity": sparsity(model),
               "accuracy": _evaluate(model, evaluate) if evaluate else None}
        history.append(row)
        if progress:
            progress(row)
    model.eval()
    return history


# --------------------------------------------------------------------------- pruning


def magnitude_masks(model: nn.Module, targets: Mapping[str, float], masks: Masks | None = None) -> Masks:
    """Masks pruning the smallest-magnitude weights of each named layer to its target sparsity.

    Combined with ``masks`` (once pruned, always pruned); zeros count towards the target."""
    masks = dict(masks or {})
    params = dict(model.named_parameters())
    for name, target in targets.items():
        if not target:
            continue
        w = params[name].detach().cpu().numpy()
        keep = torch.from_numpy(np.ascontiguousarray(magnitude_mask(w, min(float(target), 0.9999))))
        masks[name] = keep & masks[name] if name in masks else keep
    return masks


def neuron_masks(model: nn.Module, fractions: Mapping[str, float], masks: Masks | None = None,
                 bias: bool = True) -> Masks:
    """Masks zeroing whole output neurons (rows of a Linear weight) / filters (of a Conv) with
    the smallest L2 norm, per named layer; shapes are kept. With ``bias`` the pruned neurons'
    biases are masked too, so a pruned neuron outputs exactly zero."""
    masks = dict(masks or {})
    info = layers(model)
    for name, frac in fractions.items():
        if not frac:
            continue
        lay = info[name]
        w = lay.param.detach().cpu().numpy()
        keep = torch.from_numpy(np.ascontiguousarray(neuron_mask(w, float(frac), lay.out_axis)))
        masks[name] = keep & masks[name] if name in masks else keep
        if bias and lay.bias:
            rows = keep.movedim(lay.out_axis, 0).reshape(keep.shape[lay.out_axis], -1).any(1)
            masks[lay.bias] = rows & masks[lay.bias] if lay.bias in masks else rows
    return masks


def iterative_prune(model: nn.Module, data, targets: Mapping[str, float], settings: Settings, *,
                    neurons: Mapping[str, float] | None = None, evaluate: Evaluate | None = None,
                    progress: Progress | None = None, loss_fn=None, masks: Masks | None = None) -> tuple[Masks, list]:
    """Prune to ``targets`` in the steps of ``settings.schedule``, retraining with masks after each.

    With ``settings.separate_phases`` the conv layers go through the schedule first, then the
    fully connected ones (the conv masks staying in force). Returns (masks, history)."""
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
    history = []
    k = 0
    for phase, pnames in phases:
        for frac in settings.schedule:
            k += 1
            step_targets = {n: targets[n] * frac for n in pnames}
            masks = neuron_masks(model, {n: neurons.get(n, 0) * frac for n in pnames}, masks)
            apply_masks(model, masks)
            masks = magnitude_masks(model, step_targets, masks)
            apply_masks(model, masks)
            label = f"{phase} step {k}" if settings.separate_phases else f"step {k}"
            acc0 = _evaluate(model, evaluate) if evaluate else None
            rows = train(model, data, settings.retrain_epochs, lr=settings.retrain_lr_, optimizer=settings.optimizer,
                         masks=masks, l1=settings.l1, l2=settings.l2, batch_size=settings.batch_size,
                         seed=settings.seed + 1000 + k, loss_fn=loss_fn, evaluate=evaluate, progress=progress,
                         phase="retrain", step=label)
            acc = rows[-1]["accuracy"] if rows else acc0
            event = {"kind": "stage", "phase": "prune", "step": label, "fraction": frac, "sparsity": sparsity(model),
                     "accuracy_pruned": acc0, "accuracy": acc,
                     "message": f"pruned to {sparsity(model):.1%} ({label}, {frac:.0%} of the targets): "
                                + (f"{acc0:.2f}%, retrained {acc:.2f}%" if acc0 is not None and rows else
                                   f"{acc:.2f}%" if acc is not None else "")}
            history.append({**event, "epochs": rows})
            if progress:
                progress(event)
    return masks, history


# --------------------------------------------------------------------------- trained quantization


@dataclass
class Quantized:
    """A layer's shared weights: the layer's values are exactly ``codebook[indices]``."""

    codebook: np.ndarray  # float32; entry 0 is 0.0 when the layer has pruned zeros
    indices: np.ndarray  # uint8 (uint16 for 257 entries), the layer's shape
    bits: int

    def values(self) -> np.ndarray:
        return self.codebook[self.indices]


def quantize_layers(model: nn.Module, bits: Mapping[str, int], init: str = "linear", seed: int = 0) -> dict[str, Quantized]:
    """k-means weight sharing of each named layer; the model's weights become ``codebook[indices]``."""
    params = dict(model.named_parameters())
    out = {}
    for name, b in bits.items():
        p = params[name]
        w = p.detach().cpu().numpy()
        if not np.isfinite(w).all():
            raise ConvertError(f"{name}: holds NaN or infinite weights; cannot share them")
        cb, idx = quantize(w, int(b), init=init, seed=seed)
        cb = cb.astype(np.float32)
        out[name] = Quantized(cb, idx, int(b))
        with torch.no_grad():
            p.copy_(torch.from_numpy(cb[idx]))
    return out


def finetune_centroids(model: nn.Module, data, quantized: Mapping[str, Quantized], *, epochs: int, lr: float = 2.5e-4,
                       optimizer: str = "adam", batch_size: int = 64, seed: int = 0, loss_fn=None,
                       masks: Masks | None = None, train_others: bool = True, keep_best: bool = True,
                       evaluate: Evaluate | None = None, progress: Progress | None = None) -> list[dict]:
    """Trained quantization: each centroid moves by the summed gradient of the weights sharing it.

    After every step the quantized weights are reset to ``codebook[indices]``; codebook
    entries equal to 0.0 (the pruned zeros) never move. With ``train_others`` the remaining
    parameters (biases, norms, small layers) train too, within ``masks``. With ``keep_best``
    the state with the lowest mean training loss (measured before and after each epoch)
    is kept, so the loss never ends higher than it started. Updates ``quantized`` in place."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    masks = {k: v for k, v in (masks or {}).items() if k not in quantized}
    params = dict(model.named_parameters())
    cbs = {n: torch.tensor(q.codebook, dtype=torch.float32, requires_grad=True) for n, q in quantized.items()}
    idx = {n: torch.from_numpy(q.indices.astype(np.int64)).reshape(-1) for n, q in quantized.items()}
    frozen = {n: torch.from_numpy(q.codebook == 0) for n, q in quantized.items()}
    others = [p for n, p in params.items() if n not in quantized and p.requires_grad] if train_others else []
    opt = _optimizer(list(cbs.values()) + others, optimizer, lr)
    gen = torch.Generator().manual_seed(seed)

    def snapshot():
        return ({n: c.detach().clone() for n, c in cbs.items()},
                {n: p.detach().clone() for n, p in params.items() if n not in quantized})

    def restore(snap):
        with torch.no_grad():
            for n, c in snap[0].items():
                cbs[n].copy_(c)
                params[n].copy_(c[idx[n]].reshape(params[n].shape))
            for n, v in snap[1].items():
                params[n].copy_(v)

    best_loss = mean_loss(model, data, loss_fn) if keep_best else None
    best = snapshot() if keep_best else None
    history = []
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in batches(data, batch_size, generator=gen):
            opt.zero_grad(set_to_none=True)
            for name in quantized:
                params[name].grad = None
            loss = loss_fn(model(x), y)
            total += float(loss.detach()) * len(x)
            n += len(x)
            loss.backward()
            for name, c in cbs.items():
                g = params[name].grad
                gc = torch.bincount(idx[name], weights=g.reshape(-1), minlength=c.numel()) if g is not None \
                    else torch.zeros_like(c)
                c.grad = gc.masked_fill(frozen[name], 0.0).to(c.dtype)
            for name, m in masks.items():
                g = params[name].grad
                if g is not None:
                    g.masked_fill_(~m, 0.0)
            opt.step()
            with torch.no_grad():
                for name, c in cbs.items():
                    c.masked_fill_(frozen[name], 0.0)
                    params[name].copy_(c[idx[name]].reshape(params[name].shape))
            apply_masks(model, masks)
        for name in quantized:
            params[name].grad = None
        if not math.isfinite(total):
            raise ConvertError(f"finetune: the loss became {total / max(n, 1)} in epoch {epoch + 1} (training diverged); "
                               "try a lower --finetune-lr")
        row = {"kind": "epoch", "phase": "finetune", "step": None, "epoch": epoch + 1, "epochs": epochs,
               "loss": total / max(n, 1), "sparsity": sparsity(model),
               "accuracy": _evaluate(model, evaluate) if evaluate else None}
        if keep_best:
            row["full_loss"] = mean_loss(model, data, loss_fn)
            if row["full_loss"] < best_loss:
                best_loss, best = row["full_loss"], snapshot()
        history.append(row)
        if progress:
            progress(row)
    if keep_best and epochs:
        restore(best)
    for name, c in cbs.items():
        quantized[name].codebook = c.detach().numpy().astype(np.float32, copy=True)
    model.eval()
    return history


# --------------------------------------------------------------------------- sensitivity and the plan


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


def _h(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def estimate_bytes(n: int, sparsity: float, bits: int) -> float:
    """Estimated stored bytes of a layer: where the non-zeros are (entropy of the zero/non-zero
    pattern, which the Huffman-coded gaps approach) plus ``bits`` per non-zero plus the codebook."""
    p = 1.0 - sparsity
    return n * (_h(p) + p * bits) / 8 + 4 * (2 ** bits)


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

    def pick(lam):
        return {n: min(o, key=lambda c: (c["bytes"] + lam * c["drop"], c["drop"], -c["bits"], c["sparsity"]))
                for n, o in options.items()}

    def total(plan):
        return sum(c["drop"] for c in plan.values())

    lo, hi = 0.0, 1.0
    while total(pick(hi)) > budget and hi < 1e15:
        lo, hi = hi, hi * 10
    for _ in range(60):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        if total(pick(mid)) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    plan = pick(hi)
    # greedy: spend what is left of the budget on the best bytes saved per point of drop
    while True:
        spare = budget - total(plan)
        best, gain = None, 0.0
        for n, opts in options.items():
            cur = plan[n]
            for c in opts:
                saved = cur["bytes"] - c["bytes"]
                extra = c["drop"] - cur["drop"]
                if saved > 0 and extra <= spare + 1e-12:
                    score = saved / max(extra, 1e-6)
                    if score > gain:
                        best, gain = (n, c), score
        if best is None:
            break
        plan[best[0]] = best[1]
    return {n: dict(c) for n, c in plan.items()}


# --------------------------------------------------------------------------- export and the .dcz


def export_onnx(model: nn.Module, input_shape, opset: int = OPSET):
    """ONNX ModelProto (TorchScript exporter), input 'input', output 'logits', batch dynamic.

    Exported in PRESERVE mode so that BatchNorm is not folded into the preceding weights:
    every parameter keeps its values and (for named modules) its state_dict name."""
    import onnx

    was = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(*input_shape),), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], export_params=True,
                              training=torch.onnx.TrainingMode.PRESERVE,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        text = str(e).strip().splitlines()
        raise ConvertError(f"cannot export the model to ONNX: {text[0] if text else type(e).__name__}") from None
    finally:
        model.train(was)
    return onnx.load_from_string(buf.getvalue())


def _match(arrays: Mapping[str, np.ndarray], name: str, want: np.ndarray):
    """The initializer holding ``want``: by name, else by value (also transposed). (key, transposed)."""
    if name in arrays and arrays[name].shape == want.shape and np.array_equal(arrays[name], want):
        return name, False
    for k, a in arrays.items():
        if a.dtype == want.dtype and a.shape == want.shape and np.array_equal(a, want):
            return k, False
    if want.ndim == 2:
        for k, a in arrays.items():
            if a.dtype == want.dtype and a.shape == want.T.shape and np.array_equal(a, want.T):
                return k, True
    return None, False


def encode_model(model: nn.Module, quantized: Mapping[str, Quantized], input_shape, opset: int = OPSET):
    """(graph, encoded tensors, notes, bytes of the plain ONNX file): the quantized layers are stored with exactly their
    codebooks and indices (checked against the exported initializers), the rest exactly."""
    onnx_model = export_onnx(model, input_shape, opset)
    onnx_bytes = onnx_model.ByteSize()
    graph, arrays = dcformat.graph.strip_weights(onnx_model, copy=False)
    tensors, done, notes = {}, set(), []
    for name, q in quantized.items():
        want = q.values()
        key, transposed = _match(arrays, name, want)
        if key is None:
            notes.append(f"{name}: the ONNX export changed its values (fused?); stored exactly as exported")
            continue
        idx = q.indices.T if transposed else q.indices
        enc = dcformat.encode_codebook(key, q.codebook, idx, idx.shape, "float32")
        tensors[key] = enc
        done.add(key)
    for key, arr in arrays.items():
        if key not in done:
            tensors[key] = dcformat.encode(key, arr)
    ordered = [tensors[k] for k in arrays]  # the graph's order
    return graph, ordered, notes, onnx_bytes


def tensor_rows(tensors) -> list[dict]:
    """Report rows of encoded tensors (for the per-layer table)."""
    rows = []
    for t in tensors:
        i = t.info
        numel = int(np.prod(i.shape, dtype=np.int64))
        rows.append({"name": t.name, "shape": "x".join(map(str, i.shape)) or "()", "params": numel,
                     "encoding": t.encoding, "sparsity": 1 - i.nonzeros / numel if numel else 0.0,
                     "codebook": i.codebook_size, "gap_bits": i.gap_bits, "bytes": t.nbytes,
                     "ratio": numel * 4 / t.nbytes if t.nbytes else math.inf})
    return rows


def write_dcz(model: nn.Module, quantized: Mapping[str, Quantized], out, input_shape, metadata: Mapping | None = None,
              opset: int = OPSET) -> dict:
    """Export, encode and write ``out``; returns {"bytes", "rows", "notes", "onnx_bytes"}."""
    graph, tensors, notes, onnx_bytes = encode_model(model, quantized, input_shape, opset)
    size = dcformat.write(out, tensors, graph=graph, metadata=metadata)
    return {"bytes": size, "rows": tensor_rows(tensors), "notes": notes, "onnx_bytes": onnx_bytes}


def ort_predict(path, x, batch_size: int = 1024) -> np.ndarray:
    """Predicted classes of a .dcz decoded into ONNX Runtime."""
    sess = dcformat.InferenceSession(os.fspath(path))
    x = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, np.float32)
    outs = [sess.run(None, {"input": x[s : s + batch_size]})[0].argmax(1) for s in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros(0, np.int64)


def ort_accuracy(path, x, y, batch_size: int = 1024) -> float:
    """Accuracy (percent) of a .dcz run in ONNX Runtime."""
    y = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    return float(np.mean(ort_predict(path, x, batch_size) == y) * 100)


# --------------------------------------------------------------------------- the whole pipeline


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


def _emit(progress, message, **kw):
    if progress:
        progress({"kind": "stage", "message": message, **kw})


def _r(x):
    return None if x is None else round(float(x), 4)


def deep_compress(model: nn.Module, data, evaluate: Evaluate, settings: Settings | None = None, *, out=None,
                  input_shape=None, progress: Progress | None = None, report_dir=None, loss_fn=None,
                  source=None, dataset: str | None = None) -> Result:
    """Prune (with retraining), share weights (with centroid fine-tuning) and write ``out``.

    ``data``: a DataLoader or (x, y) tensors/arrays for training; ``evaluate(model)`` gives
    the accuracy in percent (e.g. :func:`accuracy_fn` over a held-out split). The model is
    changed in place (and returned in the result). With ``settings.max_accuracy_drop`` a
    sensitivity scan chooses each layer's sparsity and bits (values given in ``settings``
    for a layer are kept) and the result is checked against the budget, retrying with a
    smaller scan budget when over it. ``input_shape`` (for the ONNX export) defaults to the
    shape of one training sample with batch 1. ``report_dir`` receives report.json and the
    sensitivity plots."""
    s = settings or Settings()
    t_start = time.perf_counter()
    seconds = {}
    torch.manual_seed(s.seed)
    info = layers(model, s.min_size)
    if not info:
        raise ConvertError("the model has no nn.Linear / nn.Conv weights to compress")
    names = list(info)
    for st in (s.sparsity, s.bits, s.prune_neurons):
        for pat, _ in st.patterns:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise SettingError(f"{st.option}: pattern {pat!r} matches no layer (layers: {', '.join(names)})")
    if input_shape is None:
        x0, _ = first_batch(data)
        input_shape = (1, *x0.shape[1:])
    input_shape = tuple(int(d) for d in input_shape)

    history = []
    if s.epochs:
        t0 = time.perf_counter()
        _emit(progress, f"training the dense model for {s.epochs} epochs", phase="train")
        history += train(model, data, s.epochs, lr=s.lr, optimizer=s.optimizer, batch_size=s.batch_size, seed=s.seed,
                         loss_fn=loss_fn, evaluate=evaluate, progress=progress, phase="train")
        seconds["train"] = time.perf_counter() - t0
    dense_acc = _evaluate(model, evaluate)
    _emit(progress, f"dense model: accuracy {dense_acc:.2f}%", phase="dense", accuracy=dense_acc)

    fixed_s = {n: s.sparsity.get(n) for n in names if s.sparsity.get(n) is not None}
    fixed_b = {n: s.bits.get(n) for n in names if s.bits.get(n) is not None}
    neurons = {n: s.prune_neurons.get(n, 0.0) for n in names}
    scan = None
    if s.max_accuracy_drop is not None:
        t0 = time.perf_counter()
        _emit(progress, f"sensitivity scan of {len(names)} layers (sparsity {', '.join(f'{x:g}' for x in s.scan_sparsities)}; "
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
        if report_dir:
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

    dense_state = copy.deepcopy(model.state_dict()) if len(plans) > 1 else None
    attempts = []
    result = None
    for i, plan in enumerate(plans):
        if i:
            model.load_state_dict(dense_state)
            _emit(progress, f"over budget: attempt {i + 1} with a less aggressive plan", phase="backoff")
        t0 = time.perf_counter()
        targets = {n: plan[n]["sparsity"] for n in names}
        masks, hist = iterative_prune(model, data, targets, s, neurons=neurons, evaluate=evaluate,
                                      progress=progress, loss_fn=loss_fn)
        pruned_acc = _evaluate(model, evaluate)
        t1 = time.perf_counter()
        quantized = quantize_layers(model, {n: plan[n]["bits"] for n in names}, s.init, s.seed)
        quant_acc = _evaluate(model, evaluate)
        bits_used = "/".join(str(b) for b in sorted({plan[n]["bits"] for n in names}))
        _emit(progress, f"shared weights ({bits_used} bits): "
                        f"accuracy {quant_acc:.2f}%", phase="quantize", accuracy=quant_acc)
        ft = finetune_centroids(model, data, quantized, epochs=s.finetune_epochs, lr=s.finetune_lr_,
                                optimizer=s.optimizer, batch_size=s.batch_size, seed=s.seed + 7, loss_fn=loss_fn,
                                masks=masks, evaluate=evaluate, progress=progress)
        acc = _evaluate(model, evaluate)
        if s.finetune_epochs:
            _emit(progress, f"after centroid fine-tuning: accuracy {acc:.2f}%", phase="finetune", accuracy=acc)
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
        if ok is None or ok:
            break
    plan, masks, quantized, pruned_acc, quant_acc, acc, ok = result
    if ok is False:
        _emit(progress, f"warning: accuracy {acc:.2f}% is still more than {s.max_accuracy_drop} points below "
                        f"{dense_acc:.2f}%", phase="budget")

    full_plan = {n: {"role": info[n].role, "params": info[n].numel, "sparsity": plan[n]["sparsity"],
                     "bits": plan[n]["bits"], "neurons": neurons[n],
                     "achieved_sparsity": float(np.mean(quantized[n].values() == 0))} for n in names}
    res = Result(model=model, quantized=quantized, masks=masks,
                 accuracy={"dense": dense_acc, "pruned": pruned_acc, "quantized": quant_acc, "compressed": acc},
                 plan=full_plan, settings=s.describe(), scan=scan, attempts=attempts, history=history,
                 params=sum(p.numel() for p in model.parameters()), within_budget=ok)
    res.metadata = {
        "producer": f"dcz pipeline {dcformat.__version__} (torch {torch.__version__.split('+')[0]})",
        "source": source if source is not None else type(model).__name__,
        "settings": {**res.settings, "layers": {n: {k: v for k, v in p.items() if k != "achieved_sparsity"}
                                                for n, p in full_plan.items()}},
        "accuracy": {"dense": _r(dense_acc), "pruned": _r(pruned_acc), "quantized": _r(quant_acc),
                     "compressed": _r(acc), "dataset": dataset or "evaluation data"},
    }
    if out is not None:
        t0 = time.perf_counter()
        w = write_dcz(model, quantized, out, input_shape, res.metadata)
        res.path, res.dcz_bytes, res.rows, res.notes = os.fspath(out), w["bytes"], w["rows"], w["notes"]
        res.onnx_bytes = w["onnx_bytes"]
        seconds["write"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    res.seconds = seconds
    if report_dir:
        save_report(res, report_dir)
    return res


def save_report(res: Result, report_dir) -> list[str]:
    """report.json (and the sensitivity plots when there was a scan) in ``report_dir``."""
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, "report.json")
    with open(path, "w") as f:
        json.dump(res.report(), f, indent=1, default=str)
    paths = [path]
    if res.scan:
        paths += plot_scan(res.scan, report_dir, plan=res.plan)
    return paths


# --------------------------------------------------------------------------- structured vs unstructured


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
                rows = train(model, data, retrain_epochs, lr=s.retrain_lr_, optimizer=s.optimizer, masks=masks,
                             l1=s.l1, l2=s.l2, batch_size=s.batch_size, seed=s.seed, loss_fn=loss_fn)
                pt["retrained"] = _evaluate(model, evaluate)
                del rows
            pts.append(pt)
            if progress:
                progress({"kind": "stage", "phase": "curve", "method": method, **pt,
                          "message": f"{method} pruning {f:.0%}: accuracy {pt['accuracy']:.2f}%"
                          + (f", retrained {pt['retrained']:.2f}%" if pt["retrained"] is not None else "")})
        curves[method] = pts
    model.load_state_dict(state)
    return curves


# --------------------------------------------------------------------------- plots


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvertError("the plots need matplotlib: pip install 'dcz[plot]'") from None
    return plt


def plot_scan(scan: Scan, out_dir, plan: Mapping | None = None) -> list[str]:
    """sensitivity_sparsity.png (accuracy vs sparsity per layer) and sensitivity_bits.png."""
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, xlabel, fname in (("sparsity", "sparsity of the layer (others dense, no retraining)", "sensitivity_sparsity.png"),
                               ("bits", "weight-sharing bits of the layer (others dense)", "sensitivity_bits.png")):
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for name, pts in getattr(scan, key).items():
            pts = ([[0.0, scan.dense]] if key == "sparsity" else []) + list(pts)
            xs, ys = zip(*pts)
            line, = ax.plot(xs, ys, marker="o", ms=3, label=name)
            if plan and name in plan and plan[name].get(key) is not None:
                ax.axvline(plan[name][key], color=line.get_color(), ls=":", lw=1)
        ax.axhline(scan.dense, color="gray", lw=0.8, ls="--", label=f"dense {scan.dense:.2f}%")
        ax.set_xlabel(xlabel + ("; dotted: chosen" if plan else ""))
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"sensitivity: accuracy vs {key} per layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, fname)
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def plot_pruning_curves(curves: Mapping, path, title: str = "weight vs neuron pruning") -> str:
    """Accuracy vs pruned fraction, one line per method (dashed: after retraining)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for method in ("weight", "neuron"):
        pts = curves.get(method)
        if not pts:
            continue
        xs = [p["fraction"] * 100 for p in pts]
        line, = ax.plot(xs, [p["accuracy"] for p in pts], marker="o", ms=3, label=f"{method} pruning")
        if any(p.get("retrained") is not None for p in pts):
            ax.plot(xs, [p["retrained"] for p in pts], marker="s", ms=3, ls="--", color=line.get_color(),
                    label=f"{method} pruning, retrained")
    if "dense" in curves:
        ax.axhline(curves["dense"], color="gray", lw=0.8, ls="--", label=f"dense {curves['dense']:.2f}%")
    ax.set_xlabel("pruned fraction per layer (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    d = os.path.dirname(os.fspath(path))
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return os.fspath(path)


# --------------------------------------------------------------------------- models and progress


class MLP(nn.Module):
    """Fully connected ReLU network with layers fc1, fc2, ...; flattens its input."""

    def __init__(self, sizes=(64, 256, 128, 10)):
        super().__init__()
        self.sizes = tuple(sizes)
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            setattr(self, f"fc{i + 1}", nn.Linear(a, b))

    def forward(self, x):
        x = x.flatten(1)
        n = len(self.sizes) - 1
        for i in range(n):
            x = getattr(self, f"fc{i + 1}")(x)
            if i < n - 1:
                x = torch.relu(x)
        return x


def digits_mlp() -> MLP:
    """64-256-128-10 for scikit-learn's 8x8 digits (``--model converters.pipeline:digits_mlp``)."""
    return MLP((64, 256, 128, 10))


def mnist_mlp() -> MLP:
    """784-1000-1000-500-200-10 for 28x28 MNIST / Fashion-MNIST (``converters.pipeline:mnist_mlp``)."""
    return MLP((784, 1000, 1000, 500, 200, 10))


def lenet300() -> MLP:
    """LeNet-300-100 (784-300-100-10), the paper's MNIST network."""
    return MLP((784, 300, 100, 10))


class LeNet5(nn.Module):
    """LeNet-5 (conv1, conv2, fc1..fc3) for 28x28 images, input N x 1 x 28 x 28 (or N x 28 x 28)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        if x.ndim == 3:
            x = x.unsqueeze(1)
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def lenet5() -> LeNet5:
    """LeNet-5 for 28x28 MNIST / Fashion-MNIST (``converters.pipeline:lenet5``)."""
    return LeNet5()


def echo_stages(echo, then: Progress | None = None) -> Progress:
    """A progress callback: stage messages go to ``echo`` (a print), other events to ``then``."""
    def progress(ev: dict):
        if ev.get("kind") == "stage" and ev.get("message"):
            echo(ev["message"])
        elif then:
            then(ev)

    return progress


def console_progress(file=None, epochs: bool = True, stages: bool = True) -> Progress | None:
    """A progress callback printing epochs (loss, accuracy, sparsity) and stages with rich,
    or None when ``file`` (default stderr) is not a terminal."""
    file = file or sys.stderr
    if not getattr(file, "isatty", lambda: False)():
        return None
    from rich.console import Console

    console = Console(file=file, highlight=False)

    def show(ev: dict):
        if ev.get("kind") == "epoch" and epochs:
            acc = "" if ev.get("accuracy") is None else f"  accuracy {ev['accuracy']:6.2f}%"
            step = f" {ev['step']}" if ev.get("step") else ""
            console.print(f"[dim]{ev['phase']}{step} epoch {ev['epoch']}/{ev['epochs']}  loss {ev['loss']:.4f}{acc}"
                          f"  sparsity {ev['sparsity']:.1%}[/dim]")
        elif ev.get("kind") == "stage" and stages and ev.get("message"):
            console.print(ev["message"], markup=False)

    return show

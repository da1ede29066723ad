"""Stage 2, trained quantization: k-means weight sharing per layer, then centroid fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConvertError
from ..ecvq import ecvq
from . import dist
from .loaders import batches, model_device, to_device
from .masks import Masks, apply_masks, sparsity
from .metrics import Evaluate, _evaluate, mean_loss
from .train import Progress, _optimizer

@dataclass
class Quantized:
    """A layer's shared weights: the layer's values are exactly ``codebook[indices]``."""

    codebook: np.ndarray  # float32; entry 0 is 0.0 when the layer has pruned zeros
    indices: np.ndarray  # uint8 (uint16 for 257 entries), the layer's shape
    bits: int

    def values(self) -> np.ndarray:
        return self.codebook[self.indices]


def quantize_layers(model: nn.Module, bits: Mapping[str, int], init: str = "linear", seed: int = 0,
                    strength: Mapping[str, float] | float = 0.0) -> dict[str, Quantized]:
    """k-means weight sharing of each named layer; the model's weights become ``codebook[indices]``.

    ``strength`` (one number, or one per layer): entropy-constrained weight sharing (converters.ecvq) at that
    strength; 0 is plain k-means (the paper's)."""
    params = dict(model.named_parameters())
    out = {}
    for name, b in bits.items():
        p = params[name]
        w = p.detach().cpu().numpy()
        if not np.isfinite(w).all():
            raise ConvertError(f"{name}: holds NaN or infinite weights; cannot share them")
        lam = strength.get(name, 0.0) if isinstance(strength, Mapping) else strength
        cb, idx = ecvq(w, int(b), float(lam), init=init, seed=seed)
        cb = cb.astype(np.float32)
        out[name] = Quantized(cb, idx, int(b))
        with torch.no_grad():
            p.copy_(torch.from_numpy(cb[idx]))
    return out


def finetune_centroids(model: nn.Module, data, quantized: Mapping[str, Quantized], *, epochs: int, lr: float = 2.5e-4,
                       optimizer: str = "adam", batch_size: int = 64, seed: int = 0, loss_fn=None,
                       masks: Masks | None = None, train_others: bool = True, keep_best: bool = True,
                       evaluate: Evaluate | None = None, progress: Progress | None = None,
                       workers: int = 0) -> list[dict]:
    """Trained quantization: each centroid moves by the summed gradient of the weights sharing it.

    After every step the quantized weights are reset to ``codebook[indices]``; codebook
    entries equal to 0.0 (the pruned zeros) never move. With ``train_others`` the remaining
    parameters (biases, norms, small layers) train too, within ``masks``. With ``keep_best``
    the state with the lowest mean training loss (measured before and after each epoch)
    is kept, so the loss never ends higher than it started. Updates ``quantized`` in place.

    In a multi-process run every rank holds the same codebooks: the weight gradients are averaged
    (DistributedDataParallel) before they are summed into the centroids, and the steps are the same."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    masks = {k: v for k, v in (masks or {}).items() if k not in quantized}
    params = dict(model.named_parameters())
    dev = model_device(model)
    cbs = {n: torch.tensor(q.codebook, dtype=torch.float32, device=dev, requires_grad=True) for n, q in quantized.items()}
    idx = {n: torch.from_numpy(q.indices.astype(np.int64)).reshape(-1).to(dev) for n, q in quantized.items()}
    frozen = {n: torch.from_numpy(q.codebook == 0).to(dev) for n, q in quantized.items()}
    net = dist.wrap(model)  # DistributedDataParallel in a multi-process run: averaged weight gradients
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
        for x, y in batches(data, batch_size, generator=gen, workers=workers, whole=True):
            opt.zero_grad(set_to_none=True)
            for name in quantized:
                params[name].grad = None
            loss = loss_fn(net(to_device(x, dev)), to_device(y, dev))
            total += float(loss.detach()) * len(x)
            n += len(x)
            dist.share_of_mean(loss, len(x)).backward()
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
        total, n = dist.all_sum(total, n)
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
        quantized[name].codebook = c.detach().cpu().numpy().astype(np.float32, copy=True)
    model.eval()
    return history

"""The training loop: (re)training with masks held, optional L1 / L2 penalties; one row of figures per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConvertError
from . import dist
from .loaders import batches, model_device, to_device
from .masks import Masks, apply_masks, layers, sparsity
from .metrics import Evaluate, _evaluate

Progress = Callable[[dict], None]


def _optimizer(params, kind: str, lr: float):
    params = list(params)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def train(model: nn.Module, data, epochs: int, *, lr: float = 1e-3, optimizer: str = "adam", masks: Masks | None = None,
          l1: float = 0.0, l2: float = 0.0, batch_size: int = 64, seed: int = 0, loss_fn=None,
          evaluate: Evaluate | None = None, progress: Progress | None = None, phase: str = "train",
          step: str | None = None, prox: float = 0.0, workers: int = 0, resume_from: dict | None = None,
          on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train ``model``; with ``masks`` the masked weights get no gradient and are reset to zero
    after every optimizer step, so they are exactly zero throughout. Returns one row per epoch.

    ``l1`` / ``l2`` add penalties on the compressible weights to the loss; ``prox`` is proximal
    L1 training instead: after every optimizer step each compressible weight is soft-thresholded
    by ``lr x prox`` (moved towards zero, set to exactly zero when within it), which gives exact
    zeros that the gradient of an L1 penalty never does. ``data``: see :func:`batches`. In a
    multi-process run (torch.distributed) the model trains inside DistributedDataParallel,
    each process on its share of every batch.

    ``on_epoch(state)`` is called after every epoch with what resuming needs (``epoch``, the
    optimizer's and the shuffling generator's state, ``history``); ``resume_from=state`` (with the
    model's weights as they were then) goes on from there exactly."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    masks = masks or {}
    params = dict(model.named_parameters())
    regularised = [params[n] for n in layers(model)]
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], optimizer, lr)
    gen = torch.Generator().manual_seed(seed)
    dev = model_device(model)
    net = dist.wrap(model)
    history, first = [], 0
    if resume_from:
        opt.load_state_dict(resume_from["optimizer"])
        gen.set_state(resume_from["generator"])
        history, first = list(resume_from["history"]), int(resume_from["epoch"])
    apply_masks(model, masks)
    for epoch in range(first, epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in batches(data, batch_size, generator=gen, workers=workers, whole=True):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(to_device(x, dev)), to_device(y, dev))
            total += float(loss.detach()) * len(x)
            n += len(x)
            loss = dist.share_of_mean(loss, len(x))
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
            if prox:
                with torch.no_grad():
                    for p in regularised:
                        p.copy_(nn.functional.softshrink(p, lr * prox))
            apply_masks(model, masks)
        total, n = dist.all_sum(total, n)
        if not math.isfinite(total):
            raise ConvertError(f"{phase}: the loss became {total / max(n, 1)} in epoch {epoch + 1} (training diverged); "
                               "try a lower learning rate")
        row = {"kind": "epoch", "phase": phase, "step": step, "epoch": epoch + 1, "epochs": epochs,
               "loss": total / max(n, 1), "sparsity": sparsity(model),
               "accuracy": _evaluate(model, evaluate) if evaluate else None}
        history.append(row)
        if on_epoch:
            on_epoch({"epoch": epoch + 1, "optimizer": opt.state_dict(), "generator": gen.get_state(),
                      "history": history})
        if progress:
            progress(row)
    model.eval()
    return history

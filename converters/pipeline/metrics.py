"""Measuring a model: the evaluate(model) -> float protocol (higher is better), top-1 accuracy over arrays, a
Dataset or a DataLoader, the negative mean loss as a metric, predictions, the mean loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import dist
from .loaders import _as_tensor, batches, is_arrays, model_device, to_device

Evaluate = Callable[[nn.Module], float]


def accuracy_fn(x, y=None, batch_size: int = 1024) -> Evaluate:
    """An evaluate(model) -> top-1 accuracy in percent over (x, y) arrays, or over ``x`` alone when it is
    a Dataset / DataLoader of (input, label) (split across the processes of a distributed run)."""
    if y is None and not is_arrays(x):
        data = x

        @torch.no_grad()
        def evaluate_data(model: nn.Module) -> float:
            dev = model_device(model)
            right, n = 0, 0
            for xb, yb in batches(data, batch_size, shuffle=False):
                right += int((model(to_device(xb, dev)).argmax(1).cpu() == _as_tensor(yb).reshape(-1)).sum())
                n += len(yb)
            right, n = dist.all_sum(right, n)
            return 100.0 * right / n if n else 0.0

        return evaluate_data
    if y is None:
        x, y = x
    x, y = _as_tensor(x, torch.float32), _as_tensor(y).long()

    def evaluate(model: nn.Module) -> float:
        return float((predict(model, x, batch_size) == y).float().mean() * 100)

    return evaluate


def negative_loss_fn(data, loss_fn=None, batch_size: int = 1024) -> Evaluate:
    """An evaluate(model) -> minus the mean loss over ``data`` (higher is better), for tasks without a
    natural score; a budget of 0.01 then allows the loss to rise by 0.01."""
    return lambda model: -mean_loss(model, data, loss_fn, batch_size)


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 1024) -> torch.Tensor:
    """Predicted classes (argmax of the logits), in eval mode."""
    was = model.training
    model.eval()
    x = _as_tensor(x, torch.float32)
    dev = model_device(model)
    out = torch.cat([model(to_device(x[s : s + batch_size], dev)).argmax(1).cpu() for s in range(0, len(x), batch_size)]) \
        if len(x) else torch.zeros(0, dtype=torch.long)
    model.train(was)
    return out


@torch.no_grad()
def mean_loss(model: nn.Module, data, loss_fn=None, batch_size: int = 1024) -> float:
    """Mean training loss over ``data`` in eval mode (no regularisation terms); in a distributed run each
    process takes its share and the sums are combined."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    was = model.training
    model.eval()
    dev = model_device(model)
    total, n = 0.0, 0
    for x, y in batches(data, batch_size, shuffle=False):
        total += float(loss_fn(model(to_device(x, dev)), to_device(y, dev))) * len(x)
        n += len(x)
    total, n = dist.all_sum(total, n)
    model.train(was)
    return total / max(n, 1)


def _evaluate(model: nn.Module, evaluate: Evaluate) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = float(evaluate(model))
    model.train(was)
    return dist.same_value(acc)

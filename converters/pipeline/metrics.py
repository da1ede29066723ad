"""Measuring a model: the evaluate(model) -> float protocol, top-1 accuracy, predictions, the mean loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .loaders import _as_tensor, batches

Evaluate = Callable[[nn.Module], float]


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

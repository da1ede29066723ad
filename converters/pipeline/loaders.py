"""How data reaches the training loop: (x, y) arrays or tensors in memory, or any iterable of (x, y, ...) batches."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConvertError

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

"""How data reaches the training loop: (x, y) arrays or tensors in memory, a map-style Dataset (batched and
shuffled here, sharded across processes under torch.distributed), or any iterable of (x, y, ...) batches
(a DataLoader, used as given)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import ConvertError
from . import dist


def _as_tensor(a, dtype=None) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    return t if dtype is None else t.to(dtype)


def is_arrays(data) -> bool:
    """(x, y) arrays / tensors held in memory."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list))


def is_dataset(data) -> bool:
    """A map-style dataset (``len`` and ``[i]`` -> (x, y, ...)): a torch Dataset, or anything shaped like one."""
    if is_arrays(data) or isinstance(data, (tuple, list, Mapping, str, bytes, np.ndarray, torch.Tensor)):
        return False
    if isinstance(data, torch.utils.data.DataLoader):
        return False
    if isinstance(data, torch.utils.data.IterableDataset):
        return False
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


class GlobalBatches(torch.utils.data.Sampler):
    """Batches of indices in the order a single process would use (``randperm`` with ``generator``);
    under torch.distributed each process gets its share (``batch[rank::world]``) of every batch, so
    the summed gradients are those of the single-process batch."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None, shard: bool = True,
                 whole: bool = False):
        self.n, self.batch_size, self.shuffle, self.generator, self.shard = n, batch_size, shuffle, generator, shard
        self.whole = whole

    def __iter__(self):
        rank, world = dist.rank_world() if self.shard else (0, 1)
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for s in range(0, self.n, self.batch_size):
            idx = _share(order[s : s + self.batch_size], rank, world, self.whole)
            if idx is not None:
                yield idx.tolist()

    def __len__(self):
        return -(-self.n // self.batch_size)


def _share(idx: torch.Tensor, rank: int, world: int, whole: bool):
    """This process's part of a batch of indices, or None to skip it (an empty part; with ``whole``, a batch
    too small for every process to get a part is skipped by all, as every process must take each step)."""
    if world == 1:
        return idx
    if whole and len(idx) < world:
        return None
    idx = idx[rank::world]
    return idx if len(idx) else None


def batches(data, batch_size: int = 64, shuffle: bool = True, generator: torch.Generator | None = None,
            shard: bool = True, workers: int = 0, whole: bool = False):
    """(x, y) batches from (x, y) tensors / arrays, a map-style Dataset, or an iterable of
    (x, y, ...) batches such as a DataLoader (used as given: under torch.distributed give it a
    DistributedSampler). Arrays and Datasets are batched and shuffled here with ``generator``;
    with ``shard`` each process of a distributed run gets its part (``batch[rank::world]``) of
    every batch; with ``whole`` (training) a last batch smaller than the number of processes
    is skipped."""
    rank, world = dist.rank_world() if shard else (0, 1)
    if is_arrays(data):
        x, y = _as_tensor(data[0]), _as_tensor(data[1])
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()
        y = y.long() if not y.is_floating_point() else y
        n = len(x)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = _share(order[s : s + batch_size], rank, world, whole)
            if idx is not None:
                yield x[idx], y[idx]
        return
    if is_dataset(data):
        sampler = GlobalBatches(len(data), batch_size, shuffle, generator, shard, whole)
        data = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers)
    elif isinstance(data, torch.utils.data.IterableDataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=workers)
    for b in data:
        if isinstance(b, Mapping) or not isinstance(b, (tuple, list)) or len(b) < 2:
            raise ConvertError(f"a batch of the data is a {type(b).__name__}; the pipeline takes (input, target, ...) "
                               "pairs (a Dataset's items or a DataLoader's batches)")
        yield b[0], b[1]


def first_batch(data):
    for x, y in batches(data, 2, shuffle=False, shard=False):
        return x, y
    raise ConvertError("the training data is empty")


def to_device(t, device):
    """A tensor (or a tuple / list / dict of them) on ``device``; CPU tensors stay as they are on the CPU."""
    if device is None:
        return t
    if isinstance(t, torch.Tensor):
        return t if t.device == device else t.to(device, non_blocking=True)
    if isinstance(t, (tuple, list)):
        return type(t)(to_device(v, device) for v in t)
    if isinstance(t, Mapping):
        return {k: to_device(v, device) for k, v in t.items()}
    return t


def model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")

"""More than one process (``torchrun``): who this process is, DistributedDataParallel around the model while it
trains, sums across processes, values / masks / codebooks kept identical on every rank, only rank 0 writes.

Without an initialised process group every function is the single-process identity, so the same code runs both ways.
"""

from __future__ import annotations

import os

import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    td = torch.distributed
    if td.is_available() and td.is_initialized():
        return td.get_rank(), td.get_world_size()
    return 0, 1


def active() -> bool:
    return rank_world()[1] > 1


def is_main() -> bool:
    return rank_world()[0] == 0


def init_from_env(device: str | None = None) -> bool:
    """Join the process group that torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...): NCCL for CUDA,
    gloo for the CPU. Returns whether this is a multi-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    td = torch.distributed
    if not td.is_initialized():
        backend = "nccl" if device and device.startswith("cuda") else "gloo"
        td.init_process_group(backend)
    return td.get_world_size() > 1


def shutdown() -> None:
    td = torch.distributed
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def wrap(model):
    """The model to train with: DistributedDataParallel around it in a multi-process run (it broadcasts rank 0's
    parameters and buffers, then averages the gradients in every backward), else the model itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    return DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)


def _comm_device(t: torch.Tensor) -> torch.device:
    td = torch.distributed
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def all_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over the processes (float64)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    d = _comm_device(t)
    t = t.to(d)
    torch.distributed.all_reduce(t)
    return tuple(float(v) for v in t.cpu())


def share_of_mean(loss, n: int):
    """A process's mean loss over its ``n`` samples, weighted so that DistributedDataParallel's average of the
    gradients is the gradient of the mean over the whole batch even when the shares differ in size."""
    if not active():
        return loss
    (total,) = all_sum(n)
    return loss * (n * rank_world()[1] / total)


def same_value(value: float) -> float:
    """Rank 0's value on every rank (so that every process takes the same decisions)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    d = _comm_device(t)
    t = t.to(d)
    torch.distributed.broadcast(t, 0)
    return float(t.cpu()[0])


@torch.no_grad()
def same_tensors(tensors) -> None:
    """Overwrite the tensors in place with rank 0's (masks, codebooks, parameters)."""
    if not active():
        return
    for t in tensors:
        d = _comm_device(t)
        if t.device == d and t.dtype != torch.bool:
            torch.distributed.broadcast(t, 0)
        else:  # bool tensors travel as uint8
            tmp = t.to(d, torch.uint8 if t.dtype == torch.bool else t.dtype)
            torch.distributed.broadcast(tmp, 0)
            t.copy_(tmp.to(t.device, t.dtype))


def barrier() -> None:
    if active():
        torch.distributed.barrier()

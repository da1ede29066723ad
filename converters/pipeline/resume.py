"""Resuming an interrupted run: the pipeline's state after each stage (dense training, the scan, every pruning
step, every shared + fine-tuned attempt) in one file, replaced atomically, holding plain tensors, numbers and
strings only (torch.save; read back with torch.load(weights_only=True), so a state file never runs code)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from dcformat.atomic import atomic_output
from dcformat.errors import first_line

from ..errors import ConvertError
from . import dist
from .loaders import is_arrays

FORMAT = "dcz-pipeline-state/1"

# stages in run order: (attempt, part, step); attempts count from 0
TRAINED = (-2, 0, 0)  # the dense model, trained (if asked) and measured


def trained_epoch(epoch: int) -> tuple:
    """An epoch of dense training done (before TRAINED)."""
    return (-3, 0, epoch)


SCANNED = (-1, 0, 0)  # the sensitivity scan


def pruned(attempt: int, step: int) -> tuple:
    return (attempt, 0, step)


def shared(attempt: int) -> tuple:
    return (attempt, 1, 0)


def describe(stage) -> str:
    a, part, step = stage
    if a == -3:
        return f"epoch {step} of dense training"
    if tuple(stage) == TRAINED:
        return "the dense model"
    if tuple(stage) == SCANNED:
        return "the sensitivity scan"
    where = f" (attempt {a + 1})" if a else ""
    return f"pruning step {step}{where}" if part == 0 else f"weight sharing and fine-tuning{where}"


def _digest(h, a) -> None:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().contiguous()
        h.update(f"{tuple(a.shape)} {a.dtype}".encode())
        h.update(a.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape} {a.dtype.str}".encode())
        h.update(a.tobytes())


def fingerprint(model, data, settings: dict, input_shape) -> str:
    """What makes two runs the same run: the settings, the model's starting weights, the input shape and
    the training data (its arrays' bytes; the length of a Dataset or DataLoader)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(repr(tuple(input_shape)).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _digest(h, t)
    if is_arrays(data):
        _digest(h, data[0])
        _digest(h, data[1])
    else:
        try:
            h.update(f"{type(data).__name__} {len(data)}".encode())
        except TypeError:
            h.update(type(data).__name__.encode())
    return h.hexdigest()


def cpu(obj):
    """A copy with every tensor on the CPU (dicts, lists and tuples followed)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu(v) for v in obj)
    return obj


class State:
    """The state file of one run (``path`` None: no saving, nothing to resume)."""

    def __init__(self, path, key: str):
        self.path = None if path is None else os.fspath(path)
        self.key = key

    def load(self) -> dict | None:
        """The saved state, or None when there is none; a file of another run or an unreadable one is an error."""
        if self.path is None or not os.path.exists(self.path):
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
            raise ConvertError(f"{self.path}: not a readable pipeline state ({first_line(e)}); delete it to start "
                               "afresh") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ConvertError(f"{self.path}: not a pipeline state file ({FORMAT}); delete it to start afresh")
        if obj.get("key") != self.key:
            raise ConvertError(f"{self.path}: saved by a different run (other settings, model weights or data); "
                               "delete it to start afresh, or resume with the same options")
        obj["stage"] = tuple(obj["stage"])
        return obj

    def save(self, stage: tuple, fields: dict) -> None:
        """Replace the state file whole (rank 0 only): the stage reached, ``fields``, the torch RNG."""
        if self.path is None:
            return
        if dist.is_main():
            obj = {"format": FORMAT, "key": self.key, "stage": list(stage), "rng": torch.get_rng_state(),
                   **cpu(fields)}
            with atomic_output(self.path) as f:
                torch.save(obj, f)
        dist.barrier()

    def remove(self) -> None:
        if self.path is not None and dist.is_main() and os.path.exists(self.path):
            os.unlink(self.path)

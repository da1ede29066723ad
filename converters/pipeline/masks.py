"""The compressible weights (nn.Linear / nn.Conv weights) and their pruning masks: magnitude and whole-neuron."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..compress import neuron_mask
from ..prune import magnitude_mask

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


def magnitude_masks(model: nn.Module, targets: Mapping[str, float], masks: Masks | None = None) -> Masks:
    """Masks pruning the smallest-magnitude weights of each named layer to its target sparsity.

    Combined with ``masks`` (once pruned, always pruned); zeros count towards the target."""
    masks = dict(masks or {})
    params = dict(model.named_parameters())
    for name, target in targets.items():
        if not target:
            continue
        w = params[name].detach().cpu().numpy()
        keep = torch.from_numpy(np.ascontiguousarray(magnitude_mask(w, min(float(target), 0.9999)))).to(params[name].device)
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
        keep = torch.from_numpy(np.ascontiguousarray(neuron_mask(w, float(frac), lay.out_axis))).to(lay.param.device)
        masks[name] = keep & masks[name] if name in masks else keep
        if bias and lay.bias:
            rows = keep.movedim(lay.out_axis, 0).reshape(keep.shape[lay.out_axis], -1).any(1)
            masks[lay.bias] = rows & masks[lay.bias] if lay.bias in masks else rows
    return masks

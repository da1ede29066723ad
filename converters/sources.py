"""Inputs of dcconvert, recognised by content: ONNX, PyTorch (state_dict, TorchScript,
torch.export .pt2, nn.Module pickles with --trust-code) and safetensors.

Every input becomes a :class:`Source`: the model graph (ONNX, weights replaced by
references) or None for weights-only files, the weights as numpy arrays, and what each
weight is (conv / fc / other, and which axis holds its output neurons).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from dcformat.constants import MAGIC
from dcformat.errors import first_line
from dcformat.graph import iter_tensors, reference, strip_weights

from .errors import ConvertError
from .roles import graph_roles, mark_analytic, shape_roles

KINDS = ("onnx", "torchscript", "exported-program", "state_dict", "module-pickle", "safetensors")


@dataclass
class Source:
    path: str
    kind: str
    graph: object | None  # onnx.ModelProto with references, or None (weights only)
    weights: dict[str, np.ndarray]
    roles: dict[str, str] = field(default_factory=dict)  # name -> a role of converters.roles.ROLES
    out_axes: dict[str, int] = field(default_factory=dict)  # name -> axis of output neurons/filters
    sha256: str = ""
    size: int = 0
    notes: list[str] = field(default_factory=list)
    dims: dict[str, int] = field(default_factory=dict)  # symbolic dims the example inputs named -> their sizes
    graph_opt: dict | None = None  # what converters.graphopt changed in the graph, when it was rewritten


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sniff(path) -> str:
    """What a file is, from its bytes (then its extension where bytes can't tell)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(MAGIC):
        raise ConvertError(f"{path} is already a .dcz file")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            raise ConvertError(f"{path}: a damaged zip archive (not a readable PyTorch file)") from None
        if any(n.endswith("archive_format") or "/models/" in n for n in names):
            return "exported-program"
        if any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-pickle"
        raise ConvertError(f"{path}: a zip archive that is not a PyTorch checkpoint")
    if len(head) >= 10 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8:
            return "safetensors"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "torch-pickle"  # legacy torch.save or a plain pickle
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".onnx" or head[:1] == b"\x08":  # ModelProto field 1 (ir_version) comes first
        return "onnx"
    raise ConvertError(f"{path}: unknown format (not ONNX, PyTorch, TorchScript, torch.export .pt2 or safetensors)")


def split_weights(model):
    """(graph with references, {name: array}) of an ONNX model, which is used up.

    The graph is parsed anew from its bytes: clearing the weights' fields leaves their bytes
    in the old message's memory, which would otherwise stay as long as the graph.
    """
    import onnx

    graph, weights = strip_weights(model, copy=False)
    return onnx.ModelProto.FromString(graph.SerializeToString()), weights


def load_onnx(path) -> Source:
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=True)
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise many kinds
        raise ConvertError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
    if not model.graph.node and not model.graph.initializer:
        raise ConvertError(f"{path}: not an ONNX model (no graph)")
    graph, weights = split_weights(model)
    del model
    return Source(os.fspath(path), "onnx", graph, weights, *weight_roles(graph, weights))


def weight_roles(graph, weights: dict) -> tuple[dict, dict]:
    """(roles, output axes) of the weights of a graph split by :func:`split_weights` (converters.roles)."""
    roles, axes = graph_roles(graph)  # after the split: Constant-node tensors (subgraphs too) carry their names
    return {k: v for k, v in roles.items() if k in weights}, {k: v for k, v in axes.items() if k in weights}


def rename_values(model, ren: dict) -> None:
    """Rename values (initializers, graph inputs/outputs, node inputs/outputs) everywhere, subgraphs too."""
    from onnx import AttributeProto

    def walk(g):
        for t in g.initializer:
            t.name = ren.get(t.name, t.name)
        for vi in (*g.input, *g.output, *g.value_info):
            vi.name = ren.get(vi.name, vi.name)
        for node in g.node:
            for xs in (node.input, node.output):
                for k, x in enumerate(xs):
                    if x in ren:
                        xs[k] = ren[x]
            for at in node.attribute:
                if at.type == AttributeProto.GRAPH:
                    walk(at.g)
                elif at.type == AttributeProto.GRAPHS:
                    for sub in at.graphs:
                        walk(sub)

    if ren:
        walk(model.graph)



def _safetensors_dtypes(path) -> list[str]:
    """The dtypes a safetensors header names that numpy lacks (for the error message)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(n, 100 << 20)))
        found = sorted({e["dtype"] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [d for d in found if d.startswith(("F8", "F6", "F4", "E8", "C"))] or found


def load_safetensors(path) -> Source:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        weights = load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConvertError(f"{path}: not a readable safetensors file ({first_line(e)})") from None
    except (AttributeError, TypeError, KeyError) as e:  # a dtype numpy has no name for: F8_E4M3 ...
        dtypes = _safetensors_dtypes(path)
        raise ConvertError(f"{path}: a safetensors dtype numpy cannot hold ({', '.join(dtypes) or first_line(e)}); "
                           "dcz stores float64/32/16, bfloat16 and integer/bool tensors") from None
    roles, axes = shape_roles(weights)
    return Source(os.fspath(path), "safetensors", None, dict(weights), roles, axes,
                  notes=["weights only: no graph (decode gives back a state_dict)"])


def load(path, *, input_shapes=None, trust_code: bool = False, model_factory: str | None = None,
         opset: int | None = None, trust_pickle: bool = False, inputs=None, calibration=None) -> Source:
    """Load any supported input as a Source. Code from the file (or ``model_factory``'s module) runs only with
    ``trust_code`` (``trust_pickle`` is its old name): see spec/SECURITY.md. ``inputs``: parsed ``--input``
    specs (dcformat.inputs.InputSpec), the example inputs of a PyTorch export (else the first sample of
    ``calibration``)."""
    trust_code = trust_code or trust_pickle
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    if os.path.isdir(path):
        raise ConvertError(f"{path} is a directory; give a model file")
    kind = sniff(path)
    if kind in ("onnx", "safetensors"):
        src = load_onnx(path) if kind == "onnx" else load_safetensors(path)
        given = [flag for flag, v in (("--input-shape", input_shapes), ("--model", model_factory), ("--opset", opset),
                                      ("--trust-code", trust_code),
                                      ("--input", kind == "safetensors" and inputs)) if v]
        if given:
            src.notes.append(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to PyTorch inputs; "
                             f"ignored for this {'ONNX' if kind == 'onnx' else 'safetensors'} file")
    else:
        from . import torch_inputs

        src = torch_inputs.load(path, kind, input_shapes=input_shapes, trust_code=trust_code,
                                model_factory=model_factory, opset=opset, inputs=inputs, calibration=calibration)
    for name, a in src.weights.items():  # bool bytes other than 0/1 (safetensors, ONNX raw_data): as numpy's truth
        if a.dtype == np.bool_ and a.size and a.view(np.uint8).max() > 1:
            src.weights[name] = a.view(np.uint8) != 0
    mark_analytic(src.roles, src.weights)  # one rule for every format: a fixed transform is no learned filter
    src.sha256 = file_sha256(path)
    src.size = os.path.getsize(path)
    return src


def referenced_names(graph) -> list[str]:
    return [n for _, t in iter_tensors(graph.graph) if (n := reference(t))]


__all__ = ["Source", "load", "sniff", "graph_roles", "shape_roles", "weight_roles", "rename_values", "KINDS", "json"]

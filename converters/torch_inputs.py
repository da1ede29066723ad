"""PyTorch inputs: state_dicts, TorchScript, torch.export programs, nn.Module pickles.

Nothing here runs code from a file unless the user passed ``--trust-code`` (alias
``--trust-pickle``); spec/SECURITY.md has the model per input kind:

* state dicts: ``torch.load(weights_only=True)``, after the archive's declared sizes are
  checked (:func:`converters.torch_archive.check_zip_size`);
* TorchScript and torch.export ``.pt2`` archives: their tensors, read by
  :mod:`converters.torch_archive` (zipfile, JSON, a restricted unpickler: nothing from the
  file runs), giving a weights-only Source. Only with the flag are they loaded by
  ``torch.jit.load`` (runs the archive's TorchScript, ``__setstate__`` included) or
  ``torch.export.load`` (evaluates the archive's shape expressions with sympy, which runs
  Python; unpickles its objects), so their graphs can be exported to ONNX;
* whole pickled nn.Modules (``torch.load(weights_only=False)``) and ``--model
  package.module:factory`` (imports and calls Python code): only with the flag.

Models are exported to ONNX with their batch dimension dynamic; what the exporters print is
kept off the terminal.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import tempfile
import warnings

import numpy as np

from dcformat.errors import first_line

from .errors import ConvertError
from .sources import Source, graph_roles, shape_roles, split_weights

DEFAULT_OPSET = 17


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("PyTorch inputs need PyTorch: pip install 'dcz[torch]' (torch==2.13.0)") from None
    return torch


TRUST_FLAG = "--trust-code"


def _pickle_message(path) -> str:
    return (f"{path}: a pickled Python object (such as a whole nn.Module), not a plain state_dict; loading it "
            f"runs code from the file. If you trust the file, pass {TRUST_FLAG}: it unpickles the file with "
            "torch.load(weights_only=False), which can run any Python code")


TORCHSCRIPT_NOTE = ("weights only: the TorchScript archive's tensors were read without running it; its graph needs "
                    f"{TRUST_FLAG} (with --input-shape), which loads it with torch.jit.load: that runs the archive's "
                    "TorchScript code (its __setstate__ methods, which can read and write files)")
PT2_NOTE = ("weights only: the torch.export archive's weights were read without loading it; its graph needs "
            f"{TRUST_FLAG}, which loads it with torch.export.load: that evaluates the archive's shape expressions "
            "as Python (sympy) and unpickles its objects, so it can run any code")


@contextlib.contextmanager
def _quiet():
    """Send what PyTorch prints to file descriptors 1 and 2 to a scratch file: the TorchScript
    exporter's C++ graph dumps (on stdout, where --json goes), log records with tracebacks.
    The CLI's output is its own."""
    streams = (sys.stdout, sys.stderr)
    for s in streams:
        s.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    try:
        with tempfile.TemporaryFile() as scratch:
            for fd in (1, 2):
                os.dup2(scratch.fileno(), fd)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield
            finally:
                for s in streams:
                    s.flush()
                for fd, copy in zip((1, 2), saved):
                    os.dup2(copy, fd)
    finally:
        for copy in saved:
            os.close(copy)


def to_numpy(t) -> np.ndarray:
    torch = _torch()
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def _state_dict_of(obj, path, notes=None):
    torch = _torch()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                others = [str(k) for k in obj if k != key]
                if notes is not None:
                    notes.append(f"the checkpoint is a dict: its weights come from [{key!r}]"
                                 + (f"; ignored: {', '.join(others[:6])}{', ...' if len(others) > 6 else ''}" if others else ""))
                obj = obj[key]
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ConvertError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")


def _example_inputs(torch, input_shapes, path) -> tuple:
    """Zero tensors of the --input-shape shapes, for tracing."""
    try:
        return tuple(torch.zeros(*s) for s in input_shapes)
    except (RuntimeError, MemoryError) as e:  # torch's allocator raises RuntimeError
        raise ConvertError(f"{path}: cannot make example inputs of shape "
                           f"{', '.join('x'.join(map(str, s)) for s in input_shapes)}: {first_line(e)}") from None


def _export(module, path, input_shapes, opset, dynamo: bool = False):
    """ONNX ModelProto of a module/ScriptModule, batch dimension dynamic."""
    import onnx

    torch = _torch()
    if not input_shapes:
        raise ConvertError(f"{path}: exporting the model to ONNX needs its input shape: add --input-shape 1,3,224,224 "
                           "(repeat it for several inputs)")
    args = _example_inputs(torch, input_shapes, path)
    names = ["input"] if len(args) == 1 else [f"input{i}" for i in range(len(args))]
    buf = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset or DEFAULT_OPSET,
                              input_names=names, output_names=["output"],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}})
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        raise ConvertError(_export_error(path, e, opset)) from None
    return onnx.load_from_string(buf.getvalue())


def _export_error(path, e: BaseException, opset) -> str:
    """One line: what failed, which operator, what to try (not torch's 500-character message)."""
    import re

    msg = first_line(e)
    op = re.search(r"\b((?:aten|prim|onnx|quantized|torchvision)::[A-Za-z0-9_.]+)", str(e))
    if op and ("not supported" in str(e) or "Unsupported" in str(e) or "unsupported" in str(e)):
        return (f"{path}: cannot export the model to ONNX: operator {op.group(1)} is not supported at opset "
                f"{opset or DEFAULT_OPSET}; try a newer --opset (up to 23), or export the model to ONNX yourself "
                "and convert the .onnx")
    where = f" (in {op.group(1)})" if op else ""
    if len(msg) > 200:
        msg = msg[:197] + "..."
    return f"{path}: cannot export the model to ONNX{where}: {msg}; try another --opset or --input-shape"


def _export_program(ep, path, input_shapes, opset):
    torch = _torch()
    if input_shapes:
        args = _example_inputs(torch, input_shapes, path)
    else:
        args = tuple(getattr(ep, "example_inputs", ((), {}))[0] or ())
        if not args:
            raise ConvertError(f"{path}: the exported program carries no example inputs: add --input-shape")
    with _quiet():
        note = None
        try:  # re-export with a dynamic batch dimension when the program allows it
            batch = torch.export.Dim("batch", min=1)
            ep = torch.export.export(ep.module(), args, dynamic_shapes=tuple({0: batch} for _ in args))
        except Exception:  # noqa: BLE001 - keep the program's own (static) shapes
            note = (f"the exported program fixes its input shapes ({', '.join(str(list(a.shape)) for a in args)}); "
                    "export it with torch.export dynamic_shapes for a dynamic batch")
        try:
            prog = torch.onnx.export(ep, args, dynamo=True, opset_version=opset or 18, verbose=False)
        except ModuleNotFoundError as e:
            raise ConvertError(f"{path}: exporting a torch.export program needs {e.name}: pip install 'dcz[torch]'") from None
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: cannot export the program to ONNX: {first_line(e)}") from None
    return prog.model_proto, note


def _from_model(model, path, kind) -> Source:
    graph, weights = split_weights(model)
    roles, axes = graph_roles(graph)  # after the split: Constant-node tensors (subgraphs too) carry their names
    return Source(os.fspath(path), kind, graph, weights,
                  {k: v for k, v in roles.items() if k in weights}, {k: v for k, v in axes.items() if k in weights})


def _cwd_importable() -> None:
    """As `python -m` would: a module beside the user's files can be imported (--model, and the
    classes of a pickled model loaded with --trust-pickle)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def _factory(spec: str):
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise ConvertError(f"--model takes package.module:factory, got {spec!r}")
    _cwd_importable()
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or whatever the module raises
        raise ConvertError(f"--model {spec}: {first_line(e)}") from None
    return fn


def load(path, kind, *, input_shapes=None, trust_code=False, model_factory=None, opset=None,
         trust_pickle=False) -> Source:
    """The Source of a PyTorch file; ``trust_code`` (``trust_pickle`` is its old name) allows the loaders that
    run code from the file (or, with ``model_factory``, the named module)."""
    from . import torch_archive

    trust_code = trust_code or trust_pickle
    path = os.fspath(path)
    if model_factory and not trust_code:
        raise ConvertError(f"--model {model_factory} imports and runs Python code ({model_factory.partition(':')[0]}); "
                           f"if you trust it, pass {TRUST_FLAG} as well")
    if kind in ("torchscript", "exported-program") and not trust_code:
        weights = (torch_archive.torchscript_tensors if kind == "torchscript" else torch_archive.pt2_tensors)(path)
        if not weights:
            raise ConvertError(f"{path}: the archive holds no tensors readable without running it; {TRUST_FLAG} "
                               "would load it with " + ("torch.jit.load, running its TorchScript code"
                                                        if kind == "torchscript" else
                                                        "torch.export.load, which can run code from the file"))
        roles, axes = shape_roles(weights)
        notes = [TORCHSCRIPT_NOTE if kind == "torchscript" else PT2_NOTE]
        if input_shapes or opset:
            notes.append(f"--input-shape and --opset apply to the graph: ignored without {TRUST_FLAG}")
        return Source(path, kind, None, weights, roles, axes, notes=notes)
    torch = _torch()
    if kind == "torchscript":
        try:
            with _quiet():
                module = torch.jit.load(path, map_location="cpu")  # runs the archive's code: the user trusts it
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: a damaged TorchScript archive ({first_line(e)})") from None
        return _from_model(_export(module.eval(), path, input_shapes, opset), path, "torchscript")
    if kind == "exported-program":
        _cwd_importable()  # its pickles may name classes of modules beside the user's files
        try:
            with _quiet():
                ep = torch.export.load(path)  # evaluates shape expressions, unpickles: the user trusts the file
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: a damaged torch.export archive ({first_line(e)})") from None
        model, note = _export_program(ep, path, input_shapes, opset)
        src = _from_model(model, path, "exported-program")
        src.notes += [note] if note else []
        return src
    # torch.save pickles: weights only unless the user trusts the file
    _check_declared_size(path)
    try:
        with _quiet():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        msg = first_line(e)
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            if not trust_code:
                raise ConvertError(_pickle_message(path)) from None
            _cwd_importable()
            try:
                with _quiet():
                    obj = torch.load(path, map_location="cpu", weights_only=False)  # the user said the file is trusted
            except Exception as e2:  # noqa: BLE001
                raise ConvertError(f"{path}: cannot load the pickle ({first_line(e2)})") from None
        else:
            raise ConvertError(f"{path}: not a readable PyTorch file ({msg})") from None
    if isinstance(obj, torch.nn.Module):
        return _from_model(_export(obj.eval(), path, input_shapes, opset), path, "module-pickle")
    notes = []
    sd = _state_dict_of(obj, path, notes)
    if model_factory:
        fn = _factory(model_factory)
        try:
            module = fn()
        except Exception as e:  # noqa: BLE001 - the user's code
            raise ConvertError(f"--model {model_factory}: calling it failed: {first_line(e)}") from None
        try:
            module.load_state_dict(sd)
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: the state_dict does not fit {model_factory}: {first_line(e)}") from None
        src = _from_model(_export(module.eval(), path, input_shapes, opset), path, "state_dict")
        src.notes += notes
        return src
    weights = {k: to_numpy(v) for k, v in sd.items()}
    roles, axes = shape_roles(weights)
    return Source(path, "state_dict", None, weights, roles, axes,
                  notes=notes + ["weights only: no graph; pass --model package.module:factory, --input-shape and "
                         f"{TRUST_FLAG} (it imports your module) to include it"])


def _check_declared_size(path) -> None:
    """A zip checkpoint's declared contents within the converter's bound, before torch inflates them."""
    import zipfile

    from .torch_archive import check_zip_size

    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            check_zip_size(path, z, os.path.getsize(path))
    except zipfile.BadZipFile as e:
        raise ConvertError(f"{path}: a damaged zip archive ({e})") from None

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
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np

from dcformat.errors import first_line

from . import factory
from .errors import ConvertError
from .sources import Source, rename_values, shape_roles, split_weights, weight_roles

DEFAULT_OPSET = 17


def _torch():
    try:
        import torch
    except ImportError:
        raise ConvertError("PyTorch inputs need PyTorch: pip install 'dcz[torch]' (torch==2.13.0)") from None
    return torch


TRUST_FLAG = factory.TRUST_FLAG


def _pickle_message(path) -> str:
    return (f"{path}: a pickled Python object (such as a whole nn.Module), not a plain state_dict; loading it "
            f"runs code from the file. If you trust the file, pass {TRUST_FLAG}: it unpickles the file with "
            "torch.load(weights_only=False), which can run any Python code")


TORCHSCRIPT_NOTE = ("weights only: the TorchScript archive's tensors were read without running it; its graph needs "
                    f"{TRUST_FLAG} (with --input), which loads it with torch.jit.load: that runs the archive's "
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
    """Zero tensors of the --input-shape shapes, for tracing (torch.export programs)."""
    try:
        return tuple(torch.zeros(*s) for s in input_shapes)
    except (RuntimeError, MemoryError) as e:  # torch's allocator raises RuntimeError
        raise ConvertError(f"{path}: cannot make example inputs of shape "
                           f"{', '.join('x'.join(map(str, s)) for s in input_shapes)}: {first_line(e)}") from None


# ---------------------------------------------------------------------- example inputs of an export


@dataclass
class _Param:
    """One argument of a model's forward: name, type as written ("Tensor", "int", "Optional[Tensor]",
    "" when unannotated), whether it must be given, and whether it can be passed by keyword."""

    name: str
    type: str
    required: bool
    keyword: bool = True
    default: object = None

    @property
    def kind(self) -> str:
        """tensor, int, float, bool, any (unannotated) or other (what dcconvert cannot pass)."""
        t = self.type.replace("torch.", "").replace(" ", "")
        t = t[9:-1] if t.startswith("Optional[") else t.removesuffix("|None")
        return {"Tensor": "tensor", "int": "int", "float": "float", "bool": "bool", "": "any"}.get(t, "other")

    def describe(self) -> str:
        return f"{self.name}: {self.type}" if self.type else self.name


def _type_name(annotation) -> str:
    import inspect

    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    torch = _torch()
    if annotation is torch.Tensor:
        return "Tensor"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("torch.", "")


def _parameters(module):
    """(arguments of module.forward, takes *args, takes **kwargs), or None where they cannot be read."""
    import inspect

    torch = _torch()
    if isinstance(module, torch.jit.ScriptModule):
        try:
            args = module.forward.schema.arguments[1:]  # after self
        except Exception:  # noqa: BLE001 - a module without a scripted forward
            return None
        return [_Param(a.name, str(a.type), not a.has_default_value()) for a in args], False, False
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return None
    params, varpos, varkw = [], False, False
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            varpos = True
        elif p.kind is p.VAR_KEYWORD:
            varkw = True
        else:
            params.append(_Param(p.name, _type_name(p.annotation), p.default is p.empty,
                                 p.kind is not p.POSITIONAL_ONLY, None if p.default is p.empty else p.default))
    return params, varpos, varkw


def _signature(params) -> str:
    return f"forward({', '.join(p.describe() for p in params)})"


def _hint(p: _Param) -> str:
    if p.kind in ("int", "float", "bool"):
        return f"--input {p.name}={ {'int': '16000', 'float': '0.5', 'bool': 'true'}[p.kind] }"
    ids = any(w in p.name.lower() for w in ("ids", "mask", "token", "index", "position"))
    return f"--input {p.name}:{'1x128:int64' if ids else '1x3x224x224:float32'}"


def _table_rows(module) -> int | None:
    """Rows of the smallest embedding table in the module: example ids below it index every table."""
    torch = _torch()
    rows = []
    for _, m in module.named_modules():
        if isinstance(m, torch.nn.Embedding) or getattr(m, "original_name", None) == "Embedding":
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2:
                rows.append(int(w.shape[0]))
    return min(rows) if rows else None


def _to_tensor(torch, a: np.ndarray):
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def _expand(specs, calibration, path):
    """(name or None, spec or None, array or None) per example input: files read (an .npz gives one per
    array), else the first sample of --calibration when no --input/--input-shape is given."""
    from dcformat import inputs as inp

    out = []
    try:
        if not specs and calibration is not None:
            if os.path.isdir(calibration):  # as --calibration reads one: an .npy is the input its stem names
                items = {}
                for f in sorted(f for f in os.listdir(calibration) if f.endswith((".npz", ".npy"))):
                    got = inp._read_array(os.path.join(calibration, f), "--calibration")
                    for k, a in (got.items() if isinstance(got, dict) else [(os.path.splitext(f)[0], got)]):
                        items.setdefault(k, a)
                items = items.items()
            else:
                got = inp._read_array(calibration, "--calibration")
                items = got.items() if isinstance(got, dict) else [(None, got)]
            return [(k, None, a[:1] if a.ndim else a) for k, a in items]
        for spec in specs:
            if spec.kind == "file":
                out += [(k, spec, a) for k, a in inp.read_spec_arrays(spec).items()]
            else:
                out.append((spec.name, spec, None))
    except inp.InputError as e:
        raise ConvertError(str(e)) from None
    names = [n for n, _, _ in out if n is not None]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConvertError(f"--input {dup[0]} is given twice (an .npz and another --input)")
    return out


def _bind(module, examples, path):
    """{argument: (spec, array)} in forward's order, checked against its signature; ConvertError names the
    argument that cannot be given."""
    info = _parameters(module)
    named = [(n, s, a) for n, s, a in examples if n is not None]
    unnamed = [(s, a) for n, s, a in examples if n is None]
    if info is None:  # no readable signature: in the order given
        if named and unnamed:
            raise ConvertError(f"{path}: the model's forward arguments cannot be read: give its inputs in order, all "
                               "named or all unnamed")
        return {(n or f"input{i}"): (s, a) for i, (n, s, a) in enumerate(examples)}, None
    params, varpos, varkw = info
    sig = _signature(params)
    known = {p.name for p in params}
    bound = {}
    for n, s, a in named:
        if n not in known and not varkw:
            raise ConvertError(f"{path}: --input {n}: the model's {sig} has no argument {n!r}")
        bound[n] = (s, a)
    free = [p for p in params if p.name not in bound]
    if len(unnamed) > len(free) and not varpos:
        raise ConvertError(f"{path}: {len(examples)} example inputs for the model's {sig}")
    for p, sa in zip(free, unnamed):
        bound[p.name] = sa
    for i, sa in enumerate(unnamed[len(free):]):
        bound[f"*{i}"] = sa  # beyond the named arguments: *args
    for p in params:
        if p.name not in bound and not p.required:
            continue  # its default
        if p.name not in bound and p.kind != "other":
            kind = "" if p.kind == "any" else f" ({p.type})"
            raise ConvertError(f"{path}: the model's {sig} needs argument {p.name!r}{kind}: give it with {_hint(p)}")
        s, a = bound.get(p.name, (None, None))
        is_value = s is not None and s.kind == "value"
        if p.kind == "other":
            raise ConvertError(f"{path}: argument {p.name!r} of the model's {sig} is {p.type}: dcconvert passes "
                               "tensors and int/float/bool constants; leave it out if it has a default, or export "
                               "the model to ONNX yourself (torch.onnx.export) and convert the .onnx")
        if p.kind in ("int", "float", "bool") and not is_value:
            raise ConvertError(f"{path}: argument {p.name!r} of the model's {sig} is {p.type}, not a tensor: give its "
                               f"value, {_hint(p)}")
        if is_value and p.kind == "int" and (isinstance(s.value, float) and not s.value.is_integer()):
            raise ConvertError(f"{path}: argument {p.name!r} of the model's {sig} is an int: --input {s.text} is not")
        if is_value and p.kind == "bool" and not isinstance(s.value, bool) and s.value not in (0, 1):
            raise ConvertError(f"{path}: argument {p.name!r} of the model's {sig} is a bool: --input {s.text} is not "
                               "true or false")
    order = [p.name for p in params if p.name in bound] + [k for k in bound if k not in known]
    return {k: bound[k] for k in order}, {p.name: p for p in params}


def _constant(p, spec):
    """The Python value an argument gets from NAME=VALUE: as its type says."""
    v = spec.value
    kind = p.kind if p is not None else "any"
    if kind == "int":
        return int(v)
    if kind == "float":
        return float(v)
    if kind == "bool":
        return bool(v)
    return v


def _examples(module, specs, calibration, path):
    """(tensors {name: (tensor, dynamic axes)}, constants {name: value}, params, legacy names, dims,
    description) of the example inputs for exporting ``module``."""
    from dcformat import inputs as inp

    torch = _torch()
    examples = _expand(specs, calibration, path)
    if not examples:
        info = _parameters(module)
        sig = f"; its {_signature(info[0])}" if info and info[0] else ""
        raise ConvertError(f"{path}: exporting the model to ONNX needs example inputs: --input NAME:SHAPE[:DTYPE] per "
                           f"argument (e.g. --input x:1x3x224x224), NAME=VALUE for an int/float/bool, an .npz of "
                           f"arrays, or --input-shape 1,3,224,224{sig}")
    bound, params = _bind(module, examples, path)
    rows = _table_rows(module)
    tensors, consts, dims, desc = {}, {}, {}, []
    for i, (name, (spec, arr)) in enumerate(bound.items()):
        p = (params or {}).get(name)
        if spec is not None and spec.kind == "value":
            v = _constant(p, spec)
            if p is not None and p.kind == "tensor" or spec.value_type not in (None, *inp.SCALAR_TYPES):
                a = inp.example_array(spec, None)  # a constant tensor (0-d, of the given dtype)
                v = _to_tensor(torch, a)
            consts[name] = v
            desc.append(f"{name}={spec.value!r}".replace("True", "true").replace("False", "false") + " (constant)")
            continue
        if arr is None:
            try:
                arr = inp.example_array(spec, None, seed=i, table_rows=rows)
            except inp.InputError as e:
                raise ConvertError(str(e)) from None
        if arr.dtype.kind == "O" or arr.dtype.names:
            raise ConvertError(f"{path}: example input {name!r} is a {arr.dtype} array; give a numeric array")
        t = _to_tensor(torch, arr)
        named = dict(spec.dim_names) if spec is not None else {}
        axes = {**({0: "batch"} if arr.ndim and "batch" not in named.values() else {}), **named}
        for k, dn in axes.items():
            if dn != "batch":  # the batch of a calibration sample is 1
                dims[dn] = int(arr.shape[k])
        tensors[name] = (t, axes)
        desc.append(f"{name} {arr.dtype} {list(arr.shape)}" + (" (synthetic)" if spec is not None and spec.kind == "shape"
                                                              else ""))
    legacy = all(s is not None and s.name is None and s.text.startswith("--input-shape") for s, _ in bound.values())
    return tensors, consts, params, legacy, dims, "; ".join(desc)


_BOUND = "dcz_bound"  # the scripted wrapper's attribute holding the model (stripped from the weights' names)


def _script_literal(torch, v) -> str:
    if isinstance(v, torch.Tensor):
        return f"torch.tensor({v.item()!r}, dtype={v.dtype})"
    if isinstance(v, float) and not np.isfinite(v):
        return f'float("{v}")'
    return repr(v)


def _bound_script(module, tensor_names, consts, keywords: bool):
    """A scripted module whose forward takes only the tensors and calls ``module`` with the constants
    (TorchScript's constant propagation then folds the branches they decide)."""
    import importlib.util

    torch = _torch()
    args = [f"a{i}: torch.Tensor" for i in range(len(tensor_names))]
    call = [f"{n}=a{i}" if keywords else f"a{i}" for i, n in enumerate(tensor_names)]
    call += [f"{n}={_script_literal(torch, v)}" for n, v in consts.items()]
    src = ("import torch\n\n\nclass DczBound(torch.nn.Module):\n    def __init__(self, m):\n        super().__init__()\n"
           f"        self.{_BOUND} = m\n\n    def forward(self, {', '.join(args)}):\n"
           f"        return self.{_BOUND}({', '.join(call)})\n")
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "dcz_bound_module.py")
        with open(f, "w") as fh:
            fh.write(src)
        spec = importlib.util.spec_from_file_location("dcz_bound_module", f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return torch.jit.script(mod.DczBound(module))


def _bound_module(module, tensor_names, consts, params, keywords: bool):
    """An nn.Module whose forward takes only the tensors and calls ``module`` with the constants."""
    torch = _torch()

    class DczBound(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            setattr(self, _BOUND, m)

        def forward(self, *tensors):
            given = dict(zip(tensor_names, tensors))
            m = getattr(self, _BOUND)
            if keywords:
                return m(**given, **consts)
            full = [given[n] if n in given else consts[n] if n in consts else p.default for n, p in params.items()]
            return m(*full, *(t for k, t in given.items() if k.startswith("*")))

    return DczBound(module)


def _strip_prefix(model, prefix: str) -> None:
    """Rename the initializers ``prefix.NAME`` to ``NAME`` everywhere they are used."""
    names = {t.name for t in model.graph.initializer}
    rename_values(model, {n: n[len(prefix):] for n in names if n.startswith(prefix) and n[len(prefix):] not in names})


def _name_outputs(model) -> None:
    """A model returning several tensors: its outputs after the first are output1, output2, ... (the
    exporter names them by number), where those names are free and the value is computed by a node."""
    g = model.graph
    taken = {n for node in g.node for n in (*node.input, *node.output)} | {t.name for t in g.initializer} | {
        i.name for i in g.input}
    produced = {n for node in g.node for n in node.output}
    ren = {}
    for k, o in enumerate(g.output[1:], 1):
        new = f"output{k}"
        if o.name in produced and new not in taken and o.name not in {i.name for i in g.input}:
            ren[o.name] = new
    rename_values(model, ren)


def _export(module, path, input_shapes, opset, dynamo: bool = False, inputs=None, calibration=None, notes=None,
            dims=None):
    """ONNX ModelProto of a module/ScriptModule, batch dimension dynamic (and the dims the example inputs
    name). ``inputs``: --input specs; ``input_shapes``: --input-shape shapes (unnamed, float32)."""
    import onnx

    from dcformat import inputs as inp

    torch = _torch()
    specs = [inp.InputSpec(f"--input-shape {','.join(map(str, s))}", shape=tuple(s), dtype=np.dtype(np.float32))
             for s in input_shapes or ()] + list(inputs or ())
    tensors, consts, params, legacy, named_dims, desc = _examples(module, specs, calibration, path)
    names = list(tensors)
    if legacy:  # --input-shape alone: the names it always gave
        names = ["input"] if len(names) == 1 else [f"input{i}" for i in range(len(names))]
    values = [t for t, _ in tensors.values()]
    axes = {n: a for n, (_, a) in zip(names, tensors.values()) if a}
    keywords = params is not None and all(k in params and params[k].keyword for k in tensors)
    script = isinstance(module, torch.jit.ScriptModule)
    in_order = params is not None and list(tensors) == list(params)[:len(tensors)]
    buf = io.BytesIO()
    try:
        with _quiet():
            wrapped = script and (consts or not in_order) or not script and bool(consts)
            if script and wrapped:
                target, args, kwargs = _bound_script(module, list(tensors), consts, keywords), tuple(values), None
            elif wrapped:  # traced: Python numbers given to forward would become graph inputs, so close over them
                if params is None:
                    raise ConvertError(f"{path}: the model's forward arguments cannot be read, so constants "
                                       f"({', '.join(consts)}) cannot be placed; give tensors only")
                target, args, kwargs = _bound_module(module, list(tensors), consts, params, keywords), tuple(values), None
            elif script or not keywords:
                target, args, kwargs = module, tuple(values), None
                if params is not None and not in_order:  # positional: skipped ones get their defaults
                    full = [tensors[n][0] if n in tensors else p.default for n, p in params.items()]
                    args = tuple(full) + tuple(t for k, (t, _) in tensors.items() if k.startswith("*"))
            else:
                target, args, kwargs = module, (), {k: t for k, (t, _) in tensors.items()}
            torch.onnx.export(target, args, buf, kwargs=kwargs, dynamo=False, opset_version=opset or DEFAULT_OPSET,
                              input_names=names, output_names=["output"],
                              dynamic_axes={**axes, "output": {0: "batch"}})
    except ConvertError:
        raise
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
        raise ConvertError(_export_error(path, e, opset, consts)) from None
    model = onnx.load_from_string(buf.getvalue())
    if wrapped:
        _strip_prefix(model, _BOUND + ".")
    _name_outputs(model)
    if notes is not None and not legacy:
        notes.append(f"exported to ONNX with example inputs {desc}" + ("; constants are part of the graph" if consts
                                                                        else ""))
    if dims is not None:
        dims.update(named_dims)
    return model


def _shown(v) -> str:
    return str(v.item() if hasattr(v, "item") else v).replace("True", "true").replace("False", "false")


def _export_error(path, e: BaseException, opset, consts=None) -> str:
    """One line: what failed, which operator, what to try (not torch's 500-character message)."""
    import re

    msg = first_line(e)
    if "INTERNAL ASSERT" in msg and "param_count_list" in msg:  # fewer example inputs than forward's arguments
        return (f"{path}: cannot export the model to ONNX: it was given fewer example inputs than its forward takes; "
                "name each argument with --input NAME:SHAPE[:DTYPE] or NAME=VALUE")
    ops = re.findall(r"\b((?:aten|prim|onnx|quantized|torchvision)::[A-Za-z0-9_.]+)", str(e))
    ops = [o for o in ops if o.startswith("aten::")] + [o for o in ops if o != "onnx::Constant"]  # the op, not its input
    op = ops[0] if ops else None
    if op and ("not supported" in str(e) or "Unsupported" in str(e) or "unsupported" in str(e)):
        return (f"{path}: cannot export the model to ONNX: operator {op} is not supported at opset "
                f"{opset or DEFAULT_OPSET}; try a newer --opset (up to 23), or export the model to ONNX yourself "
                "and convert the .onnx")
    where = f" (in {op})" if op else ""
    msg = msg.split("  [Caused by")[0].strip()  # the exporter's dump of the TorchScript value
    if "does NOT support" in msg:
        where = ""
    if len(msg) > 150:
        msg = msg[:147] + "..."
    const = f" (with the constant{'s' if len(consts) > 1 else ''} {', '.join(f'{k}={_shown(v)}' for k, v in consts.items())})" \
        if consts else ""
    return (f"{path}: cannot export the model to ONNX{where}{const}: {msg}; try another --opset or --input, or "
            "torch.onnx.export it yourself and convert the .onnx")


def _export_program(ep, path, input_shapes, opset, inputs=None):
    from dcformat import inputs as inp

    torch = _torch()
    if inputs:  # in the program's argument order; constants are fixed when the program is exported
        if any(s.kind == "value" for s in inputs):
            raise ConvertError(f"{path}: a torch.export program fixes its constant arguments when it is exported; "
                               "give tensors only (--input NAME:SHAPE[:DTYPE] or an .npz)")
        try:
            args = tuple(_to_tensor(torch, a if a is not None else inp.example_array(s, None, seed=i))
                         for i, (_, s, a) in enumerate(_expand(inputs, None, path)))
        except inp.InputError as e:
            raise ConvertError(str(e)) from None
        args = tuple(args) + tuple(_example_inputs(torch, input_shapes or (), path))
    elif input_shapes:
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


def _exported(module, path, kind, input_shapes, opset, inputs, calibration) -> Source:
    notes, dims = [], {}
    model = _export(module.eval(), path, input_shapes, opset, inputs=inputs, calibration=calibration, notes=notes,
                    dims=dims)
    src = _from_model(model, path, kind)
    src.notes += notes
    src.dims = dims
    return src


def _from_model(model, path, kind) -> Source:
    graph, weights = split_weights(model)
    return Source(os.fspath(path), kind, graph, weights, *weight_roles(graph, weights))


_cwd_importable = factory.cwd_importable


def load(path, kind, *, input_shapes=None, trust_code=False, model_factory=None, opset=None,
         trust_pickle=False, inputs=None, calibration=None) -> Source:
    """The Source of a PyTorch file; ``trust_code`` (``trust_pickle`` is its old name) allows the loaders that
    run code from the file (or, with ``model_factory``, the named module)."""
    from . import torch_archive

    trust_code = trust_code or trust_pickle
    path = os.fspath(path)
    if model_factory:
        factory.check_trusted(model_factory, trust_code)
    if kind in ("torchscript", "exported-program") and not trust_code:
        weights = (torch_archive.torchscript_tensors if kind == "torchscript" else torch_archive.pt2_tensors)(path)
        if not weights:
            raise ConvertError(f"{path}: the archive holds no tensors readable without running it; {TRUST_FLAG} "
                               "would load it with " + ("torch.jit.load, running its TorchScript code"
                                                        if kind == "torchscript" else
                                                        "torch.export.load, which can run code from the file"))
        roles, axes = shape_roles(weights)
        notes = [TORCHSCRIPT_NOTE if kind == "torchscript" else PT2_NOTE]
        if input_shapes or opset or inputs:
            notes.append(f"--input, --input-shape and --opset apply to the graph: ignored without {TRUST_FLAG}")
        return Source(path, kind, None, weights, roles, axes, notes=notes)
    torch = _torch()
    if kind == "torchscript":
        try:
            with _quiet():
                module = torch.jit.load(path, map_location="cpu")  # runs the archive's code: the user trusts it
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: a damaged TorchScript archive ({first_line(e)})") from None
        return _exported(module, path, "torchscript", input_shapes, opset, inputs, calibration)
    if kind == "exported-program":
        _cwd_importable()  # its pickles may name classes of modules beside the user's files
        try:
            with _quiet():
                ep = torch.export.load(path)  # evaluates shape expressions, unpickles: the user trusts the file
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: a damaged torch.export archive ({first_line(e)})") from None
        model, note = _export_program(ep, path, input_shapes, opset, inputs)
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
        return _exported(obj, path, "module-pickle", input_shapes, opset, inputs, calibration)
    notes = []
    sd = _state_dict_of(obj, path, notes)
    if model_factory:
        fn = factory.load(model_factory, trust_code=trust_code)
        try:
            module = fn()
        except Exception as e:  # noqa: BLE001 - the user's code
            raise ConvertError(f"--model {model_factory}: calling it failed: {first_line(e)}") from None
        factory.load_state_dict(module, sd, path, model_factory)
        src = _exported(module, path, "state_dict", input_shapes, opset, inputs, calibration)
        src.notes[:0] = notes
        return src
    weights = {k: to_numpy(v) for k, v in sd.items()}
    roles, axes = shape_roles(weights)
    return Source(path, "state_dict", None, weights, roles, axes,
                  notes=notes + ["weights only: no graph; pass --model package.module:factory, --input and "
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

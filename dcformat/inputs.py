"""Model inputs for dcrun and dcconvert: synthetic ones built from the graph's declared inputs,
calibration sets read from .npz/.npy files, and checks of user arrays. numpy only (onnx and
onnxruntime objects are passed in, never imported here).

A *calibration set* is a dict ``input name -> array`` whose first axis is the samples. For an
input declared with rank R the array has rank R (the samples lie along the model's own first,
batch, axis: sample i is ``a[i:i+1]``) or rank R + 1 (an extra samples axis: sample i is ``a[i]``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import DczError, first_line

ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


class InputError(DczError):
    """Inputs given to a model do not match what it declares."""


def describe(inputs) -> str:
    return "; ".join(f"{i.name}: {i.type} {list(i.shape)}" for i in inputs)


def concrete_shape(shape, batch: int) -> list[int]:
    """Declared shape with symbolic/unknown dims set: the first to ``batch``, the others to 1."""
    out = []
    for k, d in enumerate(shape):
        out.append(d if isinstance(d, int) and d >= 0 else (batch if k == 0 else 1))
    return out


MAX_RANDOM_INPUT_BYTES = 1 << 30


def random_inputs(session, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        dt = ORT_TYPES.get(i.type)
        if dt is None:
            raise InputError(f"cannot make a random input of type {i.type} for {i.name!r}; give it with --input")
        shape = concrete_shape(i.shape, batch)
        nbytes = math.prod(shape) * np.dtype(dt).itemsize
        if nbytes > MAX_RANDOM_INPUT_BYTES:  # a shape like [2^62, 2^62]: numpy would raise "array is too big"
            raise InputError(f"input {i.name!r} declares {list(shape)}: {nbytes:,} bytes, more than a random input "
                             f"may take ({MAX_RANDOM_INPUT_BYTES >> 20} MiB); give it with --input NAME=FILE.npy")
        if np.dtype(dt).kind == "f":
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
        elif np.dtype(dt).kind == "b":
            feeds[i.name] = np.asarray(rng.random(shape) < 0.5)  # a 0-d array, not a numpy scalar, for shape []
        else:
            feeds[i.name] = rng.integers(0, 10, shape).astype(dt)
    return feeds


def check_inputs(session, feeds: dict[str, np.ndarray]) -> None:
    """Raise InputError listing what the model expects if names, dtypes or fixed dims differ."""
    declared = {i.name: i for i in session.get_inputs()}
    expect = f"the model expects {describe(declared.values())}"
    unknown = sorted(set(feeds) - set(declared))
    if unknown:
        raise InputError(f"unknown input {', '.join(map(repr, unknown))}: {expect}")
    missing = sorted(set(declared) - set(feeds))
    if missing:
        raise InputError(f"missing input {', '.join(map(repr, missing))}: {expect}")
    for name, arr in feeds.items():
        i = declared[name]
        dt = ORT_TYPES.get(i.type)
        if dt is not None and arr.dtype != np.dtype(dt):
            raise InputError(f"input {name!r} is {arr.dtype}, not {i.type}; {expect}")
        if len(arr.shape) != len(i.shape) or any(
            isinstance(d, int) and d >= 0 and d != s for d, s in zip(i.shape, arr.shape)
        ):
            raise InputError(f"input {name!r} has shape {list(arr.shape)}, not {list(i.shape)}; {expect}")


# ------------------------------------------------------------------ declared inputs and synthetic data

ONNX_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
SEQUENCE_DIM = 32  # symbolic sequence/length dims
IMAGE_DIM = 224  # symbolic height/width of 4-D (image) inputs
OTHER_DIM = 16  # any other symbolic dim but the batch
SIZE_SCALES = (2, 4, 8, 0.5, 0.25, 16, 32)  # of the sizes above, tried in turn when a model does not run on them
MAX_IMAGE_SCALE = 8  # image sides stop at 8 x 224; the larger scales are for 1-D signals (audio frames)
DEFAULT_SAMPLES = 16
_SEQ = re.compile(r"seq|len|token|time|step|word|frame|chunk", re.I)
_PASS = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Slice", "Transpose", "Clip",
         "Concat", "Tile"}


@dataclass
class Declared:
    """One graph input: name, numpy dtype (None if unsupported), shape (int, str name or None per axis)."""

    name: str
    dtype: object
    shape: list
    table_rows: int | None = None  # rows of the embedding table(s) it indexes (Gather), if traced
    type_name: str = ""


def declared_inputs(model) -> list[Declared]:
    """The inputs of an onnx.ModelProto that are not initializers, with the rows of the embedding
    tables integer inputs index (traced through Cast/Unsqueeze/Reshape... to a Gather's indices)."""
    g = model.graph
    inits = {t.name: list(t.dims) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    inits[node.output[0]] = list(a.t.dims)
    consumers: dict[str, list] = {}
    for node in g.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    out = []
    for i in g.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dtype = ONNX_TYPES.get(tt.elem_type)
        shape = []
        for d in tt.shape.dim:
            shape.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None))
        out.append(Declared(i.name, dtype, shape, _table_rows(i.name, consumers, inits),
                            f"tensor({np.dtype(dtype).name if dtype else 'unknown'})"))
    return out


def declared_from_session(session) -> list[Declared]:
    """Declared inputs from an onnxruntime session (no embedding-table tracing)."""
    out = []
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) and d else None) for d in i.shape]
        out.append(Declared(i.name, ORT_TYPES.get(i.type), shape, None, i.type))
    return out


def _table_rows(name: str, consumers: dict, inits: dict) -> int | None:
    rows, seen, todo = [], {name}, [name]
    while todo:
        t = todo.pop()
        for node in consumers.get(t, []):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == t and node.input[0] in inits:
                dims = inits[node.input[0]]
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if dims and -len(dims) <= axis < len(dims):
                    rows.append(int(dims[axis]))
            elif node.op_type in _PASS:
                for o in node.output:
                    if o not in seen:
                        seen.add(o)
                        todo.append(o)
    return min(rows) if rows else None


def parse_dims(specs) -> dict[str, int]:
    """``NAME=VALUE`` items (--dim) as a dict; raises InputError on a malformed one."""
    dims = {}
    for spec in specs or ():
        name, sep, value = str(spec).partition("=")
        try:
            v = int(value)
        except ValueError:
            v = 0
        if not sep or not name or v <= 0:
            raise InputError(f"--dim takes NAME=VALUE with a positive integer VALUE, got {spec!r}")
        dims[name] = v
    return dims


def _batch_names(decl: list[Declared]) -> set:
    return {d.shape[0] for d in decl if d.shape and isinstance(d.shape[0], str)}


def sample_shapes(decl: list[Declared], dims: dict | None = None, scale: float = 1.0,
                  tie: bool = False) -> dict[str, tuple[list[int], bool]]:
    """Per input: (shape of one sample, batched) -- batched when the first axis is symbolic (the
    samples then lie along it), else the calibration arrays get an extra samples axis. ``scale``
    multiplies the default sizes of symbolic dims (not the batch, not ``dims``; image sides at most
    x8). ``tie``: the unnamed dims of an input whose first axis is fixed (a recurrent state
    [layers, batch, hidden]) are the batch: ``tie`` (True: 1, one sample's batch)."""
    dims = dict(dims or {})
    image = max(1, round(IMAGE_DIM * min(scale, MAX_IMAGE_SCALE)))
    seq, other = (max(1, round(v * scale)) for v in (SEQUENCE_DIM, OTHER_DIM))
    batch = _batch_names(decl)
    out = {}
    for d in decl:
        shape = []
        batched = bool(d.shape) and not isinstance(d.shape[0], int)
        for k, v in enumerate(d.shape):
            if isinstance(v, int):
                shape.append(v)
            elif v is not None and v in dims:
                shape.append(dims[v])
            elif k == 0 and batched or v in batch:
                shape.append(1)
            elif tie and v is None and not batched:
                shape.append(int(tie))  # True: 1, the batch of one sample; dcrun ties to its --batch
            elif len(d.shape) == 4 and k == 1:
                shape.append(3)
            elif len(d.shape) == 4 and k >= 2:
                shape.append(image)
            elif v is not None and _SEQ.search(v) or len(d.shape) in (2, 3) and k == 1 and d.table_rows:
                shape.append(seq)
            else:
                shape.append(other)
        out[d.name] = (shape, batched)
    return out


def _smooth_image(rng, shape) -> np.ndarray:
    """Values in [-1, 1] with the low-frequency structure of natural images (not white noise)."""
    n, c, h, w = shape
    small = rng.uniform(-1, 1, (n, c, -(-h // 8), -(-w // 8)))
    img = np.repeat(np.repeat(small, 8, axis=2), 8, axis=3)[:, :, :h, :w]
    return np.clip(img + 0.1 * rng.standard_normal(shape), -1, 1)


def _values(d: Declared, shape: list[int], rng) -> np.ndarray:
    lname = d.name.lower()
    dt = np.dtype(d.dtype)
    if "mask" in lname:
        return np.ones(shape, dt)
    if dt.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if dt.kind in "iu":
        if d.table_rows:
            return rng.integers(0, d.table_rows, shape).astype(dt)
        if lname in ("sr", "sample_rate", "sampling_rate"):
            return np.full(shape, 16000, dt)
        return rng.integers(0, 10, shape).astype(dt)
    if re.search(r"state|cache|past|hidden|^h0$|^c0$", lname):
        return np.zeros(shape, dt)
    if len(d.shape) == 4:
        flat = [-1, *shape[-3:]]
        n = int(np.prod(shape[:-3]))
        return _smooth_image(rng, [n, *flat[1:]]).reshape(shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def synthetic_inputs(decl: list[Declared], samples: int = DEFAULT_SAMPLES, seed: int = 0,
                     dims: dict | None = None, scale: float = 1.0, tie: bool = False,
                     fixed: dict | None = None) -> dict[str, np.ndarray]:
    """A deterministic calibration set of ``samples`` samples built from the declared inputs:
    symbolic dims get small sizes (sequences 32, image sides 224, others 16, or ``dims[name]``);
    integer inputs that index an embedding table take values below its row count; attention
    masks are all ones; 4-D float inputs are smooth images in [-1, 1]; recurrent states zeros.
    ``scale``/``tie``: see :func:`sample_shapes`. ``fixed``: input name -> a value every sample
    takes (``--input sr=16000``)."""
    rng = np.random.default_rng(seed)
    shapes = sample_shapes(decl, dims, scale, tie)
    fixed = fixed or {}
    out = {}
    for d in decl:
        if d.dtype is None:
            raise InputError(f"cannot make an input of type {d.type_name} for {d.name!r}; give it with --input "
                             "or --calibration")
        shape, batched = shapes[d.name]
        full = [samples * shape[0], *shape[1:]] if batched else [samples, *shape]
        nbytes = math.prod(full) * np.dtype(d.dtype).itemsize
        if nbytes > MAX_RANDOM_INPUT_BYTES:  # a shape like [2^62, 2^62]: numpy would raise "array is too big"
            raise InputError(f"input {d.name!r} declares {d.shape}: {samples} synthetic sample(s) would be {nbytes:,} "
                             f"bytes, more than a synthetic input may take ({MAX_RANDOM_INPUT_BYTES >> 20} MiB); give it "
                             "with --input NAME=FILE.npy or --calibration, or sizes with --dim")
        if d.name in fixed:
            out[d.name] = np.full(full, fixed[d.name], np.dtype(d.dtype))
            continue
        out[d.name] = _values(d, full, rng)
    return out


def size_candidates(decl: list[Declared]):
    """(scale, tie) of synthetic sizes to try in turn: the defaults first, then each of
    SIZE_SCALES; at each scale, also with a fixed-first-axis input's unnamed dims tied to the batch
    (only where some input has such dims)."""
    tieable = any(d.shape and isinstance(d.shape[0], int) and None in d.shape for d in decl) and any(
        d.shape and not isinstance(d.shape[0], int) for d in decl)
    for scale in (1.0, *SIZE_SCALES):
        yield scale, False
        if tieable:
            yield scale, True


def probe_sizes(run_one, decl: list[Declared], dims: dict | None = None, seed: int = 0, fixed: dict | None = None):
    """The first (scale, tie) of :func:`size_candidates` on which ``run_one(feeds)`` (one synthetic
    sample) does not raise, and the exception of the defaults; (None, None, error) when none runs."""
    first = None
    for scale, tie in size_candidates(decl):
        try:
            feeds = sample_feeds(synthetic_inputs(decl, 1, seed, dims, scale, tie, fixed), decl, 0)
            run_one(feeds)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own errors: try the next size
            first = first or e
            continue
        return scale, tie, first
    return None, None, first


def describe_sizes(scale: float, tie: bool) -> str:
    """How the probed synthetic sizes differ from the defaults, for a note."""
    parts = [f"symbolic sizes x{scale:g} of the defaults"] if scale != 1 else []
    if tie:
        parts.append("unnamed dims of fixed-first-axis inputs (states) tied to the batch")
    return "; ".join(parts)


# ------------------------------------------------------------------ calibration files


def _read_array(path, where: str) -> np.ndarray | dict:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if not head:
            raise InputError(f"{where}: {path} is empty")
        if not head.startswith((b"\x93NUMPY", b"PK\x03\x04")):
            raise InputError(f"{where}: {path} is not an .npy or .npz file")
        got = np.load(path, allow_pickle=False)
        if isinstance(got, np.ndarray):
            return got
        with got:
            return {k: got[k] for k in got.files}
    except InputError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise InputError(f"{where}: {path} holds a pickled (object) array; refused, it could run code") from None
        raise InputError(f"{where}: cannot read {path} ({first_line(e)})") from None
    except (OSError, EOFError, KeyError) as e:
        if isinstance(e, OSError) and not isinstance(e, (EOFError,)) and e.strerror:
            raise InputError(f"{where}: cannot read {path}: {e.strerror}") from None
        raise InputError(f"{where}: cannot read {path} ({first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - zipfile raises BadZipFile and others on damaged archives
        raise InputError(f"{where}: cannot read {path} ({first_line(e)})") from None


def load_calibration(path, decl: list[Declared], samples: int | None = None,
                     where: str = "--calibration") -> dict[str, np.ndarray]:
    """A calibration set from an .npz (arrays keyed by input name), an .npy (single-input models)
    or a directory of them (their samples concatenated), checked against the declared inputs;
    the first ``samples`` samples when given. Raises InputError with one line."""
    names = [d.name for d in decl]
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith((".npz", ".npy")))
        if not files:
            raise InputError(f"{where}: directory {path} holds no .npz or .npy file")
        parts = [_as_set(_read_array(os.path.join(path, f), where), names, os.path.join(path, f), where,
                         stem=os.path.splitext(f)[0]) for f in files]
        merged: dict[str, list] = {}
        for p in parts:
            for k, v in p.items():
                merged.setdefault(k, []).append(v)
        try:
            arrays = {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in merged.items()}
        except ValueError as e:
            raise InputError(f"{where}: the files in {path} do not stack ({first_line(e)})") from None
    elif not os.path.exists(path):
        raise InputError(f"{where}: {path} does not exist")
    else:
        arrays = _as_set(_read_array(path, where), names, path, where)
    return check_calibration(arrays, decl, samples, where)


def _as_set(got, names, path, where, stem=None) -> dict:
    if isinstance(got, dict):
        return got
    if stem is not None and stem in names:
        return {stem: got}
    if len(names) != 1:
        raise InputError(f"{where}: {path} is one array (.npy) but the model takes {len(names)} inputs "
                         f"({', '.join(names)}); give an .npz keyed by input name")
    return {names[0]: got}


def check_calibration(arrays: dict, decl: list[Declared], samples: int | None = None,
                      where: str = "--calibration") -> dict[str, np.ndarray]:
    """Check names, dtypes, ranks and fixed dims; returns the set cut to ``samples`` samples."""
    expect = f"the model expects {'; '.join(f'{d.name}: {d.type_name} {d.shape}' for d in decl)}"
    names = {d.name for d in decl}
    unknown = sorted(set(arrays) - names)
    if unknown:
        raise InputError(f"{where}: unknown input {', '.join(map(repr, unknown))}; {expect}")
    missing = sorted(names - set(arrays))
    if missing:
        raise InputError(f"{where}: missing input {', '.join(map(repr, missing))}; {expect}")
    counts = {}
    for d in decl:
        a = arrays[d.name]
        if d.dtype is not None and a.dtype != np.dtype(d.dtype):
            raise InputError(f"{where}: input {d.name!r} is {a.dtype}, not {d.type_name}; {expect}")
        rank = len(d.shape)
        if a.ndim == rank and rank and not isinstance(d.shape[0], int):
            sample = [1, *a.shape[1:]]
            counts[d.name] = a.shape[0]
        elif a.ndim == rank + 1:
            sample = list(a.shape[1:])
            counts[d.name] = a.shape[0]
        else:
            raise InputError(f"{where}: input {d.name!r} has shape {list(a.shape)}: want the samples along the first "
                             f"axis of {d.shape} (or an extra first axis); {expect}")
        if any(isinstance(v, int) and v != s for v, s in zip(d.shape, sample)):
            raise InputError(f"{where}: input {d.name!r} has samples of shape {sample}, not {d.shape}; {expect}")
    if len(set(counts.values())) > 1:
        raise InputError(f"{where}: the inputs hold different numbers of samples "
                         f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise InputError(f"{where}: no samples (the arrays' first axis is empty)")
    if samples is not None and samples < n:
        arrays = {k: v[:samples] for k, v in arrays.items()}
    return {d.name: np.ascontiguousarray(arrays[d.name]) for d in decl}


def num_samples(calib: dict, decl: list[Declared]) -> int:
    d = decl[0]
    return int(calib[d.name].shape[0]) if decl else 0


def _is_batched(a: np.ndarray, d: Declared) -> bool:
    return a.ndim == len(d.shape) and bool(d.shape) and not isinstance(d.shape[0], int)


def sample_feeds(calib: dict, decl: list[Declared], i: int, j: int | None = None) -> dict[str, np.ndarray]:
    """Feeds for samples i..j-1 (j = i + 1 by default); more than one only when every input is batched."""
    j = i + 1 if j is None else j
    out = {}
    for d in decl:
        a = calib[d.name]
        out[d.name] = a[i:j] if _is_batched(a, d) else np.asarray(a[i])  # a 0-d array, not a numpy scalar
    return out


def run_set(session, calib: dict, decl: list[Declared], chunk: int = 8, feeds_extra: dict | None = None,
            output_names=None) -> dict[str, list[np.ndarray]]:
    """Run ``session`` (anything with onnxruntime's ``run``) on every sample; per output, the list of
    per-sample outputs. Samples go ``chunk`` at a time when every input is batched and every output
    has them along its first axis, else one by one."""
    n = num_samples(calib, decl)
    extra = feeds_extra or {}
    all_batched = all(_is_batched(calib[d.name], d) for d in decl) and chunk > 1 and n > 1
    names = output_names
    res: dict[str, list] = {}
    if all_batched:
        ok = True
        for i in range(0, n, chunk):
            j = min(n, i + chunk)
            outs = session.run(names, {**sample_feeds(calib, decl, i, j), **extra})
            if names is None:
                names = [o.name for o in session.get_outputs()]
            if any(np.ndim(y) == 0 or np.shape(y)[0] != j - i for y in outs):
                ok = False
                break
            for nm, y in zip(names, outs):
                res.setdefault(nm, []).extend(np.asarray(y)[k:k + 1] for k in range(j - i))
        if ok:
            return res
        res = {}
    for i in range(n):
        outs = session.run(names, {**sample_feeds(calib, decl, i), **extra})
        if names is None:
            names = [o.name for o in session.get_outputs()]
        for nm, y in zip(names, outs):
            res.setdefault(nm, []).append(np.asarray(y))
    return res


# ------------------------------------------------------------------ --input specs (dcconvert and dcrun)

INPUT_SYNTAX = ("NAME:SHAPE[:DTYPE] (e.g. input_ids:1x128:int64), NAME=VALUE or NAME:TYPE=VALUE for a constant "
                "(sr=16000, sr:int=16000), NAME=file.npy, or file.npz (arrays keyed by input name)")
SCALAR_TYPES = ("int", "float", "bool")
_DTYPE_ALIASES = {  # ONNX and PyTorch names numpy does not read the same way; "float" is float32 as in both
    "float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int64", "short": "int16",
    "byte": "uint8", "char": "int8", "boolean": "bool", "f32": "float32", "f64": "float64", "f16": "float16",
    "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "bf16": "bfloat16",
}
_NUMPY_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16",
                 "uint8", "bool")
_SPEC_NAME = re.compile(r"[^:=\s][^:=]*")
_DIM = re.compile(r"(?:([A-Za-z_][\w.]*)=)?(\d+)")


def parse_dtype(text: str):
    """A numpy dtype from a numpy, ONNX (FLOAT, INT64, tensor(int64)) or PyTorch (torch.long, half) name;
    None when it is none of them."""
    t = text.strip()
    m = re.fullmatch(r"tensor\((\w+)\)", t, re.I)
    t = (m.group(1) if m else t).lower().removeprefix("torch.")
    t = _DTYPE_ALIASES.get(t, t)
    if t == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if t in _NUMPY_DTYPES:
        return np.dtype(t)
    return None


@dataclass
class InputSpec:
    """One ``--input``: exactly one of ``shape`` (NAME:SHAPE[:DTYPE]), ``value`` (NAME=VALUE, a constant),
    ``path`` (NAME=FILE.npy; FILE.npz with no name)."""

    text: str
    name: str | None = None
    shape: tuple | None = None  # example shape
    dim_names: dict = field(default_factory=dict)  # axis -> symbolic name: dynamic in exported graphs
    dtype: object = None  # numpy dtype, None: the model's (or float32 for exports)
    value: object = None  # a Python int / float / bool
    value_type: str | None = None  # "int", "float", "bool", a dtype name, or None (inferred)
    path: str | None = None

    @property
    def kind(self) -> str:
        return "value" if self.value is not None else "file" if self.path is not None else "shape"


def _literal(text: str, typ: str | None, spec: str, option: str):
    """The Python value of VALUE (as ``typ`` when given); None when it is no literal (then a file)."""
    t = text.strip()
    low = t.lower()
    kind = None if typ is None else {"bool": "b", "int": "i", "float": "f"}.get(typ) or parse_dtype(typ).kind
    if kind == "b" or kind is None and low in ("true", "false"):
        if low in ("true", "1", "false", "0"):
            return low in ("true", "1")
        raise InputError(f"{option} {spec}: {t!r} is not a bool (true or false)")
    if kind in (None, "i", "u"):
        try:
            return int(t)
        except ValueError:
            if kind is not None:
                raise InputError(f"{option} {spec}: {t!r} is not an integer") from None
    try:
        return float(t)
    except ValueError:
        if kind is not None:
            raise InputError(f"{option} {spec}: {t!r} is not a number") from None
        return None


def parse_input(text: str, option: str = "--input") -> InputSpec:
    """One ``--input`` item (see INPUT_SYNTAX); raises InputError with one line."""
    spec = str(text)
    bad = f"{option} takes {INPUT_SYNTAX}; got {spec!r}"
    if "=" not in spec and ":" not in spec:
        if spec.lower().endswith((".npz", ".npy")):
            return InputSpec(spec, path=spec)
        raise InputError(bad)
    cut = min(i for i in (spec.find(":"), spec.find("=")) if i >= 0)
    name, sep, rest = spec[:cut], spec[cut], spec[cut + 1:]
    if not _SPEC_NAME.fullmatch(name):
        raise InputError(bad)
    typ = None
    if sep == ":":
        head, eq, tail = rest.partition("=")
        if eq and (head in SCALAR_TYPES or parse_dtype(head) is not None) and ":" not in tail:
            typ, sep, rest = head, "=", tail  # NAME:TYPE=VALUE
    if sep == "=":
        if not rest:
            raise InputError(bad)
        value = _literal(rest, typ, spec, option)
        if value is None:
            if typ is not None:
                raise InputError(f"{option} {spec}: {rest!r} is not a {typ} value")
            return InputSpec(spec, name, path=rest)  # NAME=FILE.npy
        if typ is not None and typ not in SCALAR_TYPES:
            typ = parse_dtype(typ).name
        return InputSpec(spec, name, value=value, value_type=typ)
    shape_text, colon, dtype_text = rest.rpartition(":") if rest.count(":") else (rest, "", "")
    if not colon:
        shape_text, dtype_text = rest, ""
    dtype = None
    if dtype_text:
        dtype = parse_dtype(dtype_text)
        if dtype is None:
            raise InputError(f"{option} {spec}: unknown dtype {dtype_text!r} (a numpy or ONNX name: float32, int64, "
                             "bool, FLOAT16, ...)")
    shape, dim_names = parse_shape(shape_text, spec, option)
    return InputSpec(spec, name, shape=shape, dim_names=dim_names, dtype=dtype)


def parse_shape(text: str, spec: str = "", option: str = "--input") -> tuple[tuple, dict]:
    """``1x128`` (or ``1,128``; ``()`` or nothing for a scalar); a dim may be named, ``1xsequence=128``:
    (dims, {axis: name})."""
    t = text.strip()
    if t in ("", "()", "[]", "scalar"):
        return (), {}
    parts = re.split(r"(?<=\d)x|,", t)
    dims, names = [], {}
    for k, p in enumerate(parts):
        m = _DIM.fullmatch(p.strip())
        if not m or int(m.group(2)) <= 0:
            raise InputError(f"{option} {spec or text}: {text!r} is not a shape like 1x3x224x224 (positive sizes, "
                             "x between them; name a dynamic dim as 1xsequence=128)")
        dims.append(int(m.group(2)))
        if m.group(1):
            names[k] = m.group(1)
    if math.prod(dims) > MAX_RANDOM_INPUT_BYTES // 8:
        raise InputError(f"{option} {spec or text}: {math.prod(dims):,} elements, more than an example input may "
                         f"have here ({MAX_RANDOM_INPUT_BYTES // 8:,})")
    return tuple(dims), names


def parse_inputs(texts, option: str = "--input") -> list[InputSpec]:
    """Every ``--input`` item; a name given twice is an InputError."""
    specs = [parse_input(t, option) for t in texts or ()]
    seen = set()
    for s in specs:
        if s.name is not None:
            if s.name in seen:
                raise InputError(f"{option} {s.name} is given twice")
            seen.add(s.name)
    return specs


def read_spec_arrays(spec: InputSpec, option: str = "--input") -> dict:
    """The arrays of a file spec: {name: array} for NAME=FILE.npy; an .npz's arrays, or {None: array}
    for an unnamed .npy."""
    got = _read_array(spec.path, f"{option} {spec.text}")
    if isinstance(got, dict):
        if spec.name is not None:
            raise InputError(f"{option} {spec.text}: {spec.path} is an .npz archive; give one array saved with "
                             "numpy.save, or the .npz alone (--input FILE.npz)")
        if not got:
            raise InputError(f"{option} {spec.text}: {spec.path} holds no arrays")
        return got
    return {spec.name: got}


def example_array(spec: InputSpec, d: Declared | None, seed: int = 0, table_rows: int | None = None) -> np.ndarray:
    """The array of a shape or value spec: values as the synthetic builder makes them (ids below the
    table they index, masks ones), or the constant filling the declared shape (symbolic dims 1)."""
    dtype = spec.dtype
    if dtype is None and spec.value_type not in (None, *SCALAR_TYPES):
        dtype = np.dtype(spec.value_type)
    if dtype is None:
        dtype = np.dtype(d.dtype) if d is not None and d.dtype is not None else None
    if spec.kind == "value":
        if dtype is None:
            dtype = np.dtype({bool: np.bool_, int: np.int64, float: np.float32}[type(spec.value)])
        if dtype.kind in "iu" and isinstance(spec.value, float) and not float(spec.value).is_integer():
            raise InputError(f"--input {spec.text}: {spec.value!r} is not an integer, and {spec.name!r} is {dtype}")
        shape = [] if d is None else [s if isinstance(s, int) else 1 for s in d.shape]
        try:
            return np.full(shape, spec.value, dtype)
        except (OverflowError, ValueError) as e:
            raise InputError(f"--input {spec.text}: {first_line(e)}") from None
    dtype = dtype or np.dtype(np.float32)
    rows = table_rows if table_rows is not None else d.table_rows if d is not None else None
    name = spec.name or (d.name if d is not None else "input")
    rank = len(spec.shape)
    decl = Declared(name, dtype, list(d.shape) if d is not None and len(d.shape) == rank else [None] * rank, rows)
    return _values(decl, list(spec.shape), np.random.default_rng(seed))


def calibration_hints(specs, decl: list[Declared], option: str = "--input") -> tuple[dict, dict]:
    """(fixed values, dims) that ``--input`` specs give an ONNX model's synthetic calibration inputs:
    NAME=VALUE fixes an input's value, NAME:SHAPE sets the sizes of its symbolic dims (not the batch)."""
    by = {d.name: d for d in decl}
    expect = f"the model takes {'; '.join(f'{d.name}: {d.type_name} {d.shape}' for d in decl)}"
    fixed, dims = {}, {}
    for s in specs:
        if s.kind == "file":
            raise InputError(f"{option} {s.text}: example arrays are for PyTorch exports; give an ONNX model's inputs "
                             "with --calibration FILE.npz")
        d = by.get(s.name)
        if d is None:
            raise InputError(f"{option} {s.text}: the model has no input {s.name!r}; {expect}")
        if s.kind == "value":
            fixed[s.name] = example_array(s, Declared(d.name, d.dtype, [], d.table_rows, d.type_name))[()]
            continue
        if s.dtype is not None and d.dtype is not None and np.dtype(s.dtype) != np.dtype(d.dtype):
            raise InputError(f"{option} {s.text}: {s.name!r} is {d.type_name}, not {s.dtype}; {expect}")
        if len(s.shape) != len(d.shape) or any(isinstance(v, int) and v != g for v, g in zip(d.shape, s.shape)):
            raise InputError(f"{option} {s.text}: {s.name!r} has shape {d.shape}, not {list(s.shape)}; {expect}")
        for k, (v, g) in enumerate(zip(d.shape, s.shape)):
            if isinstance(v, str) and not (k == 0 and v in _batch_names(decl)):
                if dims.get(v, g) != g:
                    raise InputError(f"{option} {s.text}: dim {v!r} is {dims[v]} in another --input")
                dims[v] = g
    return fixed, dims

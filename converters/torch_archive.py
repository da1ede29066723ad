"""The tensors of TorchScript archives and torch.export ``.pt2`` archives, read without running them.

``torch.jit.load`` runs a module's TorchScript ``__setstate__`` (TorchScript can read and
write files: ``torch.from_file(path, shared=True)``), and ``torch.export.load`` hands the
archive's shape expressions to ``sympy.sympify``, which evaluates Python. This module reads
the same archives with :mod:`zipfile`, :mod:`json` and a restricted unpickler, and numpy:

* TorchScript: ``data.pkl`` and ``constants.pkl`` are unpickled by :class:`_TensorUnpickler`,
  which knows a closed list of callables, all written here: rebuilding a tensor from a
  storage (``torch._utils._rebuild_tensor_v2``), the storage types (``torch.FloatStorage``
  ...), TorchScript's list builders, and a placeholder for ``__torch__.*`` module classes
  that only records its state. Any other global is refused; nothing is imported, no
  method of the file runs, no TorchScript is compiled.
* ``.pt2``: the weights and constants configs (JSON) name each tensor's raw-bytes file,
  dtype, sizes, strides and offset. ``models/*.json`` (the graph, with its shape
  expressions) is not read. Weights stored as pickles (tensor subclasses) are refused.

Every view is bounds-checked against its storage, and the declared uncompressed sizes of
the archive's entries against :data:`MAX_ZIP_EXPANSION` before anything is inflated.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import zipfile

import numpy as np

from .errors import ConvertError

# A zip checkpoint may declare at most MAX_ZIP_EXPANSION x its file size + ZIP_EXPANSION_SLACK
# bytes of uncompressed entries. torch.save, torch.jit.save and torch.export.save store their
# entries uncompressed (about 1x), so only a zip bomb comes near this.
MAX_ZIP_EXPANSION = 16
ZIP_EXPANSION_SLACK = 64 << 20
MAX_ARCHIVE_TENSORS = 1 << 20

_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}
# torch._export.serde.schema.ScalarType
_SCALAR_TYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
                 8: "float64", 12: "bool", 13: "bfloat16", 28: "uint16", 34: "uint32", 35: "uint64"}
_STRIDED = 7  # schema.Layout.Strided


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def check_zip_size(path, z: zipfile.ZipFile, file_size: int) -> None:
    """Refuse an archive whose entries declare more bytes than a checkpoint of its size can hold."""
    declared = sum(i.file_size for i in z.infolist())
    bound = MAX_ZIP_EXPANSION * file_size + ZIP_EXPANSION_SLACK
    if declared > bound:
        raise ConvertError(f"{path}: the zip archive declares {declared:,} bytes of contents in a {file_size:,}-byte "
                           f"file (a zip bomb?); dcconvert reads at most {MAX_ZIP_EXPANSION} x the file size "
                           f"+ {ZIP_EXPANSION_SLACK >> 20} MiB")


def _read(path, z: zipfile.ZipFile, name: str) -> bytes:
    try:
        info = z.getinfo(name)
        with z.open(info) as f:
            data = f.read(info.file_size + 1)
    except (KeyError, zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as e:
        raise ConvertError(f"{path}: cannot read {name} of the archive ({e})") from None
    if len(data) != info.file_size:
        raise ConvertError(f"{path}: {name} is not the size the archive declares")
    return data


def _ints(path, what, values) -> list[int]:
    if not isinstance(values, (list, tuple)) or not all(type(v) is int for v in values):
        raise ConvertError(f"{path}: {what} is not a list of integers")
    return list(values)


def view(path, name: str, flat: np.ndarray, sizes, strides, offset) -> np.ndarray:
    """A copy of ``flat.as_strided(sizes, strides, offset)``, checked to lie inside ``flat``."""
    sizes = _ints(path, f"the shape of {name!r}", sizes)
    strides = _ints(path, f"the strides of {name!r}", strides)
    if type(offset) is not int or len(sizes) != len(strides) or len(sizes) > 64:
        raise ConvertError(f"{path}: bad shape, strides or offset for {name!r}")
    if any(s < 0 for s in sizes) or any(s < 0 for s in strides) or offset < 0:
        raise ConvertError(f"{path}: negative shape, stride or offset for {name!r}")
    count = math.prod(sizes)
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides))
        if last >= flat.size:
            raise ConvertError(f"{path}: tensor {name!r} reaches past the end of its storage")
        if count > flat.size:  # an expanded (stride 0) view: would allocate more than the file holds
            raise ConvertError(f"{path}: tensor {name!r} has more elements than its storage")
    if not count:
        return np.zeros(sizes, flat.dtype)
    item = flat.dtype.itemsize
    out = np.lib.stride_tricks.as_strided(flat[offset:], shape=sizes, strides=[s * item for s in strides])
    return np.array(out, copy=True)


# ------------------------------------------------------------------------------------------------ TorchScript


class _Storage:
    def __init__(self, dtype: str):
        self.dtype = dtype


class _ScriptObject:
    """Stands for an instance of a TorchScript class (``__torch__.*``): records its pickled state."""

    qualname = "?"

    def __setstate__(self, state):  # pickle's BUILD: keep the state, run nothing
        self.__dict__["_state"] = state


class _Tensor:
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


def _list(values=None, *_):
    return list(values) if isinstance(values, (list, tuple)) else []


def _same(value=None, *_):
    return value


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, path, z, prefix, data: bytes):
        import io

        super().__init__(io.BytesIO(data))
        self._path, self._z, self._prefix = path, z, prefix
        self._storages: dict[str, np.ndarray] = {}
        self._classes: dict[str, type] = {}
        self.tensors = 0

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        if module == "collections" and name == "OrderedDict":
            return _dict
        if module == "torch.jit._pickle":
            if name.startswith("build_") and name.endswith("list"):
                return _list
            if name == "restore_type_tag":
                return _same
        if module == "__torch__" or module.startswith("__torch__."):
            key = f"{module}.{name}"
            if key not in self._classes:
                self._classes[key] = type("ScriptObject", (_ScriptObject,), {"qualname": key})
            return self._classes[key]
        raise pickle.UnpicklingError(f"the archive's pickle names {module}.{name}, which only torch.jit.load "
                                     "can build")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)
                and isinstance(pid[2], str)):
            raise pickle.UnpicklingError("a persistent reference that is not a storage")
        key = pid[2]
        if key not in self._storages:
            data = _read(self._path, self._z, f"{self._prefix}data/{key}")
            dt = _dtype(pid[1].dtype)
            if len(data) % dt.itemsize:
                raise ConvertError(f"{self._path}: storage {key} is not a whole number of {pid[1].dtype} values")
            self._storages[key] = np.frombuffer(data, dt)
        return self._storages[key]

    def _rebuild(self, storage=None, offset=None, size=None, stride=None, *_):
        if not isinstance(storage, np.ndarray):
            raise pickle.UnpicklingError("a tensor without a storage")
        self.tensors += 1
        if self.tensors > MAX_ARCHIVE_TENSORS:
            raise ConvertError(f"{self._path}: more than {MAX_ARCHIVE_TENSORS:,} tensors")
        return _Tensor(view(self._path, f"tensor {self.tensors}", storage, size, stride, offset))


def _dict(*_):
    return {}


def _flatten(value, prefix: str, out: dict, seen: set) -> None:
    if isinstance(value, _Tensor):
        out.setdefault(prefix, value.array)
        return
    if id(value) in seen:  # shared objects are walked once (a DAG, not a tree)
        return
    seen.add(id(value))
    if isinstance(value, _ScriptObject):
        _flatten(value.__dict__.get("_state"), prefix, out, seen)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, (str, int)):
                _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, seen)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), out, seen)


def _prefix(path, names: list[str], marker: str) -> str:
    hits = [n[: -len(marker)] for n in names if n.endswith("/" + marker) and n.count("/") == marker.count("/") + 1]
    if len(hits) != 1:
        raise ConvertError(f"{path}: not a PyTorch archive (no single {marker})")
    return hits[0]


def _open(path):
    import os

    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConvertError(f"{path}: a damaged zip archive ({e})") from None
    check_zip_size(path, z, os.path.getsize(path))
    return z


def torchscript_tensors(path) -> dict[str, np.ndarray]:
    """{attribute path: array} of a TorchScript archive's module tree (``fc1.weight`` ...), then its
    tensor constants (``constants.0`` ...), without running anything from the file."""
    with _open(path) as z:
        names = z.namelist()
        prefix = _prefix(path, names, "data.pkl")
        byteorder = f"{prefix}byteorder"
        if byteorder in names and _read(path, z, byteorder).strip() not in (b"little", b""):
            raise ConvertError(f"{path}: a big-endian TorchScript archive")
        out: dict[str, np.ndarray] = {}
        for part, root in (("data.pkl", ""), ("constants.pkl", "constants")):
            if f"{prefix}{part}" not in names:
                continue
            u = _TensorUnpickler(path, z, prefix, _read(path, z, f"{prefix}{part}"))
            try:
                obj = u.load()
            except ConvertError:
                raise
            except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, TypeError ... from a hostile pickle
                raise ConvertError(f"{path}: cannot read {part} without running the archive: {e}") from None
            _flatten(obj, root, out, set())
    return out


# ------------------------------------------------------------------------------------------------ torch.export


def _as_ints(path, name, values) -> list[int]:
    try:
        return [v["as_int"] for v in values]
    except (TypeError, KeyError):
        raise ConvertError(f"{path}: {name!r} has a symbolic or malformed shape") from None


def pt2_tensors(path) -> dict[str, np.ndarray]:
    """{name: array} of a torch.export archive's weights and tensor constants, from its JSON configs and raw
    weight files; the graph (``models/*.json``, whose shape expressions torch evaluates) is not read."""
    with _open(path) as z:
        names = z.namelist()
        configs = sorted(n for n in names if re.fullmatch(r"[^/]+/data/(weights|constants)/[^/]+_(weights|constants)"
                                                          r"_config\.json", n))
        if not configs:
            if any(re.fullmatch(r"[^/]+/data/(weights|constants)/[^/]+\.pt", n) for n in names):
                raise ConvertError(f"{path}: a torch.export archive of the legacy layout, whose weights are pickles: "
                                   "re-save it with torch.export.save, or pass --trust-code (runs code from the file)")
            raise ConvertError(f"{path}: a torch.export archive without weights configs")
        models = {re.sub(r"_(weights|constants)_config\.json$", "", n.rsplit("/", 1)[1]) for n in configs}
        out: dict[str, np.ndarray] = {}
        flats: dict[str, np.ndarray] = {}
        for cfg_name in configs:
            directory = cfg_name.rsplit("/", 1)[0] + "/"
            model = re.sub(r"_(weights|constants)_config\.json$", "", cfg_name.rsplit("/", 1)[1])
            try:
                cfg = json.loads(_read(path, z, cfg_name))["config"]
                items = list(cfg.items())
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ConvertError(f"{path}: {cfg_name} is not a payload config") from None
            if len(items) > MAX_ARCHIVE_TENSORS:
                raise ConvertError(f"{path}: more than {MAX_ARCHIVE_TENSORS:,} tensors")
            for fqn, meta in items:
                try:
                    file, pickled, tm = meta["path_name"], meta.get("use_pickle", False), meta.get("tensor_meta")
                except (TypeError, KeyError):
                    raise ConvertError(f"{path}: {cfg_name}: bad entry for {fqn!r}") from None
                if not isinstance(file, str) or "/" in file:
                    raise ConvertError(f"{path}: {cfg_name}: bad file name for {fqn!r}")
                if pickled or not isinstance(tm, dict):
                    if "constants" in cfg_name and not file.startswith("tensor"):
                        continue  # a script or opaque object constant: not a weight
                    raise ConvertError(f"{path}: {fqn!r} is a pickled object (a tensor subclass) that only "
                                       "torch.export.load reads, running code from the file; if you trust the "
                                       "file, pass --trust-code")
                try:
                    dt = _SCALAR_TYPES[tm["dtype"]]
                    layout = tm.get("layout", _STRIDED)
                    sizes = _as_ints(path, fqn, tm["sizes"])
                    strides = _as_ints(path, fqn, tm["strides"])
                    offset = tm.get("storage_offset", {"as_int": 0})["as_int"]
                except (KeyError, TypeError):
                    raise ConvertError(f"{path}: {fqn!r}: unsupported or malformed tensor_meta") from None
                if layout != _STRIDED:
                    raise ConvertError(f"{path}: {fqn!r} is a sparse tensor")
                key = directory + file
                if key not in flats:
                    flats[key] = np.frombuffer(_read(path, z, key), np.uint8)
                raw = flats[key]
                d = _dtype(dt)
                if raw.size % d.itemsize:
                    raise ConvertError(f"{path}: {key} is not a whole number of {dt} values")
                name = fqn if len(models) == 1 else f"{model}.{fqn}"
                if name in out:
                    continue
                flat = raw.view(d) if raw.size else np.zeros(0, d)
                if not raw.size:  # torch writes an empty file for an all-zero tensor of that shape
                    n = math.prod(_ints(path, fqn, sizes))
                    if n < 0 or n * d.itemsize > ZIP_EXPANSION_SLACK:
                        raise ConvertError(f"{path}: {fqn!r} declares {n:,} elements in an empty file")
                    out[name] = np.zeros(sizes, d)
                    continue
                out[name] = view(path, fqn, flat, sizes, strides, offset)
    return out

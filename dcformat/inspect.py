"""Where the bytes go: per-tensor accounting of .dcz files (and dense sizes of other models).

Everything in :func:`inspect_dcz` comes from the header alone -- no tensor is decoded --
so a 1 GB file is inspected in milliseconds. Rows plus overhead add up to the file size.
"""

from __future__ import annotations

import fnmatch
import math
import os
import warnings

import numpy as np

from .constants import ENC_CB_SPARSE, ENC_LZMA, ITEMSIZE, PREAMBLE_SIZE, SECTION_GRAPH, SECTION_METADATA, SECTION_PADDING, SECTION_TENSOR
from .errors import DczError, FormatError, first_line
from .reader import DczReader
from .reader import open as open_dcz

# where a tensor's bytes go: sparse positions, codebook indices, codebooks (with per-channel scales), values
# coded losslessly (float-planes' Huffman-coded planes, an lzma stream) and values stored as they are
STREAMS = ("gap", "index", "codebook", "coded", "raw")


def tensor_row(info) -> dict:
    """One tensor's accounting: ``bytes`` is its section's length (what dcconvert and the encoders
    report); the stream bytes plus ``padding_bytes`` (zeros aligning its parts) add up to it."""
    p = info.parts
    # float-planes (1.1): Huffman-coded planes are coded bytes, stored planes raw; lzma (1.3): its stream is coded
    lzma = info.encoding == ENC_LZMA
    streams = {
        "gap": p.get("gaps", 0) + p.get("lane_bases", 0),
        "index": p.get("indices", 0),
        "codebook": p.get("codebook", 0) + p.get("scales", 0),  # 1.2: per-channel scales are codebook bytes
        "coded": sum(p[f"plane{k}"] for k, m in enumerate(info.planes or ()) if m == "huffman")
        + (p.get("data", 0) if lzma else 0),
        "raw": (0 if lzma else p.get("data", 0))
        + sum(p[f"plane{k}"] for k, m in enumerate(info.planes or ()) if m == "stored"),
    }
    total = info.nbytes
    params = info.numel
    bits = None if info.codebook_size is None else max(1, math.ceil(math.log2(max(info.codebook_size, 1))))
    return {
        "name": info.name, "shape": list(info.shape), "dtype": info.dtype, "params": params,
        "encoding": info.encoding, "nonzeros": info.nonzeros,
        "sparsity": 1 - info.nonzeros / params if params else 0.0,
        "codebook_size": info.codebook_size, "bits": bits,
        "gap_bits": info.gap_bits, "entries": info.entries,
        # 1.2: per-channel scales (spec 7.5): the axis, how many, their dtype and bytes (None when not scaled)
        "scale_axis": info.scale_axis, "scale_count": info.scale_count if info.scaled else None,
        "scale_dtype": info.scale_dtype, "scale_bytes": p.get("scales") if info.scaled else None,
        "fillers": info.entries - info.nonzeros if info.encoding == ENC_CB_SPARSE else None,
        **{f"{k}_bytes": v for k, v in streams.items()},
        "padding_bytes": total - sum(streams.values()),
        "bytes": total,
        "bits_per_param": 8 * total / params if params else 0.0,
        "ratio": params * 4 / total if total else None,
    }


def inspect_dcz(src) -> dict:
    """The accounting of a .dcz file: header facts, one row per tensor, totals, overhead."""
    r = src if isinstance(src, DczReader) else open_dcz(src)
    try:
        rows = [tensor_row(r.info(n)) for n in r]
        for row in rows:
            row["share"] = row["bytes"] / r.file_size
        kinds = {SECTION_METADATA: 0, SECTION_GRAPH: 0, SECTION_PADDING: 0, "other sections": 0}
        for s in r.sections:
            if s.kind != SECTION_TENSOR:
                kinds[s.kind if s.kind in kinds else "other sections"] += s.length
        hlen = int.from_bytes(bytes(r._buf[12:16]), "little")
        tensor_bytes = sum(row["bytes"] for row in rows)
        overhead = {
            "preamble": PREAMBLE_SIZE, "header": hlen, "metadata": kinds[SECTION_METADATA],
            "graph": kinds[SECTION_GRAPH], "expansion_padding": kinds[SECTION_PADDING],
            "other_sections": kinds["other sections"],
        }
        overhead["alignment"] = r.file_size - tensor_bytes - sum(overhead.values())
        overhead["total"] = r.file_size - tensor_bytes
        params = sum(row["params"] for row in rows)
        return {
            "file": r.path, "kind": "dcz", "size": r.file_size, "format_version": "%d.%d" % r.version,
            "metadata": r.metadata, "has_graph": r._graph_section is not None,
            "tensors": rows,
            "totals": {
                "params": params, "nonzeros": sum(row["nonzeros"] for row in rows),
                "tensor_bytes": tensor_bytes,
                **{f"{k}_bytes": sum(row[f"{k}_bytes"] for row in rows) for k in STREAMS},
                "fp32_bytes": params * 4, "ratio": params * 4 / r.file_size if r.file_size else None,
                "bits_per_param": 8 * r.file_size / params if params else 0.0,
            },
            "overhead": overhead,
        }
    finally:
        if r is not src:
            r.close()


# ---------------------------------------------------------------- other model files
def _dense_row(name, shape, dtype: str, nbytes: int, nonzeros: int | None) -> dict:
    params = math.prod(shape)
    return {
        "name": name, "shape": list(shape), "dtype": dtype, "params": params, "encoding": "dense",
        "nonzeros": nonzeros, "sparsity": (1 - nonzeros / params) if params and nonzeros is not None else None,
        "codebook_size": None, "bits": None, "gap_bits": None, "entries": None, "fillers": None,
        "scale_axis": None, "scale_count": None, "scale_dtype": None, "scale_bytes": None,
        **{f"{k}_bytes": 0 for k in STREAMS}, "raw_bytes": nbytes, "padding_bytes": 0, "bytes": nbytes,
        "bits_per_param": 8 * nbytes / params if params else 0.0, "ratio": params * 4 / nbytes if nbytes else None,
    }


def _finish(path, kind, rows, extra=None, data_bytes: int = 0) -> dict:
    size = os.path.getsize(path) + data_bytes  # an ONNX model's external data files count too
    for row in rows:
        row["share"] = row["bytes"] / size if size else 0.0
    params = sum(r["params"] for r in rows)
    tb = sum(r["bytes"] for r in rows)
    return {
        "file": os.fspath(path), "kind": kind, "size": size, "format_version": None, "metadata": extra or {},
        "has_graph": kind == "onnx", "tensors": rows,
        "totals": {"params": params, "nonzeros": sum(r["nonzeros"] or 0 for r in rows), "tensor_bytes": tb,
                   **{f"{k}_bytes": sum(r[f"{k}_bytes"] for r in rows) for k in STREAMS},
                   "fp32_bytes": params * 4, "ratio": params * 4 / size if size else None,
                   "bits_per_param": 8 * size / params if params else 0.0},
        "overhead": {"total": size - tb},
    }


def inspect_onnx(path) -> dict:
    import onnx
    from onnx import helper, numpy_helper

    from .graph import iter_tensors, record_names

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several kinds
        raise FormatError(f"{path}: not a readable ONNX model ({e})") from None
    from onnx.external_data_helper import load_external_data_for_tensor

    base = os.path.dirname(os.path.abspath(path))
    rows, data_files = [], set()
    for (where, t), name in zip(iter_tensors(model.graph), record_names(model)):  # named as dcconvert names records
        if t.data_type == onnx.TensorProto.STRING:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:  # read it as ONNX does, within the model's directory
            location = {e.key: e.value for e in t.external_data}.get("location", "")
            try:
                load_external_data_for_tensor(t, base)
            except Exception as e:  # noqa: BLE001 - onnx raises several kinds (missing file, path outside ...)
                raise FormatError(f"{path}: {where}: cannot read its external data {location!r} ({first_line(e)})") from None
            data_files.add(os.path.realpath(os.path.join(base, location)))
            t.data_location = onnx.TensorProto.DEFAULT
        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: {where} has unknown data type {t.data_type}") from None
        shape = tuple(t.dims)
        if any(d < 0 for d in shape):
            raise FormatError(f"{path}: {where} has a negative dimension {list(shape)}")
        nbytes = math.prod(shape) * dt.itemsize
        try:
            nz = int(np.count_nonzero(numpy_helper.to_array(t)))
        except Exception as e:  # noqa: BLE001 - onnx raises several kinds for inconsistent tensors
            raise FormatError(f"{path}: {where} does not hold the data its type and shape say ({e})") from None
        t.ClearField("raw_data")  # counted: do not hold every weight at once
        rows.append(_dense_row(name, shape, _np_name(dt), nbytes, nz))
    extra = {"producer": f"{model.producer_name} {model.producer_version}".strip(),
             "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import]}
    if data_files:
        extra["external_data"] = sorted(os.path.relpath(f, base) for f in data_files)
    return _finish(path, "onnx", rows, extra, sum(os.path.getsize(f) for f in data_files))


def _np_name(dt) -> str:
    from .constants import dtype_name

    try:
        return dtype_name(dt)
    except ValueError:
        return str(dt)


def inspect_safetensors(path) -> dict:
    """Dense sizes from a .safetensors header (8-byte length + JSON); data read only to count zeros."""
    import json

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(size - 8, 100 << 20):
            raise FormatError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:
            raise FormatError(f"{path}: not a safetensors file ({e})") from None
    st = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}
    from .constants import DTYPES

    data = np.memmap(path, np.uint8, "r") if size else np.zeros(0, np.uint8)
    rows = []
    meta = header.pop("__metadata__", {}) if isinstance(header, dict) else {}
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file")
    for name, e in header.items():
        try:
            dt = st[e["dtype"]]
            shape = tuple(int(s) for s in e["shape"])
            a, b = (int(x) for x in e["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise FormatError(f"{path}: bad safetensors entry for {name!r}") from None
        if any(s < 0 for s in shape) or not 0 <= a <= b <= size - 8 - n or b - a != math.prod(shape) * ITEMSIZE[dt]:
            raise FormatError(f"{path}: safetensors entry {name!r} has bad offsets")
        arr = data[8 + n + a : 8 + n + b].view(DTYPES[dt])
        rows.append(_dense_row(name, shape, dt, b - a, int(np.count_nonzero(arr))))
    return _finish(path, "safetensors", rows, meta)


def inspect_torch(path) -> dict:
    """Dense sizes of a PyTorch state_dict (weights_only loading: no code from the file runs)."""
    try:
        import torch
    except ImportError:
        raise FormatError(f"{path}: reading PyTorch files needs PyTorch: pip install 'dcz[torch]'") from None
    try:
        with warnings.catch_warnings():  # torch warns on stderr about TorchScript archives: the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for bad files
        msg = first_line(e)
        if "TorchScript" in msg:
            raise FormatError(f"{path}: a TorchScript archive, not a state_dict; dcconvert reads it "
                              "(dcconvert FILE --input-shape ...)") from None
        raise FormatError(f"{path}: not a PyTorch state_dict readable without running code ({msg})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    rows = []
    for name, t in obj.items():
        if isinstance(t, torch.Tensor):
            rows.append(_dense_row(str(name), tuple(t.shape), str(t.dtype).replace("torch.", ""),
                                   t.numel() * t.element_size(), int(torch.count_nonzero(t))))
    return _finish(path, "pytorch", rows)


def sniff(path) -> str:
    """'dcz', 'onnx', 'safetensors' or 'pytorch', by content first, then by extension."""
    from .constants import MAGIC

    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(MAGIC):
        return "dcz"
    if head.startswith(b"PK\x03\x04"):
        return "pytorch"  # torch.save zip archive
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".onnx" or (head[:1] == b"\x08"):  # ModelProto starts with field 1 (ir_version), varint
        return "onnx"
    if ext in (".pt", ".pth", ".bin"):
        return "pytorch"
    raise FormatError(f"{path}: not a .dcz, ONNX, safetensors or PyTorch file")


def inspect_any(path) -> dict:
    kind = sniff(path)
    return {"dcz": inspect_dcz, "onnx": inspect_onnx, "safetensors": inspect_safetensors, "pytorch": inspect_torch}[kind](path)


def select(rows: list[dict], sort: str | None = None, top: int | None = None, pattern: str | None = None) -> list[dict]:
    if pattern:
        rows = [r for r in rows if fnmatch.fnmatchcase(r["name"], pattern)]
    if sort == "size":
        rows = sorted(rows, key=lambda r: -r["bytes"])
    elif sort == "name":
        rows = sorted(rows, key=lambda r: r["name"])
    elif sort == "ratio":
        rows = sorted(rows, key=lambda r: -(r["ratio"] or 0))
    return rows[:top] if top else rows


def verify_report(path) -> tuple[list[tuple[str, str | None]], bool]:
    """Check every section and decode every tensor; (item, error or None) for each, and overall ok."""
    try:
        r = open_dcz(path)
    except DczError as e:
        return [("file structure", str(e))], False
    items = []
    with r:
        for i, s in enumerate(r.sections):
            if s.kind == SECTION_TENSOR:
                continue
            try:
                r._section_bytes(s, f"section {i} ({s.kind})")
                if s.kind == SECTION_METADATA:
                    r.metadata
                elif s.kind == SECTION_GRAPH:
                    r.graph
                items.append((f"{s.kind} section", None))
            except DczError as e:
                items.append((f"{s.kind} section", str(e)))
        for name in r:
            try:
                r[name]
                items.append((f"tensor {name}", None))
            except DczError as e:
                items.append((f"tensor {name}", str(e)))
    return items, all(err is None for _, err in items)


def verify_any(path) -> tuple[list[tuple[str, str | None]], bool, str]:
    """``verify_report`` for a .dcz; for other model files what can be checked without checksums
    (ONNX: onnx.checker and every tensor's data read; safetensors, PyTorch: every tensor read).
    Returns the items, overall ok, and the closing sentence."""
    try:
        kind = sniff(path)
    except DczError as e:
        return [("file", str(e))], False, "damaged"
    if kind == "dcz":
        items, ok = verify_report(path)
        return items, ok, "all checksums match and every tensor decodes" if ok else "damaged"
    items = []
    try:
        rep = inspect_any(path)
        items.append((f"{len(rep['tensors'])} tensors read", None))
    except DczError as e:
        items.append(("tensors", str(e)))
    if kind == "onnx":
        import onnx

        try:
            onnx.checker.check_model(os.fspath(path))
            items.append(("onnx.checker", None))
        except Exception as e:  # noqa: BLE001 - onnx raises several kinds
            items.append(("onnx.checker", first_line(e)))
    ok = all(err is None for _, err in items)
    what = {"onnx": "an ONNX model", "safetensors": "a safetensors file", "pytorch": "a PyTorch state_dict"}[kind]
    return items, ok, (f"{what}, readable and well-formed (it carries no checksums: only .dcz files do)" if ok
                       else f"{what} with problems")

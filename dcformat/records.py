"""Tensor records: the JSON descriptor of each tensor section, parsed and checked.

Everything here is checked from the header alone, before any tensor byte is read or any
buffer allocated: a record whose declared sizes do not add up to its section's length
is rejected.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property

from .constants import (
    CODEBOOK_DTYPES,
    DEFAULT_LANE_SIZE,
    DTYPES,
    ENC_CB_DENSE,
    ENC_CB_SPARSE,
    ENC_FLOAT_PLANES,
    ENC_LZMA,
    ENC_RAW,
    ENCODINGS,
    FLOAT_DTYPES,
    ITEMSIZE,
    LANE_BASE_BYTES,
    LZMA_MAX_BYTES,
    MAX_CODEBOOK,
    MAX_ELEMENTS,
    MAX_GAP_BITS,
    MAX_LANE_SIZE,
    MAX_NAME_BYTES,
    MAX_RANK,
    MIN_GAP_BITS,
    MIN_LANE_SIZE,
    PART_ALIGNMENT,
    ENCODING_MINOR,
    PLANE_MODES,
    PLANE_HUFFMAN,
    PLANE_STORED,
    SCALE_DTYPES,
    SCALES_MINOR,
    VERSION_MINOR,
    parts_of,
)
from .errors import TensorError
from .streams import align, num_lanes


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor; no tensor data is read to make it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    parts: dict[str, int]  # part name -> stored bytes, in layout order
    codebook_dtype: str | None = None
    codebook_size: int | None = None
    lane_size: int | None = None
    gap_bits: int | None = None
    nonzeros: int = 0  # elements whose value is not zero (-0.0 counts as zero, NaN does not)
    entries: int | None = None  # codebook-sparse: entries incl. fillers
    planes: tuple[str, ...] | None = None  # float-planes: "stored" or "huffman" for each byte plane
    scale_axis: int | None = None  # 1.2, codebook-*: the axis along which each slice has its own scale
    scale_dtype: str | None = None  # 1.2: "float32" or "float16", the stored scales' type
    offset: int = 0  # file offset of the tensor's section
    nbytes: int = 0  # stored bytes (the section's length)
    extra: dict = field(default_factory=dict, compare=False)

    @cached_property  # asked for several times per tensor at every load; a frozen record never changes
    def numel(self) -> int:
        return math.prod(self.shape)

    @cached_property
    def decoded_nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def scaled(self) -> bool:
        """Whether this codebook-coded tensor carries per-channel scales (1.2, spec 7.5)."""
        return self.scale_axis is not None

    @property
    def scale_count(self) -> int:
        """Number of scales: the length of the tensor along ``scale_axis`` (0 when not scaled)."""
        return self.shape[self.scale_axis] if self.scaled else 0

    @property
    def minor(self) -> int:
        """The lowest minor version that defines this record (spec 2.2)."""
        return max(ENCODING_MINOR[self.encoding], SCALES_MINOR if self.scaled else 0)

    @property
    def index_alphabet(self) -> int:
        """Symbols of the index stream: the codebook, plus the zero symbol 0 when sparse."""
        return self.codebook_size + (1 if self.encoding == ENC_CB_SPARSE else 0)

    def part_offsets(self) -> dict[str, int]:
        """Offset of each part within the section."""
        out, pos = {}, 0
        for name, length in self.parts.items():
            pos = align(pos, PART_ALIGNMENT)
            out[name] = pos
            pos += length
        return out

    def descriptor(self) -> dict:
        """The JSON object stored in the header for this tensor (fixed key order)."""
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "encoding": self.encoding,
             "nonzeros": self.nonzeros}
        if self.encoding in (ENC_CB_DENSE, ENC_CB_SPARSE):
            d["codebook_dtype"] = self.codebook_dtype
            d["codebook_size"] = self.codebook_size
            d["lane_size"] = self.lane_size
        if self.encoding == ENC_CB_SPARSE:
            d["gap_bits"] = self.gap_bits
            d["entries"] = self.entries
        if self.scaled:
            d["scale_axis"] = self.scale_axis
            d["scale_dtype"] = self.scale_dtype
        if self.encoding == ENC_FLOAT_PLANES:
            d["lane_size"] = self.lane_size
            d["planes"] = list(self.planes)
        d["parts"] = dict(self.parts)
        return d


# parse_descriptor makes a TensorInfo without its __init__ and sets only the fields it has values for: the others
# read the class attributes that a dataclass keeps for fields with a plain default (this checks they are there)
assert all(getattr(TensorInfo, f.name) == f.default for f in fields(TensorInfo) if f.default is not MISSING)


def section_length(parts: dict[str, int]) -> int:
    pos = 0
    for length in parts.values():
        pos = align(pos, PART_ALIGNMENT) + length
    return pos


def _int(d: dict, key: str, lo: int, hi: int, where: str) -> int:
    v = d.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise TensorError(f"{where}: '{key}' must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _lane_size(d: dict, where: str) -> int:
    lane = _int(d, "lane_size", MIN_LANE_SIZE, MAX_LANE_SIZE, where)
    if lane & (lane - 1):
        raise TensorError(f"{where}: lane_size {lane} is not a power of two")
    return lane


_DTYPE_NAMES = frozenset(DTYPES)  # the names only: looking bfloat16 up would import ml_dtypes
_PART_NAMES: dict = {}  # (encoding, dtype, scaled) -> parts_of(...): one dict lookup per record, not a call
_CODEBOOK = (ENC_CB_DENSE, ENC_CB_SPARSE)



def parse_descriptor(d, offset: int, length: int, where: str, minor: int = VERSION_MINOR) -> TensorInfo:
    """Check a tensor descriptor against the format's rules and its section's length.

    ``minor`` is the minor version the caller implements: what later minor versions added is
    unknown to it (an encoding is refused, a key ignored), exactly as a reader of that version
    would see the record.

    Run for every record at every open (a few hundred for a small CNN), so written for the common
    case: the messages name the tensor, and are only made when a check fails. A raw record (most
    records of a CNN file: biases, norms, shape constants) is checked by :func:`raw_record` alone.
    """
    info = raw_record(d, offset, length)  # raw is in every minor version (ENCODING_MINOR[ENC_RAW] == 0)
    return info if info is not None else _parse_descriptor(d, offset, length, where, minor)


def raw_record(d, offset: int, length: int) -> TensorInfo | None:
    """The TensorInfo of a raw record ``d`` that passes every check of :func:`parse_descriptor`, else None (for
    any other record, or a raw one with a problem: parse_descriptor then finds the first and names it). The
    same checks in one expression, without the messages: a raw record is one part, "data", the whole section,
    of exactly the shape's bytes."""
    if type(d) is not dict or d.get("encoding") != ENC_RAW:
        return None
    get = d.get
    name, dtype, shape, parts, nonzeros = get("name"), get("dtype"), get("shape"), get("parts"), get("nonzeros")
    if not (type(name) is str and name.isascii() and len(name) <= MAX_NAME_BYTES and type(dtype) is str
            and dtype in _DTYPE_NAMES and type(shape) is list and len(shape) <= MAX_RANK and type(parts) is dict
            and len(parts) == 1 and type(parts.get("data")) is int and parts["data"] == length
            and type(nonzeros) is int and nonzeros >= 0):
        return None
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim > MAX_ELEMENTS:
            return None
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS or nonzeros > numel or numel * ITEMSIZE[dtype] != length:
        return None
    info = object.__new__(TensorInfo)  # as in _parse_descriptor: the fields left out read their class defaults
    info.__dict__.update({"name": name, "dtype": dtype, "shape": tuple(shape), "encoding": ENC_RAW,
                          "parts": {"data": length}, "offset": offset, "nbytes": length, "nonzeros": nonzeros,
                          "numel": numel, "decoded_nbytes": length, "extra": {}})
    return info


def _parse_descriptor(d, offset: int, length: int, where: str, minor: int = VERSION_MINOR) -> TensorInfo:
    """:func:`parse_descriptor`: every check, in the order whose first failure is the error raised."""
    if not isinstance(d, dict):
        raise TensorError(f"{where}: tensor descriptor must be an object")
    get = d.get
    name = get("name")
    if not isinstance(name, str) or not (name.isascii() and len(name) <= MAX_NAME_BYTES):  # ASCII: 1 byte a char
        if not isinstance(name, str) or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise TensorError(f"{where}: tensor name must be a string of at most {MAX_NAME_BYTES} bytes")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (\ud800 in the JSON): no UTF-8 text, no ONNX name
            raise TensorError(f"{where}: tensor name {name!r} is not valid Unicode text (a lone surrogate)") from None
    dtype = get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPE_NAMES:  # a list or object is unhashable
        raise TensorError(f"tensor {name!r} ({where}): unknown dtype {dtype!r}")
    shape = get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise TensorError(f"tensor {name!r} ({where}): shape must be a list of at most {MAX_RANK} dimensions")
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim > MAX_ELEMENTS:
            raise TensorError(f"tensor {name!r} ({where}): bad dimension {dim!r} in shape")
    numel = math.prod(shape)  # at most MAX_RANK factors of at most 2**40: cheap even when huge
    if numel > MAX_ELEMENTS:
        raise TensorError(f"tensor {name!r} ({where}): shape {shape} has more than {MAX_ELEMENTS} elements")
    enc = get("encoding")
    if not isinstance(enc, str) or enc not in ENCODINGS or ENCODING_MINOR[enc] > minor:
        raise TensorError(f"tensor {name!r} ({where}): unknown encoding {enc!r}")
    # 1.2: a codebook-coded record with per-channel scales names its axis and the scales' dtype, and has a
    # "scales" part; a 1.1 reader ignores the keys and refuses the record by its parts (never misreads it)
    scaled = minor >= SCALES_MINOR and enc in _CODEBOOK and ("scale_axis" in d or "scale_dtype" in d)
    parts = get("parts")
    key = (enc, dtype, scaled)
    names = _PART_NAMES.get(key)
    if names is None:
        names = _PART_NAMES[key] = tuple(parts_of(enc, dtype, scaled))
    if not isinstance(parts, dict) or tuple(parts) != names:
        raise TensorError(f"tensor {name!r} ({where}): 'parts' must list {', '.join(names)} in that order")
    pos = 0  # section_length(parts), in the same loop
    for pname, plen in parts.items():
        if type(plen) is not int or plen < 0 or plen > length:
            raise TensorError(f"tensor {name!r} ({where}): part {pname!r} has bad length {plen!r}")
        pos = -(-pos // PART_ALIGNMENT) * PART_ALIGNMENT + plen
    if pos != length:
        raise TensorError(f"tensor {name!r} ({where}): parts add up to {pos} bytes, section at byte {offset} has {length}")
    nonzeros = get("nonzeros")
    if type(nonzeros) is not int or not 0 <= nonzeros <= numel:
        _int(d, "nonzeros", 0, numel, f"tensor {name!r} ({where})")
    size = ITEMSIZE[dtype]
    nbytes = numel * size
    # TensorInfo(...) without the frozen dataclass's per-field __setattr__; the fields not set here (codebook_dtype
    # ...: None unless the encoding sets them below) read the class attributes a dataclass keeps for its defaults
    info = object.__new__(TensorInfo)
    info.__dict__.update({"name": name, "dtype": dtype, "shape": tuple(shape), "encoding": enc, "parts": dict(parts),
                          "offset": offset, "nbytes": length, "nonzeros": nonzeros, "numel": numel,
                          "decoded_nbytes": nbytes, "extra": {}})
    if enc == ENC_RAW:
        if parts["data"] != nbytes:
            raise TensorError(
                f"tensor {name!r} ({where}): raw data is {parts['data']} bytes, shape {shape} of {dtype} needs {nbytes}"
            )
        return info
    if enc == ENC_FLOAT_PLANES:  # the common record of a lossless file: its checks without the messages' strings
        lane, planes = get("lane_size"), get("planes")
        if (dtype in FLOAT_DTYPES and type(lane) is int and MIN_LANE_SIZE <= lane <= MAX_LANE_SIZE
                and not lane & (lane - 1) and type(planes) is list and len(planes) == size
                and planes.count(PLANE_STORED) + planes.count(PLANE_HUFFMAN) == size):
            for mode, plen in zip(planes, parts.values()):
                if mode == PLANE_STORED and plen != numel:
                    break
            else:
                info.__dict__.update(lane_size=lane, planes=tuple(planes))
                return info
        # else the checks below, in their order, raise the first problem's error
    where = f"tensor {name!r} ({where})"
    kw = info.__dict__
    if enc == ENC_LZMA:  # spec 7.6
        if nbytes > LZMA_MAX_BYTES:
            raise TensorError(f"{where}: {enc} tensor of {nbytes} decoded bytes, more than "
                              f"LZMA_MAX_BYTES {LZMA_MAX_BYTES}")
        if parts["data"] == 0:
            raise TensorError(f"{where}: {enc} data is empty (an LZMA2 stream has at least its end marker)")
    elif enc == ENC_FLOAT_PLANES:  # spec 6.1 item 10
        if dtype not in FLOAT_DTYPES:
            raise TensorError(f"{where}: {enc} needs a floating-point dtype, not {dtype}")
        lane = _lane_size(d, where)
        planes = get("planes")
        if (not isinstance(planes, list) or len(planes) != size
                or not all(isinstance(m, str) and m in PLANE_MODES for m in planes)):
            raise TensorError(f"{where}: 'planes' must list {size} of {' / '.join(PLANE_MODES)}, "
                              f"got {planes!r}")
        for k, mode in enumerate(planes):
            if mode == PLANE_STORED and parts[f"plane{k}"] != numel:
                raise TensorError(f"{where}: stored plane{k} is {parts[f'plane{k}']} bytes, {numel} elements need {numel}")
        kw.update(lane_size=lane, planes=tuple(planes))
    else:
        if dtype not in FLOAT_DTYPES:
            raise TensorError(f"{where}: {enc} needs a floating-point dtype, not {dtype}")
        cbd = get("codebook_dtype")
        if cbd not in CODEBOOK_DTYPES:
            raise TensorError(f"{where}: codebook_dtype must be one of {CODEBOOK_DTYPES}, got {cbd!r}")
        k = _int(d, "codebook_size", 0, MAX_CODEBOOK, where)
        lane = _lane_size(d, where)
        if parts["codebook"] != k * ITEMSIZE[cbd]:
            raise TensorError(f"{where}: codebook part is {parts['codebook']} bytes, {k} x {cbd} needs {k * ITEMSIZE[cbd]}")
        kw.update(codebook_dtype=cbd, codebook_size=k, lane_size=lane)
        if enc == ENC_CB_DENSE:
            if numel > 0 and k == 0:
                raise TensorError(f"{where}: a non-empty codebook-dense tensor needs a codebook")
        else:
            b = _int(d, "gap_bits", MIN_GAP_BITS, MAX_GAP_BITS, where)
            m = _int(d, "entries", nonzeros, numel, where)
            if parts["lane_bases"] != LANE_BASE_BYTES * num_lanes(m, lane):
                raise TensorError(
                    f"{where}: lane_bases part is {parts['lane_bases']} bytes, {m} entries in lanes of {lane} need "
                    f"{LANE_BASE_BYTES * num_lanes(m, lane)}"
                )
            kw.update(gap_bits=b, entries=m)
        if scaled:  # spec 6.1 item 11
            sdt = get("scale_dtype")
            if not isinstance(sdt, str) or sdt not in SCALE_DTYPES:
                raise TensorError(f"{where}: scale_dtype must be one of {SCALE_DTYPES}, got {sdt!r}")
            if not shape:
                raise TensorError(f"{where}: a scalar has no axis for per-channel scales")
            axis = _int(d, "scale_axis", 0, len(shape) - 1, where)
            want = shape[axis] * ITEMSIZE[sdt]
            if parts["scales"] != want:
                raise TensorError(f"{where}: scales part is {parts['scales']} bytes, {shape[axis]} x {sdt} (shape[{axis}] "
                                  f"of {shape}) needs {want}")
            kw.update(scale_axis=axis, scale_dtype=sdt)
    return info


def new_info(name, dtype, shape, encoding, parts, **kw) -> TensorInfo:
    """A TensorInfo for an encoder, checked with the same rules as a reader's."""
    info = TensorInfo(name=name, dtype=dtype, shape=tuple(int(s) for s in shape), encoding=encoding, parts=parts, **kw)
    return parse_descriptor(info.descriptor(), 0, section_length(parts), "encoder")


__all__ = ["TensorInfo", "parse_descriptor", "raw_record", "new_info", "section_length", "DEFAULT_LANE_SIZE"]

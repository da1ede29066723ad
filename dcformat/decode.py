"""Decoders: a tensor's section bytes + its record -> the numpy array."""

from __future__ import annotations

import numpy as np

from .constants import (DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_FLOAT_PLANES, ENC_RAW, PART_ALIGNMENT, PLANE_ALPHABET,
                        PLANE_HUFFMAN, UINT_OF_SIZE)
from .errors import HuffmanError, TensorError
from .records import TensorInfo
from .streams import Stream, align, parse_stream, raise_lane_error


def split_parts(info: TensorInfo, section: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """The parts of a section, checking that the padding between them is zero."""
    out, pos = {}, 0
    for name, length in info.parts.items():
        start = align(pos, PART_ALIGNMENT)
        if section[pos:start].any():
            raise TensorError(f"{where}: non-zero padding before part {name!r} at byte {info.offset + pos}")
        out[name] = section[start : start + length]
        pos = start + length
    return out


def _values(info: TensorInfo, codebook: np.ndarray, zero_first: bool, dtype: str | None = None) -> np.ndarray:
    """Bit patterns of the decoded values of each index symbol, in the tensor's dtype (or ``dtype``)."""
    tdt = DTYPES[dtype or info.dtype]
    vals = codebook.view(DTYPES[info.codebook_dtype]).astype(tdt)
    if zero_first:
        vals = np.concatenate([np.zeros(1, tdt), vals])
    if vals.size == 0:  # no symbols can occur; keep the kernel's array non-empty
        vals = np.zeros(1, tdt)
    return vals.view(UINT_OF_SIZE[tdt.itemsize])


def read_scales(info: TensorInfo, part: np.ndarray, where: str, at: int) -> np.ndarray:
    """The per-channel scales of a scaled record as float32 (exact), checked finite (spec 7.5)."""
    stored = part.view(DTYPES[info.scale_dtype])
    scales = stored.astype(np.float32)
    bad = ~np.isfinite(scales)
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise TensorError(f"{where}: scale {c} is {scales[c]} (byte {at + c * stored.itemsize}); "
                          "per-channel scales must be finite")
    return scales


def scale_values(flat: np.ndarray, scales: np.ndarray, inner: int, dtype: str, first_row: int = 0) -> np.ndarray:
    """Spec 7.5 on unscaled float32 values ``flat`` (scaled in place): each element times its channel's
    scale in binary32 (round to nearest even), a zero product +0.0, then converted to ``dtype`` (a zero
    the conversion makes is +0.0 too). ``flat`` is whole rows of ``inner`` elements, the first of them
    row ``first_row`` of the tensor (row r belongs to channel r % len(scales)); returns the array in ``dtype``."""
    from . import kernels

    if flat.size:
        if inner < kernels.SCALE_BLOCK_ROWS and flat.size >= 2 * scales.size * inner:  # short rows, many periods
            pattern = np.roll(np.repeat(scales, inner), -(first_row % scales.size) * inner)
            pattern = np.tile(pattern, -(-1024 // pattern.size))  # whole periods, at least 1024 elements
            kernels.pick(kernels.scale_periodic, kernels.scale_periodic_serial, flat.size)(flat, pattern)
        else:
            kernels.pick(kernels.scale_rows, kernels.scale_rows_serial, flat.size)(flat, scales, inner, first_row)
    if dtype == "float32":
        return flat
    with np.errstate(over="ignore"):  # float64: exact; float16/bfloat16: round to nearest even, past the range to inf
        out = flat.astype(DTYPES[dtype])
    if dtype != "float64":  # a product may round to a zero of either sign
        out[out == 0] = 0
    return out


def apply_scales(info: TensorInfo, flat: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """A scaled record's unscaled float32 values (all of them, in place) -> the tensor's values (spec 7.5)."""
    inner = int(np.prod(info.shape[info.scale_axis + 1 :], dtype=np.int64))
    return scale_values(flat, scales, max(inner, 1), info.dtype)


def _checked(info: TensorInfo, out: np.ndarray, where: str) -> np.ndarray:
    """The decoded array, if its count of non-zero elements is the one the record declares."""
    found = int(np.count_nonzero(out))
    if found != info.nonzeros:
        raise TensorError(f"{where}: decodes to {found} non-zero elements, the record declares {info.nonzeros}")
    return out


def decode_tensor(info: TensorInfo, section: np.ndarray) -> np.ndarray:
    """Decode one tensor from its (checksum-verified) section bytes."""
    from . import kernels  # numba is imported when the first tensor is decoded, not at import
    where = f"tensor {info.name!r}"
    parts = split_parts(info, section, where)
    offs = {k: info.offset + v for k, v in info.part_offsets().items()}
    tdt = DTYPES[info.dtype]
    if info.encoding == ENC_RAW:
        out = parts["data"].view(tdt).copy()
        if info.dtype == "bool" and out.view(np.uint8).max(initial=0) > 1:
            raise TensorError(f"{where}: bool data holds a byte other than 0 or 1 (byte {offs['data']})")
        return _checked(info, out, where).reshape(info.shape)
    n = info.numel
    udt = UINT_OF_SIZE[tdt.itemsize]
    scales = None
    if info.scaled:  # decode the unscaled float32 values, then scale them in place (spec 7.5)
        scales = read_scales(info, parts["scales"], where, offs["scales"])
        udt = np.dtype("<u4")
    vdt = "float32" if info.scaled else None
    if info.encoding == ENC_CB_DENSE:
        s = parse_stream(parts["indices"], n, info.index_alphabet, info.lane_size, where, offs["indices"])
        out = np.empty(n, udt)
        if n:
            status = kernels.pick(kernels.decode_dense, kernels.decode_dense_serial, n)(
                s.payload, s.lane_offsets, s.table, s.table_bits, n, info.lane_size,
                _values(info, parts["codebook"], False, vdt), out
            )
            raise_lane_error(status, where, (("index", s),))
        res = out.view(tdt) if scales is None else apply_scales(info, out.view(np.float32), scales)
        return _checked(info, res, where).reshape(info.shape)
    if info.encoding == ENC_CB_SPARSE:
        m = info.entries
        g = parse_stream(parts["gaps"], m, 1 << info.gap_bits, info.lane_size, where, offs["gaps"])
        s = parse_stream(parts["indices"], m, info.index_alphabet, info.lane_size, where, offs["indices"])
        bases = parts["lane_bases"].view("<u8")
        if bases.size:
            if bases[0] != 0:
                raise TensorError(f"{where}: the first lane base must be 0 (byte {offs['lane_bases']})")
            if int(bases.max()) > n:
                raise TensorError(f"{where}: a lane base is past the tensor's {n} elements (byte {offs['lane_bases']})")
        out = np.zeros(n, udt)
        if m:
            status = kernels.pick(kernels.decode_sparse, kernels.decode_sparse_serial, m)(
                g.payload, g.lane_offsets, g.table, g.table_bits,
                s.payload, s.lane_offsets, s.table, s.table_bits,
                m, info.lane_size, bases.astype(np.int64), n, _values(info, parts["codebook"], True, vdt), out,
            )
            raise_lane_error(status, where, (("gap", g), ("index", s)))
        res = out.view(tdt) if scales is None else apply_scales(info, out.view(np.float32), scales)
        return _checked(info, res, where).reshape(info.shape)
    if info.encoding == ENC_FLOAT_PLANES:
        return _checked(info, _decode_planes(info, section, parts, offs, where).view(tdt), where).reshape(info.shape)
    raise TensorError(f"{where}: unknown encoding {info.encoding!r}")  # pragma: no cover (checked at open)


def _decode_planes(info: TensorInfo, section: np.ndarray, parts: dict, offs: dict, where: str) -> np.ndarray:
    """The bit patterns of a float-planes tensor (spec 7.4), assembled lane by lane in place."""
    from . import kernels

    n, w = info.numel, len(info.planes)
    coded = np.array([m == PLANE_HUFFMAN for m in info.planes])
    parsed = {}
    for k in range(w):  # every coded plane's stream is checked before any lane is decoded (spec 11)
        if coded[k]:
            parsed[k] = parse_stream(parts[f"plane{k}"], n, PLANE_ALPHABET, info.lane_size, where, offs[f"plane{k}"])
    out = np.empty(n, UINT_OF_SIZE[w])
    if n == 0:
        return out
    nl = (n + info.lane_size - 1) // info.lane_size
    starts = np.zeros(w, np.int64)
    sizes = np.zeros(w, np.int64)
    lane_offsets = np.zeros((w, nl), np.int64)
    tbits = np.zeros(w, np.int64)
    tables = np.zeros((w, max([s.table.size for s in parsed.values()] or [1])), np.uint16)
    for k in range(w):
        part = parts[f"plane{k}"]
        if k in parsed:
            s = parsed[k]
            part = s.payload
            lane_offsets[k] = s.lane_offsets
            tables[k, : s.table.size] = s.table
            tbits[k] = s.table_bits
        starts[k] = (s.payload_at if k in parsed else offs[f"plane{k}"]) - info.offset
        sizes[k] = part.size
    status = kernels.pick(kernels.decode_planes, kernels.decode_planes_serial, n)(
        section, coded, starts, sizes, lane_offsets, tables, tbits, n, info.lane_size, 8 * w, out)
    bad = np.flatnonzero(status)
    if bad.size:
        lane = int(bad[0])
        k, code = divmod(int(status[lane]), kernels.INDEX_STREAM)
        s = parsed[k]
        raise HuffmanError(f"{where}: plane{k} stream lane {lane} (byte {s.payload_at + int(s.lane_offsets[lane])}): "
                           f"{kernels.STATUS_TEXT[code]}")
    return out


__all__ = ["decode_tensor", "split_parts", "Stream"]

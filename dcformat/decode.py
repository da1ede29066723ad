"""Decoders: a tensor's section bytes + its record -> the numpy array."""

from __future__ import annotations

import numpy as np

from .constants import (DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_FLOAT_PLANES, ENC_LZMA, ENC_RAW, LZMA_MIN_DICT,
                        PART_ALIGNMENT, PLANE_ALPHABET, PLANE_HUFFMAN, UINT_OF_SIZE)
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


def _values(info: TensorInfo, codebook: np.ndarray, zero_first: bool) -> np.ndarray:
    """Bit patterns of the decoded values of each index symbol, in the tensor's dtype."""
    tdt = DTYPES[info.dtype]
    vals = codebook.view(DTYPES[info.codebook_dtype]).astype(tdt)
    if zero_first:
        vals = np.concatenate([np.zeros(1, tdt), vals])
    if vals.size == 0:  # no symbols can occur; keep the kernel's array non-empty
        vals = np.zeros(1, tdt)
    return vals.view(UINT_OF_SIZE[tdt.itemsize])


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
    if info.encoding in (ENC_RAW, ENC_LZMA):
        if info.encoding == ENC_RAW:
            out = parts["data"].view(tdt).copy()
        else:
            out = _inflate_lzma(info, parts["data"], where, offs["data"]).view(tdt)
        if info.dtype == "bool" and out.view(np.uint8).max(initial=0) > 1:
            raise TensorError(f"{where}: bool data holds a byte other than 0 or 1 (byte {offs['data']})")
        return _checked(info, out, where).reshape(info.shape)
    n = info.numel
    udt = UINT_OF_SIZE[tdt.itemsize]
    if info.encoding == ENC_CB_DENSE:
        s = parse_stream(parts["indices"], n, info.index_alphabet, info.lane_size, where, offs["indices"])
        out = np.empty(n, udt)
        if n:
            status = kernels.pick(kernels.decode_dense, kernels.decode_dense_serial, n)(
                s.payload, s.lane_offsets, s.table, s.table_bits, n, info.lane_size, _values(info, parts["codebook"], False), out
            )
            raise_lane_error(status, where, (("index", s),))
        return _checked(info, out.view(tdt), where).reshape(info.shape)
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
                m, info.lane_size, bases.astype(np.int64), n, _values(info, parts["codebook"], True), out,
            )
            raise_lane_error(status, where, (("gap", g), ("index", s)))
        return _checked(info, out.view(tdt), where).reshape(info.shape)
    if info.encoding == ENC_FLOAT_PLANES:
        return _checked(info, _decode_planes(info, section, parts, offs, where).view(tdt), where).reshape(info.shape)
    raise TensorError(f"{where}: unknown encoding {info.encoding!r}")  # pragma: no cover (checked at open)


def _inflate_lzma(info: TensorInfo, data: np.ndarray, where: str, at: int) -> np.ndarray:
    """The raw bytes of an lzma tensor (spec 7.5): one complete LZMA2 stream, decoded with a
    dictionary of max(LZMA_MIN_DICT, decoded bytes), giving exactly the decoded bytes and ending
    at the end of the part. Never produces more than the declared bytes."""
    import lzma

    want = info.decoded_nbytes
    d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2,
                                                          "dict_size": max(LZMA_MIN_DICT, want)}])
    span = f"bytes {at}..{at + data.size - 1}"
    try:
        out = d.decompress(data, max_length=want)
        if len(out) == want and not d.eof and d.decompress(b"", max_length=1):
            raise TensorError(f"{where}: lzma data ({span}) decodes to more than the {want} bytes of the tensor")
    except lzma.LZMAError as e:
        raise TensorError(f"{where}: lzma data ({span}) is not a valid LZMA2 stream ({e})") from None
    if len(out) != want:
        raise TensorError(f"{where}: lzma data ({span}) decodes to {len(out)} bytes, the tensor has {want}")
    if not d.eof:
        raise TensorError(f"{where}: lzma data ({span}) ends before its end marker")
    if d.unused_data:
        raise TensorError(f"{where}: {len(d.unused_data)} bytes after the end of the lzma stream ({span})")
    return np.frombuffer(bytearray(out), np.uint8)


def _decode_planes(info: TensorInfo, section: np.ndarray, parts: dict, offs: dict, where: str) -> np.ndarray:
    """The bit patterns of a float-planes tensor (spec 7.4), assembled lane by lane in place.

    Every coded plane's stream header is checked before any lane is decoded (spec 11), by one
    compiled call (kernels.parse_plane_streams); when it finds a problem, the plane is parsed again
    by streams.parse_stream, whose error names it."""
    from . import kernels

    n, w = info.numel, len(info.planes)
    out = np.empty(n, UINT_OF_SIZE[w])
    if n == 0:
        for k, mode in enumerate(info.planes):  # a stream of 0 symbols must be empty
            if mode == PLANE_HUFFMAN:
                parse_stream(parts[f"plane{k}"], n, PLANE_ALPHABET, info.lane_size, where, offs[f"plane{k}"])
        return out
    coded = np.array([m == PLANE_HUFFMAN for m in info.planes])
    nl = (n + info.lane_size - 1) // info.lane_size
    starts = np.array([offs[f"plane{k}"] - info.offset for k in range(w)], np.int64)
    sizes = np.array([parts[f"plane{k}"].size for k in range(w)], np.int64)
    lane_offsets = np.zeros((w, nl), np.int64)
    tables = np.empty((w, 1 << kernels.PLANE_TABLE_BITS), np.uint16)
    pairs = np.empty((w, 1 << kernels.PAIR_MAX_BITS), np.uint32)
    tbits = np.zeros(w, np.int64)
    pstarts = np.zeros(w, np.int64)
    psizes = np.zeros(w, np.int64)
    bad = kernels.parse_plane_streams(section, coded, starts, sizes, n, info.lane_size, lane_offsets, tables, pairs,
                                      tbits, pstarts, psizes)
    if bad:
        k = bad - 1
        parse_stream(parts[f"plane{k}"], n, PLANE_ALPHABET, info.lane_size, where, offs[f"plane{k}"])
        raise HuffmanError(f"{where}: plane{k} stream at byte {offs[f'plane{k}']} is invalid")  # pragma: no cover
    status = kernels.pick(kernels.decode_planes, kernels.decode_planes_serial, n)(
        section, coded, pstarts, psizes, lane_offsets, tables, pairs, tbits, n, info.lane_size, 8 * w, out)
    bad = np.flatnonzero(status)
    if bad.size:
        lane = int(bad[0])
        k, code = divmod(int(status[lane]), kernels.INDEX_STREAM)
        at = info.offset + int(pstarts[k]) + int(lane_offsets[k, lane])
        raise HuffmanError(f"{where}: plane{k} stream lane {lane} (byte {at}): {kernels.STATUS_TEXT[code]}")
    return out


__all__ = ["decode_tensor", "split_parts", "Stream"]

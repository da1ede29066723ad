"""Encoders: turn arrays into encoded tensors for the writer.

* :func:`encode_raw` stores an array as it is.
* :func:`encode_codebook` stores a quantized tensor given as a codebook and one index per
  element, as ``codebook-dense`` or ``codebook-sparse`` (Deep Compression's relative-index
  layout), picking the smaller -- and the gap width b -- unless told.
* :func:`encode_float_planes` stores a float array as byte planes (sign rotated to the
  bottom, so the top plane is the exponent), Huffman-coding each plane that gets smaller by 2%
  (``float-planes``, format 1.1).
* :func:`encode_lzma` stores any array's raw bytes as one LZMA2 stream (``lzma``, format 1.3):
  for tensors with long repeats, such as analytic tables (a DFT basis), that no order-0 code
  catches.
* :func:`encode` takes any array, finds out whether its values come from a small set, and
  picks the smallest of the five encodings. It is exact: decoding gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import streams
from .constants import (
    CODEBOOK_DTYPES,
    DEFAULT_LANE_SIZE,
    DTYPES,
    ENC_CB_DENSE,
    ENC_CB_SPARSE,
    ENC_FLOAT_PLANES,
    ENC_LZMA,
    ENC_RAW,
    FLOAT_DTYPES,
    INDEX_CODE_LENGTH,
    ITEMSIZE,
    LZMA_MAX_BYTES,
    LZMA_MIN_DICT,
    MAX_CODEBOOK,
    MAX_GAP_BITS,
    MAX_LANE_SIZE,
    MIN_GAP_BITS,
    MIN_LANE_SIZE,
    PLANE_ALPHABET,
    PLANE_CODE_LENGTH,
    PLANE_HUFFMAN,
    PLANE_MODES,
    PLANE_SAVING_DIVISOR,
    PLANE_STORED,
    SCALE_DTYPES,
    UINT_OF_SIZE,
    dtype_name,
    parts_of,
)
from .errors import DczError, EncodeError
from .records import TensorInfo, new_info, section_length


@dataclass
class EncodedTensor:
    """A tensor ready to be written: its record and the bytes of each part."""

    info: TensorInfo
    parts: dict[str, np.ndarray]  # part name -> uint8 array, in layout order

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def encoding(self) -> str:
        return self.info.encoding

    @property
    def nbytes(self) -> int:
        return self.info.nbytes


def _make(name, dtype, shape, encoding, parts: dict[str, np.ndarray], **kw) -> EncodedTensor:
    names = parts_of(encoding, dtype, kw.get("scale_axis") is not None)
    lengths = {k: int(parts[k].size) for k in names}
    try:
        info = new_info(name, dtype, shape, encoding, lengths, **kw)
    except DczError as e:
        raise EncodeError(str(e)) from None
    return EncodedTensor(info, {k: parts[k] for k in names})


def _as_bytes(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.reshape(-1).view(np.uint8)


def _dtype(name: str, array: np.ndarray) -> str:
    """The format's dtype name of ``array`` (EncodeError naming the tensor when it has none)."""
    try:
        return dtype_name(array.dtype)
    except ValueError as e:
        raise EncodeError(f"tensor {name!r}: {e}") from None


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise EncodeError(f"tensor name must be a str, got {type(name).__name__}")
    return name


def _check_lane_size(name: str, lane_size) -> int:
    if (not isinstance(lane_size, (int, np.integer)) or isinstance(lane_size, bool)
            or not MIN_LANE_SIZE <= lane_size <= MAX_LANE_SIZE or lane_size & (lane_size - 1)):
        raise EncodeError(
            f"tensor {name!r}: lane_size must be a power of two in [{MIN_LANE_SIZE}, {MAX_LANE_SIZE}], got {lane_size!r}"
        )
    return int(lane_size)


def encode_raw(name: str, array) -> EncodedTensor:
    """Store ``array`` as little-endian bytes of its own dtype."""
    array = np.asarray(array)
    dt = _dtype(name, array)
    return _make(_check_name(name), dt, array.shape, ENC_RAW, {"data": _as_bytes(array)},
                 nonzeros=int(np.count_nonzero(array)))


def _bits(values: np.ndarray) -> np.ndarray:
    """Bit patterns of a float array, as unsigned integers."""
    return values.view(UINT_OF_SIZE[values.dtype.itemsize])


def _gap_layout(positions: np.ndarray, b: int):
    """Remainders and filler counts of the gaps between ``positions`` for gap width b."""
    gaps = np.diff(positions, prepend=-1) - 1
    return gaps & ((1 << b) - 1), gaps >> b


ESTIMATE_CHUNK = 1 << 20  # elements the size estimate looks at at once: its memory stays ~20 MB whatever the tensor


@dataclass(frozen=True)
class CodebookEstimate:
    """What :func:`estimate_codebook_bytes` found: the section bytes of each possible encoding.

    ``sizes`` maps ``"raw"``, ``"codebook-dense"`` and ``"codebook-sparse"`` (those that can hold the
    tensor) to their estimated section bytes: raw, codebooks, scales and lane bases exactly, each Huffman
    stream to within one byte per lane (``lane_size`` symbols). ``gap_bits`` is the gap width
    codebook-sparse would use (the one asked for, else the smallest estimate's); ``encoding`` is the one
    ``encode_codebook`` would write (the one asked for, else the smallest estimate; ties go to
    codebook-dense, then codebook-sparse, then raw); ``nbytes`` is its estimate.
    """

    sizes: dict
    gap_bits: int
    encoding: str

    @property
    def nbytes(self) -> int:
        return self.sizes[self.encoding]


@dataclass
class _Quantized:
    """encode_codebook's arguments, checked and converted."""

    name: str
    dtype: str
    shape: tuple
    cbd: str
    cb: np.ndarray  # the codebook as stored (codebook dtype)
    idx: np.ndarray  # flat uint8/uint16 indices
    lane_size: int
    gap_bits: int | None
    encoding: str | None
    axis: int | None = None  # per-channel scales (1.2): axis, dtype, the scales as stored
    sdt: str | None = None
    scales: np.ndarray | None = None

    @property
    def inner(self) -> int:
        """Elements per row of one channel (the product of the dimensions after the scale axis)."""
        return max(1, int(np.prod(self.shape[self.axis + 1 :], dtype=np.int64)))

    @property
    def scale_bytes(self) -> int:
        return 0 if self.axis is None else self.scales.size * ITEMSIZE[self.sdt]

    def values(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The decoded elements start..stop (start a multiple of ``inner`` when scaled), in the tensor's dtype."""
        from .decode import scale_values

        idx = self.idx[start:stop]
        if self.axis is None:
            with np.errstate(over="ignore"):  # a float32 entry past float16's range converts to inf (spec 7.2)
                return self.cb.astype(DTYPES[self.dtype])[idx]
        return scale_values(self.cb.astype(np.float32)[idx], self.scales.astype(np.float32), self.inner, self.dtype,
                            start // self.inner)

    def sparse_codebook(self) -> tuple[np.ndarray, np.ndarray]:
        """(the entries codebook-sparse stores, symbol of each codebook entry: 0 for the zero symbol).

        Unscaled, an entry whose decoded value is +0.0 is the zero symbol; scaled, any entry that is zero
        (either sign): it decodes to +0.0 whatever the scale (spec 7.5)."""
        if self.axis is None:
            is_zero = _bits(self.cb.astype(DTYPES[self.dtype])) == 0
        else:
            is_zero = self.cb.astype(np.float32) == 0
        keep = np.flatnonzero(~is_zero)
        remap = np.zeros(self.cb.size, np.uint16)
        remap[keep] = np.arange(1, keep.size + 1)
        return self.cb[keep], remap

    def scale_zeros(self) -> bool:
        """Whether some channel's scale turns a non-zero codebook entry into +0.0 (a zero scale, a product
        that underflows in float32 or in the tensor's dtype). When none does, an element decodes to zero
        exactly when its codebook entry is zero, and nothing needs computing per element."""
        if self.axis is None:
            return False
        if not hasattr(self, "_scale_zeros"):
            from .decode import scale_values

            cb32 = self.cb.astype(np.float32)
            table = np.tile(cb32, self.scales.size)  # channel c's decoded codebook: row c, as spec 7.5 computes it
            table = scale_values(table, self.scales.astype(np.float32), max(cb32.size, 1), self.dtype)
            made = (_bits(table) == 0).reshape(self.scales.size, cb32.size) & (cb32 != 0)
            self._scale_zeros = bool(made.any())
        return self._scale_zeros

    def nonzeros(self) -> int:
        """Elements that do not decode to zero (spec 6.1), without decoding them when it can."""
        counts = np.bincount(self.idx, minlength=self.cb.size)
        if self.axis is None:
            return int(counts[self.cb.astype(DTYPES[self.dtype]) != 0].sum())
        if not self.scale_zeros():
            return int(counts[self.cb.astype(np.float32) != 0].sum())
        return sum(int(np.count_nonzero(self.values(a, b))) for a, b in self.row_chunks())

    def row_chunks(self):
        """(start, stop) of chunks of whole rows of about ESTIMATE_CHUNK elements."""
        n = self.idx.size
        step = ESTIMATE_CHUNK if self.axis is None else max(1, ESTIMATE_CHUNK // self.inner) * self.inner
        return [(a, min(n, a + step)) for a in range(0, n, step)]

    def symbols(self, remap: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Sparse index symbols of elements start..stop, 0 where the element decodes to +0.0."""
        sym = remap[self.idx[start:stop]]
        if self.scale_zeros():
            v = self.values(start, stop)
            sym[_bits(v) == 0] = 0  # a zero scale (or a product that underflows) makes +0.0: not stored
        return sym


def _quantized(name, codebook, indices, shape, dtype, encoding, gap_bits, codebook_dtype, lane_size,
               scales, scale_axis, scale_dtype) -> _Quantized:
    name = _check_name(name)
    lane_size = _check_lane_size(name, lane_size)
    if dtype not in FLOAT_DTYPES:
        raise EncodeError(f"tensor {name!r}: codebook encodings need a float dtype, not {dtype!r}")
    cbd = codebook_dtype or ("float16" if dtype == "float16" else "float32")
    if cbd not in CODEBOOK_DTYPES:
        raise EncodeError(f"tensor {name!r}: codebook_dtype must be one of {CODEBOOK_DTYPES}")
    try:
        cb = np.asarray(codebook, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise EncodeError(f"tensor {name!r}: the codebook is not an array of numbers ({e})") from None
    if cb.ndim != 1:
        raise EncodeError(f"tensor {name!r}: the codebook must be one-dimensional, got shape {cb.shape}")
    cb = cb.astype(DTYPES[cbd])
    if cb.size > MAX_CODEBOOK + 1:
        raise EncodeError(f"tensor {name!r}: codebook has {cb.size} entries, at most {MAX_CODEBOOK} (plus one +0.0 entry) allowed")
    idx = np.asarray(indices)
    if shape is None:
        shape = idx.shape
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise EncodeError(f"tensor {name!r}: negative dimension in shape {shape}")
    idx = idx.reshape(-1)
    if idx.size != int(np.prod(shape, dtype=np.int64)):
        raise EncodeError(f"tensor {name!r}: {idx.size} indices for shape {shape}")
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= cb.size):
        raise EncodeError(f"tensor {name!r}: indices must be integers in [0, {cb.size})")
    idx = idx.astype(np.uint16 if cb.size > 255 else np.uint8, copy=False)
    if gap_bits is not None and (not isinstance(gap_bits, (int, np.integer)) or isinstance(gap_bits, bool)
                                 or not MIN_GAP_BITS <= gap_bits <= MAX_GAP_BITS):
        raise EncodeError(f"tensor {name!r}: gap_bits must be in [{MIN_GAP_BITS}, {MAX_GAP_BITS}]")
    if encoding not in (None, ENC_RAW, ENC_CB_DENSE, ENC_CB_SPARSE):
        raise EncodeError(f"tensor {name!r}: unknown encoding {encoding!r}")
    q = _Quantized(name, dtype, shape, cbd, cb, idx, lane_size, None if gap_bits is None else int(gap_bits), encoding)
    if scales is None:
        if scale_dtype is not None:
            raise EncodeError(f"tensor {name!r}: scale_dtype {scale_dtype!r} given without scales")
        return q
    nd = len(shape)
    if not nd:
        raise EncodeError(f"tensor {name!r}: a scalar has no axis for per-channel scales")
    if (not isinstance(scale_axis, (int, np.integer)) or isinstance(scale_axis, bool)
            or not -nd <= scale_axis < nd):
        raise EncodeError(f"tensor {name!r}: scale_axis must be an integer in [{-nd}, {nd}) for shape {shape}, "
                          f"got {scale_axis!r}")
    q.axis = int(scale_axis) % nd
    q.sdt = scale_dtype or "float32"
    if q.sdt not in SCALE_DTYPES:
        raise EncodeError(f"tensor {name!r}: scale_dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    try:
        sc = np.asarray(scales, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise EncodeError(f"tensor {name!r}: the scales are not an array of numbers ({e})") from None
    if sc.ndim != 1 or sc.size != shape[q.axis]:
        raise EncodeError(f"tensor {name!r}: scales must be one-dimensional with shape[{q.axis}] = {shape[q.axis]} "
                          f"values, got shape {sc.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        q.scales = sc.astype(DTYPES[q.sdt])
    if not np.isfinite(q.scales).all():
        c = int(np.flatnonzero(~np.isfinite(q.scales))[0])
        raise EncodeError(f"tensor {name!r}: scale {c} is {float(sc[c])}, not a finite {q.sdt}")
    return q


def _estimate(q: _Quantized) -> CodebookEstimate:
    """Section bytes of each encoding, from histograms taken over chunks of the indices."""
    n, lane = q.idx.size, q.lane_size
    nz_cb, remap = q.sparse_codebook()
    k = nz_cb.size
    bits = range(MIN_GAP_BITS, MAX_GAP_BITS + 1) if q.gap_bits is None else (q.gap_bits,)
    counts = np.zeros(q.cb.size, np.int64)
    ihist = np.zeros(k + 1, np.int64)
    ghist = {b: np.zeros(1 << b, np.int64) for b in bits}
    nfill = dict.fromkeys(bits, 0)
    nnz, last = 0, -1
    for start, stop in q.row_chunks():  # whole rows when scaled
        counts += np.bincount(q.idx[start:stop], minlength=q.cb.size)
        sym = q.symbols(remap, start, stop)
        ihist += np.bincount(sym, minlength=k + 1)
        pos = np.flatnonzero(sym) + start
        if pos.size:
            gaps = np.diff(pos, prepend=last) - 1
            last, nnz = int(pos[-1]), nnz + pos.size
            for b in bits:
                ghist[b] += np.bincount(gaps & ((1 << b) - 1), minlength=1 << b)
                nfill[b] += int((gaps >> b).sum())
    sb = q.scale_bytes

    def sparse_size(b):
        g = ghist[b].copy()
        g[(1 << b) - 1] += nfill[b]
        ih = ihist.copy()
        ih[0] = nfill[b]  # the zero symbol: fillers only
        m = nnz + nfill[b]
        parts = {"codebook": k * ITEMSIZE[q.cbd], "scales": sb, "lane_bases": 8 * streams.num_lanes(m, lane),
                 "gaps": streams.estimate_stream_bytes(g, lane), "indices": streams.estimate_stream_bytes(ih, lane)}
        if q.axis is None:
            del parts["scales"]
        return section_length(parts)

    sparse = {b: sparse_size(b) for b in bits}
    gap_bits = min(sparse, key=lambda b: (sparse[b], b))
    dense = {"codebook": q.cb.size * ITEMSIZE[q.cbd], "scales": sb, "indices": streams.estimate_stream_bytes(counts, lane)}
    if q.axis is None:
        del dense["scales"]
    sizes = {ENC_RAW: n * ITEMSIZE[q.dtype], ENC_CB_DENSE: section_length(dense), ENC_CB_SPARSE: sparse[gap_bits]}
    if q.cb.size > MAX_CODEBOOK:
        del sizes[ENC_CB_DENSE]
    if k > MAX_CODEBOOK:
        del sizes[ENC_CB_SPARSE]
    best = q.encoding or min(sizes, key=lambda e: (sizes[e], e))
    if best == ENC_CB_DENSE and best not in sizes:
        raise EncodeError(f"tensor {q.name!r}: codebook-dense allows {MAX_CODEBOOK} codebook entries, got {q.cb.size}")
    if best == ENC_CB_SPARSE and best not in sizes:
        raise EncodeError(f"tensor {q.name!r}: {k} non-zero codebook entries, at most {MAX_CODEBOOK} allowed")
    return CodebookEstimate(sizes, gap_bits, best)


def estimate_codebook_bytes(
    codebook,
    indices,
    shape=None,
    dtype: str = "float32",
    *,
    encoding: str | None = None,
    gap_bits: int | None = None,
    codebook_dtype: str | None = None,
    lane_size: int = DEFAULT_LANE_SIZE,
    scales=None,
    scale_axis: int = 0,
    scale_dtype: str | None = None,
) -> CodebookEstimate:
    """The section bytes :func:`encode_codebook` would write for the same arguments, without encoding.

    Takes exactly ``encode_codebook``'s arguments (less the name) and returns a :class:`CodebookEstimate`:
    ``.sizes`` per encoding, ``.encoding`` (what ``encode_codebook`` picks: it makes the same estimate),
    ``.gap_bits`` and ``.nbytes``. Exact for raw, the codebook, the per-channel scales (``shape[scale_axis]``
    values of ``scale_dtype``) and the lane bases; each Huffman stream to within a byte per lane (16384
    symbols by default), from symbol histograms: no Huffman coding is done. Memory stays ~20 MB whatever
    the size of ``indices`` (histograms are taken over chunks). A file's bytes are its sections' plus about
    200 bytes of header JSON per tensor (deflated) and up to 7 bytes of alignment padding.
    """
    q = _quantized("estimate", codebook, indices, shape, dtype, encoding, gap_bits, codebook_dtype, lane_size,
                   scales, scale_axis, scale_dtype)
    return _estimate(q)


def codebook_values(
    codebook,
    indices,
    shape=None,
    dtype: str = "float32",
    *,
    codebook_dtype: str | None = None,
    scales=None,
    scale_axis: int = 0,
    scale_dtype: str | None = None,
) -> np.ndarray:
    """The array a reader decodes from ``encode_codebook`` with the same arguments, bit for bit, without
    encoding: ``codebook[indices]`` stored as ``codebook_dtype`` and converted to ``dtype``; with
    ``scales``, times each channel's stored scale in float32 (spec 7.5; zeros +0.0). For measuring what
    quantization does to a model before writing it."""
    q = _quantized("values", codebook, indices, shape, dtype, None, None, codebook_dtype, DEFAULT_LANE_SIZE,
                   scales, scale_axis, scale_dtype)
    return q.values().reshape(q.shape)


def encode_codebook(
    name: str,
    codebook,
    indices,
    shape=None,
    dtype: str = "float32",
    *,
    encoding: str | None = None,
    gap_bits: int | None = None,
    codebook_dtype: str | None = None,
    lane_size: int = DEFAULT_LANE_SIZE,
    scales=None,
    scale_axis: int = 0,
    scale_dtype: str | None = None,
) -> EncodedTensor:
    """Encode a quantized tensor: element i is ``codebook[indices[i]]`` cast to ``dtype``.

    ``encoding`` is ``"codebook-dense"``, ``"codebook-sparse"``, ``"raw"`` or None for the
    smallest (by :func:`estimate_codebook_bytes`). In ``codebook-sparse`` the elements whose value
    is +0.0 are not stored (the gaps between the others are); ``gap_bits`` (1..8) is chosen when None.
    ``codebook_dtype`` defaults to float16 for float16 tensors, float32 otherwise.

    ``scales`` (format 1.2, spec 7.5): one value per slice along ``scale_axis`` (``shape[scale_axis]``
    values, stored as ``scale_dtype``: "float32", the default, or "float16"); element i of channel c is
    then ``scales[c] * codebook[indices[i]]``, computed in float32 (round to nearest even) from the
    stored scale and codebook entry and converted to ``dtype``; a zero is always +0.0. ``raw`` stores
    those values. The file is then a 1.2 file (older readers refuse the record, never misread it).
    """
    q = _quantized(name, codebook, indices, shape, dtype, encoding, gap_bits, codebook_dtype, lane_size,
                   scales, scale_axis, scale_dtype)
    name, shape, dtype, cbd, cb, idx, lane_size = q.name, q.shape, q.dtype, q.cbd, q.cb, q.idx, q.lane_size
    scaled = {} if q.axis is None else {"scale_axis": q.axis, "scale_dtype": q.sdt}
    scale_part = {} if q.axis is None else {"scales": _as_bytes(q.scales)}
    choice = None if (encoding in (ENC_RAW, ENC_CB_DENSE) or (encoding == ENC_CB_SPARSE and q.gap_bits is not None)) \
        else _estimate(q)
    encoding = q.encoding or choice.encoding
    if encoding == ENC_RAW:
        return encode_raw(name, q.values().reshape(shape))
    nonzeros = q.nonzeros()
    if encoding == ENC_CB_DENSE:
        if cb.size > MAX_CODEBOOK:
            raise EncodeError(f"tensor {name!r}: codebook-dense allows {MAX_CODEBOOK} codebook entries, got {cb.size}")
        return _make(
            name, dtype, shape, ENC_CB_DENSE,
            {"codebook": _as_bytes(cb), **scale_part,
             "indices": streams.encode_stream(idx, cb.size, lane_size, INDEX_CODE_LENGTH)},
            codebook_dtype=cbd, codebook_size=int(cb.size), lane_size=lane_size, nonzeros=nonzeros, **scaled,
        )
    nz_cb, remap = q.sparse_codebook()
    if nz_cb.size > MAX_CODEBOOK:
        raise EncodeError(f"tensor {name!r}: {nz_cb.size} non-zero codebook entries, at most {MAX_CODEBOOK} allowed")
    sym = q.symbols(remap)
    positions = np.flatnonzero(sym)
    sym = sym[positions]
    b = q.gap_bits if q.gap_bits is not None else choice.gap_bits
    rem, fill = _gap_layout(positions, b)
    m = positions.size + int(fill.sum())
    at = np.arange(positions.size) + np.cumsum(fill)  # entry number of each real element
    gsym = np.full(m, (1 << b) - 1, np.uint8)
    gsym[at] = rem
    isym = np.zeros(m, np.uint16 if nz_cb.size > 255 else np.uint8)
    isym[at] = sym
    nl = streams.num_lanes(m, lane_size)
    bases = np.zeros(nl, "<u8")
    if nl > 1:
        epos = np.cumsum(gsym.astype(np.int64) + 1)  # positions consumed after each entry
        bases[1:] = epos[np.arange(1, nl) * lane_size - 1]
    return _make(
        name, dtype, shape, ENC_CB_SPARSE,
        {
            "codebook": _as_bytes(nz_cb),
            **scale_part,
            "lane_bases": bases.view(np.uint8),
            "gaps": streams.encode_stream(gsym, 1 << b, lane_size, INDEX_CODE_LENGTH),
            "indices": streams.encode_stream(isym, nz_cb.size + 1, lane_size, INDEX_CODE_LENGTH),
        },
        codebook_dtype=cbd, codebook_size=int(nz_cb.size), lane_size=lane_size, gap_bits=b, entries=m,
        nonzeros=nonzeros, **scaled,
    )


def _rotated_planes(array: np.ndarray) -> np.ndarray:
    """(itemsize, N) uint8: byte k of each element's bit pattern rotated left by one bit (spec 7.4)."""
    u = _bits(np.ascontiguousarray(array).reshape(-1)).astype(UINT_OF_SIZE[array.dtype.itemsize].newbyteorder("<"))
    t = (u << 1) | (u >> (8 * u.dtype.itemsize - 1))
    return np.ascontiguousarray(t.view(np.uint8).reshape(-1, u.dtype.itemsize).T)


def _plane_estimate(plane: np.ndarray, lane_size: int) -> int:
    """Bytes of one plane's Huffman stream, to within a byte per lane."""
    if not plane.size:
        return 0
    return streams.estimate_stream_bytes(np.bincount(plane, minlength=PLANE_ALPHABET), lane_size, PLANE_CODE_LENGTH)


def _plane_worth_coding(estimate: int, n: int) -> bool:
    """Whether a plane of ``n`` bytes whose stream is estimated at ``estimate`` bytes is Huffman-coded:
    it must save at least n // PLANE_SAVING_DIVISOR of them (else the copy's faster decode is worth more)."""
    return estimate < n - n // PLANE_SAVING_DIVISOR


def estimate_float_planes_bytes(array, *, lane_size: int = DEFAULT_LANE_SIZE) -> int:
    """The section bytes :func:`encode_float_planes` would write for ``array`` (each plane coded where that
    saves 1/PLANE_SAVING_DIVISOR of it), to within a byte per lane and plane, without coding; a float array only."""
    array = np.asarray(array)
    dt = _dtype("estimate", array)
    if dt not in FLOAT_DTYPES:
        raise EncodeError(f"{ENC_FLOAT_PLANES} needs a float dtype, not {dt}")
    lane_size = _check_lane_size("estimate", lane_size)
    n = array.size
    parts = {}
    for k, plane in enumerate(_rotated_planes(array)):
        est = _plane_estimate(plane, lane_size)
        parts[f"plane{k}"] = est if _plane_worth_coding(est, n) else n
    return section_length(parts)


def encode_float_planes(name: str, array, *, planes=None, lane_size: int = DEFAULT_LANE_SIZE) -> EncodedTensor:
    """Store a float array exactly as byte planes (``float-planes``, spec 7.4).

    ``planes`` gives "stored" or "huffman" for each byte plane (plane 0 = lowest byte of the
    rotated pattern, the last = the exponent byte); None codes each plane whose Huffman stream
    saves at least N // PLANE_SAVING_DIVISOR of its N stored bytes.
    """
    name = _check_name(name)
    lane_size = _check_lane_size(name, lane_size)
    array = np.asarray(array)
    dt = _dtype(name, array)
    if dt not in FLOAT_DTYPES:
        raise EncodeError(f"tensor {name!r}: {ENC_FLOAT_PLANES} needs a float dtype, not {dt}")
    w = ITEMSIZE[dt]
    if planes is not None:
        planes = tuple(planes)
        if len(planes) != w or not all(isinstance(m, str) and m in PLANE_MODES for m in planes):
            raise EncodeError(f"tensor {name!r}: planes must be {w} of {' / '.join(PLANE_MODES)}, got {planes!r}")
    n = array.size
    data = _rotated_planes(array)
    modes, parts = [], {}
    for k in range(w):
        plane = data[k]
        if planes is None:
            mode = PLANE_HUFFMAN if _plane_worth_coding(_plane_estimate(plane, lane_size), n) else PLANE_STORED
        else:
            mode = planes[k]
        if mode == PLANE_HUFFMAN:
            coded = streams.encode_stream(plane, PLANE_ALPHABET, lane_size, PLANE_CODE_LENGTH)
            if planes is None and coded.size >= n:  # the estimate is within a byte per lane: measure
                mode = PLANE_STORED
            else:
                plane = coded
        modes.append(mode)
        parts[f"plane{k}"] = plane
    return _make(name, dt, array.shape, ENC_FLOAT_PLANES, parts, lane_size=lane_size, planes=tuple(modes),
                 nonzeros=int(np.count_nonzero(array)))


def encode(name: str, array, *, encoding: str | None = None, lane_size: int = DEFAULT_LANE_SIZE,
           gap_bits: int | None = None) -> EncodedTensor:
    """Encode any array exactly, choosing the smallest encoding unless ``encoding`` is given.

    Float arrays whose values (by bit pattern) come from at most 256 distinct values, not
    counting +0.0, may use a codebook encoding; any float array may use float-planes (its
    byte planes Huffman-coded where that is smaller); any array may use lzma when a quick
    probe of its first bytes says LZMA2 could beat the best of the others by a tenth, and
    does (and saves 64 bytes). Otherwise the smallest section wins, ties going to raw and
    the codebook encodings.
    """
    name = _check_name(name)
    lane_size = _check_lane_size(name, lane_size)
    array = np.asarray(array)
    dt = _dtype(name, array)
    if encoding == ENC_LZMA:
        return encode_lzma(name, array)
    if encoding == ENC_RAW or dt not in FLOAT_DTYPES or array.size == 0:
        if encoding not in (None, ENC_RAW):
            raise EncodeError(f"tensor {name!r}: {encoding} needs a non-empty float tensor")
        best = encode_raw(name, array)
        return _maybe_lzma(name, array, best) if encoding is None else best
    if encoding == ENC_FLOAT_PLANES:
        return encode_float_planes(name, array, lane_size=lane_size)
    best = _encode_codebook_or_raw(name, array, dt, encoding, lane_size, gap_bits)
    if encoding is None:
        planes = encode_float_planes(name, array, lane_size=lane_size)
        if PLANE_HUFFMAN in planes.info.planes and planes.nbytes < best.nbytes:
            best = planes
        best = _maybe_lzma(name, array, best)
    return best


# LZMA2 settings: literal position and position bits follow the element width (lp = pb = log2 of the
# itemsize, no literal context bits), which fits fixed-width binary data better than text's defaults
# (about 3% smaller on the DFT basis of Silero VAD).
def _lzma_filters(itemsize: int, nbytes: int, preset: int) -> list[dict]:
    import lzma

    lp = min(4, int(itemsize).bit_length() - 1)
    return [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": max(LZMA_MIN_DICT, nbytes),
             "lc": 0 if lp else 3, "lp": lp, "pb": lp}]


def _lzma_compress(data, itemsize: int, preset: int) -> np.ndarray:
    import lzma

    c = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(itemsize, len(data), preset))
    return np.frombuffer(c, np.uint8)


def encode_lzma(name: str, array) -> EncodedTensor:
    """Store ``array``'s raw (little-endian) bytes as one LZMA2 stream (``lzma``, spec 7.6)."""
    import lzma

    name = _check_name(name)
    array = np.asarray(array)
    dt = _dtype(name, array)
    data = _as_bytes(array)
    if data.size > LZMA_MAX_BYTES:
        raise EncodeError(f"tensor {name!r}: {ENC_LZMA} holds at most {LZMA_MAX_BYTES} bytes, got {data.size}")
    if dt == "bool" and data.size and data.max() > 1:
        raise EncodeError(f"tensor {name!r}: bool data holds bytes other than 0 and 1 (readers refuse it)")
    coded = _lzma_compress(data, ITEMSIZE[dt], 9 | lzma.PRESET_EXTREME)
    return _make(name, dt, array.shape, ENC_LZMA, {"data": coded}, nonzeros=int(np.count_nonzero(array)))


LZMA_PROBE_BYTES = 1 << 16  # the probe compresses this much of a tensor's bytes, fast (preset 0)
LZMA_MIN_BYTES = 256  # smaller tensors are not tried: LZMA2's framing eats what it could save
# lzma decodes at tens of MB/s on one thread, slower than the other encodings: it is used only when
# it saves a tenth of the best other encoding's bytes, and at least 64 bytes
LZMA_GAIN = 0.9
LZMA_MIN_SAVING = 64


def _maybe_lzma(name: str, array: np.ndarray, best: EncodedTensor) -> EncodedTensor:
    """``best``, or the lzma encoding when it is smaller. LZMA2 at its strongest setting runs at
    ~0.5 MB/s here, so a fast probe of the first LZMA_PROBE_BYTES decides whether to try: it must
    come within 90% of best's bytes per input byte (trained weights, noise in their mantissas, are
    never tried: LZMA2 gets no closer than ~1.02x float-planes on them)."""
    data = _as_bytes(array)
    if data.size < LZMA_MIN_BYTES or data.size > LZMA_MAX_BYTES:
        return best
    w = array.dtype.itemsize
    sample = data[:LZMA_PROBE_BYTES]
    probe = _lzma_compress(sample, w, 0)
    if probe.size >= LZMA_GAIN * best.nbytes * sample.size / data.size:
        return best
    cand = encode_lzma(name, array)
    if probe.size < cand.info.parts["data"] and sample.size == data.size:  # the fast setting won: keep it
        cand = _make(cand.name, cand.info.dtype, array.shape, ENC_LZMA, {"data": probe}, nonzeros=cand.info.nonzeros)
    return cand if cand.nbytes <= LZMA_GAIN * best.nbytes - LZMA_MIN_SAVING else best


def _encode_codebook_or_raw(name, array, dt, encoding, lane_size, gap_bits) -> EncodedTensor:
    """The smallest of raw and the codebook encodings (or the one asked for)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    values, inverse = np.unique(_bits(flat), return_inverse=True)
    nonzero = values.size - int(values[0] == 0)  # +0.0 has the all-zero bit pattern
    cbd = "float16" if dt == "float16" else "float32"
    usable = nonzero <= MAX_CODEBOOK and _exact(values, dt, cbd)
    if not usable or (encoding == ENC_CB_DENSE and values.size > MAX_CODEBOOK):
        if encoding not in (None, ENC_RAW):
            raise EncodeError(
                f"tensor {name!r}: {values.size} distinct values do not fit a {cbd} codebook for {encoding}"
            )
        return encode_raw(name, array)
    with np.errstate(invalid="ignore"):  # NaN bit patterns: checked exact by _exact
        codebook = values.view(flat.dtype).astype(np.float64)
    return encode_codebook(name, codebook, inverse.reshape(-1), array.shape, dt, encoding=encoding,
                           gap_bits=gap_bits, codebook_dtype=cbd, lane_size=lane_size)


def _exact(bits: np.ndarray, dt: str, cbd: str) -> bool:
    """Whether these values survive the codebook path bit for bit: through float64 to the
    codebook dtype (as encode_codebook stores them), then to the tensor dtype (as a reader
    decodes them). Not so for a float64 value float32 cannot hold, a signalling NaN (the
    float64 step quiets it), or a bfloat16 NaN with a payload (float32 -> bfloat16 drops it)."""
    with np.errstate(invalid="ignore", over="ignore"):  # NaNs; float64 values past float32
        back = bits.view(DTYPES[dt]).astype(np.float64).astype(DTYPES[cbd]).astype(DTYPES[dt])
    return bool(np.array_equal(_bits(back), bits))

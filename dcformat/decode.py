"""Decoders: a tensor's section bytes + its record -> the numpy array."""

from __future__ import annotations

import numpy as np

from .constants import (DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_FLOAT_PLANES, ENC_LZMA, ENC_RAW, ITEMSIZE, LZMA_MIN_DICT,
                        PART_ALIGNMENT, PLANE_ALPHABET, PLANE_HUFFMAN, PLANE_STORED, UINT_OF_SIZE)
from .errors import HuffmanError, TensorError
from .records import TensorInfo
from .streams import Stream, align, parse_stream, raise_lane_error


def split_parts(info: TensorInfo, section: np.ndarray, where: str) -> dict[str, np.ndarray]:
    """The parts of a section, checking that the padding between them is zero."""
    out, pos = {}, 0
    for name, length in info.parts.items():
        start = align(pos, PART_ALIGNMENT)
        if start != pos and section[pos:start].any():
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
    import sys

    if flat.size and first_row == 0 and "dcformat.kernels" not in sys.modules:
        # numba not started (a small model on the numpy decoder, dcformat/npdecode.py): the same binary32
        # products by numpy, in place, channels on the middle axis of (outer, channels, inner)
        v = flat.reshape(-1, scales.size, inner)
        np.multiply(v, scales[None, :, None], out=v)
        flat[flat == 0] = 0  # a zero product is +0.0
    elif flat.size:
        from . import kernels

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


COUNT_CHUNK = 1 << 16  # elements compared at a time when -0.0 patterns are counted (a bool array this long)


def count_nonzero(a: np.ndarray) -> int:
    """``np.count_nonzero(a)``, counted on a float array's bit patterns as integers, less its -0.0 patterns
    (-0.0 is zero, NaN is not): numpy counts float16 ~60x and float32 ~4x slower than their integer views.
    The -0.0 patterns are compared COUNT_CHUNK elements at a time, so no array of the tensor's size is made."""
    if a.dtype.kind in "fV" and a.dtype.itemsize in UINT_OF_SIZE:  # V: bfloat16
        u = a.reshape(-1).view(UINT_OF_SIZE[a.dtype.itemsize])
        n = int(np.count_nonzero(u))
        if n:
            sign = u.dtype.type(1 << (8 * a.dtype.itemsize - 1))
            n -= sum(int(np.count_nonzero(u[i : i + COUNT_CHUNK] == sign)) for i in range(0, u.size, COUNT_CHUNK))
        return n
    return int(np.count_nonzero(a))


def _checked(info: TensorInfo, out: np.ndarray, where: str, found: np.ndarray | None = None) -> np.ndarray:
    """The decoded array, if its count of non-zero elements is the one the record declares (counted
    in ``found`` when given: an array holding all of ``out``'s non-zero elements, the rest being zero)."""
    found = count_nonzero(out if found is None else found)
    if found != info.nonzeros:
        raise TensorError(f"{where}: decodes to {found} non-zero elements, the record declares {info.nonzeros}")
    return out


def lane_bases(parts: dict, offs: dict, n: int, where: str) -> np.ndarray:
    """A codebook-sparse record's lane bases (spec 7.3), checked: the first is 0, none past the ``n`` elements."""
    bases = parts["lane_bases"].view("<u8")
    if bases.size:
        if bases[0] != 0:
            raise TensorError(f"{where}: the first lane base must be 0 (byte {offs['lane_bases']})")
        if int(bases.max()) > n:
            raise TensorError(f"{where}: a lane base is past the tensor's {n} elements (byte {offs['lane_bases']})")
    return bases


def decode_tensor(info: TensorInfo, section: np.ndarray) -> np.ndarray:
    """Decode one tensor from its (checksum-verified) section bytes."""
    where = f"tensor {info.name!r}"
    tdt = DTYPES[info.dtype]
    if info.encoding in (ENC_RAW, ENC_LZMA):  # one part, "data", at the section's start
        data = section[: info.parts["data"]]
        if info.encoding == ENC_RAW:
            out = data.view(tdt).copy()
        else:
            out = _inflate_lzma(info, data, where, info.offset).view(tdt)
        if info.dtype == "bool" and out.view(np.uint8).max(initial=0) > 1:
            raise TensorError(f"{where}: bool data holds a byte other than 0 or 1 (byte {info.offset})")
        return _checked(info, out, where).reshape(info.shape)
    parts = split_parts(info, section, where)
    offs = {k: info.offset + v for k, v in info.part_offsets().items()}
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
            from . import kernels  # numba is imported when a kernel first runs, not at import

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
        bases = lane_bases(parts, offs, n, where)
        out = np.zeros(n, udt)
        if m:
            from . import kernels

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


# a larger batch takes the numba kernels. Starting numba costs ~1-1.4 s in a fresh process (2 shared
# cores); the numpy decoder, lanes cut into chunks decoded in lockstep (npdecode._speculate), takes
# ~10-20 ns a symbol in a fresh process (8.2M symbols of the 40.8M-parameter benchmark MLP,
# tools/bench_startup.py --params 40: 0.18-0.21 s, against 0.3-0.75 s symbol by symbol before), with
# 2 bytes of scratch memory a symbol plus at most ~100 MB for a group of chunks. A whole fresh `dcrun` of
# that MLP takes 0.5-0.6 s of user CPU time with numpy, 1.1-1.3 s with numba (DCZ_DECODER=numba): numba
# pays off from ~30M symbols
NUMPY_MAX_SYMBOLS = 1 << 25
NUMPY_MAX_STEPS = 1 << 14  # nor longer lanes (the default lane size): the numpy decoder takes a step per symbol
NUMBA_START_S = 1.0  # about what importing numba and loading its cached kernels takes (2 cores)
_numpy_budget = [NUMBA_START_S]  # seconds of numpy decoding this process may still spend instead


def decode_batch(batch, span=None) -> dict[str, np.ndarray]:
    """``{info.name: decode_tensor(info, section)}`` for a list of (record, checksum-verified section bytes).
    ``span``: optionally (buf, starts), the sections being ``buf[starts[i] : starts[i] + len]`` (they are
    then not copied together for the numba decoder, :func:`decode_records`).

    Until numba is loaded, a batch goes to the numpy decoder (dcformat/npdecode.py, the same
    bytes): for a small model that is faster than starting numba. Once this process has spent
    about what starting numba costs (NUMBA_START_S) in it, numba is started (a process that keeps
    loading models pays at most twice the better choice). DCZ_DECODER=numpy or =numba forces one.
    """
    import os
    import sys
    import time

    mode = os.environ.get("DCZ_DECODER", "")
    if mode not in ("numpy", "numba"):
        symbols = sum(_symbols(info) for info, _ in batch)
        steps = max((min(info.lane_size, info.numel) for info, _ in batch if _symbols(info)), default=0)
        mode = "numba" if ("dcformat.kernels" in sys.modules or symbols > NUMPY_MAX_SYMBOLS
                           or steps > NUMPY_MAX_STEPS or _numpy_budget[0] <= 0) else "numpy"
        if symbols == 0 and "dcformat.kernels" not in sys.modules:
            mode = "numpy"  # nothing to decode with a kernel: do not start numba for raw tensors
    if mode == "numba":
        return decode_records(batch, span)
    from .npdecode import decode_tensors

    t0 = time.perf_counter()
    try:
        return decode_tensors(batch)
    finally:
        _numpy_budget[0] -= time.perf_counter() - t0


# tensors with fewer symbols than this are decoded together by one kernel call (kernels.decode_records);
# larger ones by decode_tensor, whose kernels run their lanes in parallel (kernels.PARALLEL_MIN_SYMBOLS)
RECORDS_MAX_SYMBOLS = 1 << 17
RECORDS_PARALLEL = 1 << 19  # a batch costing this much (section bytes + elements + RECORD_COST each) runs in parallel
RECORD_COST = 4096
_REC_ENC = {ENC_RAW: 0, ENC_CB_DENSE: 1, ENC_CB_SPARSE: 2, ENC_FLOAT_PLANES: 3}  # kernels.REC_RAW ...
# the bits of an element that make it non-zero (np.count_nonzero): all of them, but the sign bit of a float
_MASK = {**{k: (1 << (8 * w)) - 1 for k, w in ITEMSIZE.items()}, "int64": -1, "uint64": -1,
         "float64": (1 << 63) - 1, "float32": (1 << 31) - 1, "float16": (1 << 15) - 1, "bfloat16": (1 << 15) - 1}
_PAD = [(0,) * (8 - k) for k in range(9)]
_WIDTH_OF = {2: 0, 4: 1, 8: 2}
_CODED: dict = {}  # a float-planes record's planes -> the bit mask of its coded planes (kernels.REC_CODED)


def decode_records(batch, span=None) -> dict[str, np.ndarray]:
    """decode_tensor for each (record, checksum-verified section) of ``batch``, the small tensors of every
    encoding but lzma (raw, codebook-dense/-sparse, float-planes; fewer than RECORDS_MAX_SYMBOLS coded
    symbols) by one call of kernels.decode_records into one output buffer (each array returned is a view
    of it); the others, and any tensor the kernel finds wrong, by decode_tensor, in batch order: the same
    arrays and the same first error as decoding them in turn. A few microseconds of Python per tensor
    (was ~50: parsing each stream header, the parts' offsets, the checks, each in Python)."""
    from . import kernels

    if span is None:  # sections copied together, 8-aligned
        starts, pos = [], 0
        for _, section in batch:
            starts.append(pos)
            pos += -(-section.size // 8) * 8
        buf = np.zeros(pos, np.uint8)
        for (_, section), at in zip(batch, starts):
            buf[at : at + section.size] = section
    else:
        buf, starts = span
    lzma_done = _LzmaThread.start(batch)  # beside the Python and the kernel calls below
    rows, todo = [], []  # todo: (index in batch, row or None)
    vals = ([], [], [])  # codebook values by width (16, 32, 64 bits)
    nvals = [0, 0, 0]
    coded_width = [False, False, False]  # float-planes tensors of 16, 32, 64 bits
    out_bytes = 0
    rec_enc, itemsize, masks, pad = _REC_ENC, ITEMSIZE, _MASK, _PAD
    for i, (info, section) in enumerate(batch):
        code = rec_enc.get(info.encoding)
        n = info.numel
        dt = info.dtype
        if code is None or n == 0 or (info.scale_axis is not None and dt != "float32"):
            todo.append((i, None))
            continue
        lens = tuple(info.parts.values())
        if code == 0:
            row = (0, starts[i], section.size, n, itemsize[dt], masks[dt], 0, 0, 0, 0, info.nonzeros, out_bytes,
                   0, 0, 0, dt == "bool", 1, *lens, *pad[1])
        elif code == 3:
            if n * (len(lens) - info.planes.count(PLANE_STORED)) >= RECORDS_MAX_SYMBOLS:
                todo.append((i, None))
                continue
            coded = _CODED.get(info.planes)
            if coded is None:
                coded = _CODED[info.planes] = sum(1 << k for k, m in enumerate(info.planes) if m == PLANE_HUFFMAN)
            coded_width[_WIDTH_OF[len(lens)]] = True
            row = (3, starts[i], section.size, n, len(lens), masks[dt], info.lane_size, 0, 0, 0, info.nonzeros,
                   out_bytes, coded, 0, 0, 0, len(lens), *lens, *pad[len(lens)])
        else:
            m = n if code == 1 else info.entries
            if code * m >= RECORDS_MAX_SYMBOLS:  # coded symbols: m indices (and m gaps when sparse)
                todo.append((i, None))
                continue
            scaled = info.scale_axis is not None
            v = _values(info, section[: lens[0]], code == 2, "float32" if scaled else None)
            k = _WIDTH_OF[v.itemsize]
            row = (code, starts[i], section.size, n, v.itemsize, masks[dt], info.lane_size, info.index_alphabet,
                   1 << info.gap_bits if code == 2 else 0, m, -1 if scaled else info.nonzeros, out_bytes, 0,
                   nvals[k], v.size, 0, len(lens), *lens, *pad[len(lens)])
            vals[k].append(v)
            nvals[k] += v.size
        out_bytes += -(-info.decoded_nbytes // 8) * 8
        todo.append((i, len(rows)))
        rows.append(row)
    results = {}
    if rows:
        rec = np.array(rows, np.int64)
        out8 = np.empty(max(out_bytes, 8), np.uint8)
        status = np.zeros(len(rows), np.int64)
        views = (out8.view(np.uint16), out8.view(np.uint32), out8.view(np.uint64))
        cost = rec[:, 2] + rec[:, 3] + RECORD_COST  # section bytes + elements + a fixed cost (tables)
        total = int(cost.sum())
        threads = kernels.threads()
        bounds = None
        if total >= RECORDS_PARALLEL and threads > 1 and len(rows) > 1:
            # runs of about equal cost, a few per thread (tensors' costs differ), each decoded by one thread
            cum = np.cumsum(cost)
            runs = min(len(rows), 4 * threads)
            bounds = np.unique(np.concatenate([[0], np.searchsorted(cum, total * np.arange(1, runs) // runs,
                                                                      side="right"), [len(rows)]])).astype(np.int64)
        # one call per element width of the coded tensors (numba compiles the widths a file has), the raw
        # tensors with the first
        widths = [k for k in range(3) if vals[k] or coded_width[k]] or [1]
        for j, k in enumerate(widths):
            v = np.concatenate(vals[k]) if vals[k] else np.zeros(1, views[k].dtype)
            args = (buf, rec, v, out8, *views, views[k], j == 0, status)
            if bounds is not None:
                kernels.decode_records_parallel(*args, bounds)
            else:
                kernels.decode_records(*args)
        status = status.tolist()
    early = lzma_done.join() if lzma_done is not None else {}
    dtypes = {}
    ndarray = np.ndarray
    for i, r in todo:
        info, section = batch[i]
        if r is None or status[r]:
            got = early.get(i)
            # raises what is wrong (or decodes a large one); an lzma tensor the thread decoded is taken as it is
            results[info.name] = got if got is not None else decode_tensor(info, section)
            continue
        o = rows[r][11]
        dt = dtypes.get(info.dtype) or dtypes.setdefault(info.dtype, DTYPES[info.dtype])
        if info.scale_axis is None:  # a view of out8 (one call, not a slice, a view and a reshape)
            results[info.name] = ndarray(info.shape, dt, out8, o)
            continue
        a = out8[o : o + info.decoded_nbytes].view(dt)
        where = f"tensor {info.name!r}"
        parts = split_parts(info, section, where)
        scales = read_scales(info, parts["scales"], where, info.offset + info.part_offsets()["scales"])
        results[info.name] = _checked(info, apply_scales(info, a, scales), where).reshape(info.shape)
    return results


LZMA_THREAD_MIN_BYTES = 32 << 10  # lzma tensors of at least this many decoded bytes together get a thread


class _LzmaThread:
    """The lzma tensors of a decode_records batch (which the kernels do not decode) decoded by decode_tensor on a
    thread of their own, while the calling thread runs the kernels: liblzma (~30-60 MB/s) and the kernels (numba,
    nogil) both run without the GIL, so on two cores the lzma streams cost no time of their own (Silero VAD's
    two, 330 kB decoded: ~4 ms). A tensor whose decode raises is left out: the caller decodes it again in
    batch order, which raises the same error where decoding in turn would."""

    def __init__(self, jobs: list):
        import threading

        self.jobs = jobs  # (index in the batch, record, section)
        self.done: dict = {}
        self.thread = threading.Thread(target=self._run, name="dcz-lzma", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, batch) -> _LzmaThread | None:
        jobs = [(i, info, section) for i, (info, section) in enumerate(batch) if info.encoding == ENC_LZMA]
        if len(jobs) == len(batch) or sum(info.decoded_nbytes for _, info, _ in jobs) < LZMA_THREAD_MIN_BYTES:
            return None
        return cls(jobs)

    def _run(self) -> None:
        for i, info, section in self.jobs:
            try:
                self.done[i] = decode_tensor(info, section)
            except Exception:  # noqa: BLE001 - decoded again by the caller, which raises it in order
                pass

    def join(self) -> dict:
        """{index in the batch: array} of the lzma tensors decoded."""
        self.thread.join()
        return self.done


def _symbols(info: TensorInfo) -> int:
    """Huffman-coded symbols of a tensor (what the lane decoders go through)."""
    if info.encoding == ENC_CB_DENSE:
        return info.numel
    if info.encoding == ENC_CB_SPARSE:
        return 2 * (info.entries or 0)
    if info.encoding == ENC_FLOAT_PLANES:
        return info.numel * sum(m == PLANE_HUFFMAN for m in info.planes)
    return 0
def _inflate_lzma(info: TensorInfo, data: np.ndarray, where: str, at: int) -> np.ndarray:
    """The raw bytes of an lzma tensor (spec 7.6): one complete LZMA2 stream, decoded with a
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


__all__ = ["decode_tensor", "decode_batch", "split_parts", "Stream"]

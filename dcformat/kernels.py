"""Compiled hot loops (numba): Huffman lane encoding and parallel lane decoding.

Decoders never index outside their arrays whatever the input: reads past the end of a
payload see zero bits (a lane reads ahead into the next lane's bytes; that is harmless), and every write position is checked. They return one status
code per lane (see STATUS_*); the caller turns a non-zero status into a DczError.
"""

from __future__ import annotations

import os

import numpy as np

# GNU OpenMP (numba's default threading layer here) keeps its worker threads spinning after
# each parallel region; on a machine with few, busy cores they starve the calling thread, and
# decoding a file of many small tensors got ~40x slower (tools/bench_lossless.py). Sleeping
# workers cost a few microseconds per parallel launch instead. Read when libgomp loads, so set
# before the first parallel kernel runs; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from numba import njit, prange  # noqa: E402

STATUS_OK = 0
STATUS_OVERRUN = 1  # the lane's codes run past the lane's last byte
STATUS_UNDERRUN = 2  # the lane ends with whole unused bytes
STATUS_PADDING = 3  # the bits after the lane's last code are not zero
STATUS_OUT_OF_TENSOR = 4  # a gap points past the tensor's last element
STATUS_BASE_MISMATCH = 5  # a sparse lane does not end where the next lane's base says

INDEX_STREAM = 16  # added to a lane-end status found in a sparse tensor's index stream

STATUS_TEXT = {
    STATUS_OVERRUN: "codes run past the end of the lane",
    STATUS_UNDERRUN: "the lane has unused trailing bytes",
    STATUS_PADDING: "padding bits after the last code are not zero",
    STATUS_OUT_OF_TENSOR: "a gap points past the end of the tensor",
    STATUS_BASE_MISMATCH: "the lane does not end where the next lane's base says",
}


@njit(parallel=True, cache=True)
def lane_bits(symbols, lengths, lane_size):
    """Bits each lane of ``symbols`` takes with code ``lengths``."""
    n = symbols.size
    nl = (n + lane_size - 1) // lane_size
    out = np.zeros(nl, dtype=np.int64)
    for l in prange(nl):
        s0 = l * lane_size
        s1 = min(n, s0 + lane_size)
        acc = 0
        for i in range(s0, s1):
            acc += lengths[symbols[i]]
        out[l] = acc
    return out


@njit(parallel=True, cache=True)
def encode_lanes(symbols, codes, lengths, lane_size, lane_starts, out):
    """Write each lane's codes MSB-first from byte ``lane_starts[l]`` of ``out`` (zeroed)."""
    n = symbols.size
    nl = lane_starts.size
    for l in prange(nl):
        s0 = l * lane_size
        s1 = min(n, s0 + lane_size)
        pos = lane_starts[l]
        acc = 0
        nacc = 0
        for i in range(s0, s1):
            s = symbols[i]
            ln = lengths[s]
            acc = ((acc << ln) | codes[s]) & 0xFFFFFFFF
            nacc += ln
            while nacc >= 8:
                nacc -= 8
                out[pos] = (acc >> nacc) & 0xFF
                pos += 1
        if nacc > 0:
            out[pos] = (acc << (8 - nacc)) & 0xFF


@njit(inline="always")
def _refill(payload, pos, buf, nbits, size):
    """Top up a right-aligned bit buffer to more than 48 bits (zeros past the payload)."""
    if pos + 8 <= size:
        while nbits <= 48:
            buf = ((buf << 8) & 0xFFFFFFFFFFFFFF) | np.int64(payload[pos])
            pos += 1
            nbits += 8
    else:
        while nbits <= 48:
            b = np.int64(payload[pos]) if pos < size else np.int64(0)
            buf = ((buf << 8) & 0xFFFFFFFFFFFFFF) | b
            pos += 1
            nbits += 8
    return buf, nbits, pos


@njit(inline="always")
def _lane_end_status(payload, bit, end):
    """Check a lane consumed exactly its bytes and left only zero padding bits."""
    endbit = end * 8
    if bit > endbit:
        return 1
    if endbit - bit >= 8:
        return 2
    if bit < endbit:
        rem = 8 - (bit & 7)
        if (np.int64(payload[bit >> 3]) & ((1 << rem) - 1)) != 0:
            return 3
    return 0


@njit(parallel=True, cache=True)
def decode_dense(payload, lane_offsets, table, tbits, n, lane_size, values, out):
    """out[i] = values[symbol i] for the n symbols of one stream."""
    nl = lane_offsets.size
    size = payload.size
    status = np.zeros(nl, dtype=np.int64)
    mask = (1 << tbits) - 1
    for l in prange(nl):
        pos = lane_offsets[l]
        end = lane_offsets[l + 1] if l + 1 < nl else size
        buf = np.int64(0)
        nbits = 0
        s0 = l * lane_size
        s1 = min(n, s0 + lane_size)
        for i in range(s0, s1):
            if nbits < tbits:
                buf, nbits, pos = _refill(payload, pos, buf, nbits, size)
            e = np.int64(table[(buf >> (nbits - tbits)) & mask])
            nbits -= e >> 9
            out[i] = values[e & 511]
        status[l] = _lane_end_status(payload, pos * 8 - nbits, end)
    return status


@njit(parallel=True, cache=True)
def decode_sparse(gpay, goffs, gtable, gbits, ipay, ioffs, itable, ibits, m, lane_size, bases, numel, values, out):
    """Scatter the m (gap, index) entries of a codebook-sparse tensor into ``out`` (zeroed)."""
    nl = goffs.size
    gsize = gpay.size
    isize = ipay.size
    status = np.zeros(nl, dtype=np.int64)
    gmask = (1 << gbits) - 1
    imask = (1 << ibits) - 1
    for l in prange(nl):
        gpos = goffs[l]
        gend = goffs[l + 1] if l + 1 < nl else gsize
        ipos = ioffs[l]
        iend = ioffs[l + 1] if l + 1 < nl else isize
        gbuf = np.int64(0)
        ibuf = np.int64(0)
        gn = 0
        inb = 0
        p = bases[l]
        s0 = l * lane_size
        s1 = min(m, s0 + lane_size)
        st = 0
        for _ in range(s0, s1):
            if gn < gbits:
                gbuf, gn, gpos = _refill(gpay, gpos, gbuf, gn, gsize)
            if inb < ibits:
                ibuf, inb, ipos = _refill(ipay, ipos, ibuf, inb, isize)
            ge = np.int64(gtable[(gbuf >> (gn - gbits)) & gmask])
            gn -= ge >> 9
            ie = np.int64(itable[(ibuf >> (inb - ibits)) & imask])
            inb -= ie >> 9
            p += ge & 511
            if p >= numel:
                st = 4
                break
            out[p] = values[ie & 511]
            p += 1
        if st == 0:
            st = _lane_end_status(gpay, gpos * 8 - gn, gend)
        if st == 0:
            st = _lane_end_status(ipay, ipos * 8 - inb, iend)
            if st != 0:
                st += INDEX_STREAM
        if st == 0 and l + 1 < nl and p != bases[l + 1]:
            st = 5
        status[l] = st
    return status


@njit(inline="always")
def _plane_symbol(payload, size, table, tb, mask, b, nbits, pos):
    """One symbol of a plane's stream: (symbol, bit buffer, bits in it, next byte)."""
    if nbits < tb:
        b, nbits, pos = _refill(payload, pos, b, nbits, size)
    e = np.int64(table[(b >> (nbits - tb)) & mask])
    return e & 255, b, nbits - (e >> 9), pos


PLANE_GROUP = 4  # lanes decoded together by one thread: four independent bit chains hide the table's latency


@njit(parallel=True, cache=True)
def decode_planes(section, coded, starts, sizes, lane_offsets, tables, tbits, n, lane_size, width, out):
    """Assemble the n elements of a float-planes tensor in ``out`` (unsigned, ``width`` = 16, 32 or 64 bits).

    Plane k's bytes start at ``section[starts[k]]``: n stored bytes if not ``coded[k]``, else the
    payload (``sizes[k]`` bytes) of a Huffman stream whose lane l starts at ``lane_offsets[k, l]``,
    decoded with ``tables[k]`` (``tbits[k]`` bits). Each thread takes PLANE_GROUP lanes at a time:
    each plane's slice of them is decoded (four lanes interleaved) or copied into a scratch buffer,
    then the elements are put together and rotated right by one bit (spec 7.4), one store each.
    Returns one status per lane: 0, or STATUS_* + 16 * plane for the lane's first bad plane.
    """
    nl = (n + lane_size - 1) // lane_size
    status = np.zeros(nl, dtype=np.int64)
    nplanes = coded.size
    ngroups = (nl + PLANE_GROUP - 1) // PLANE_GROUP
    for g in prange(ngroups):
        l0 = g * PLANE_GROUP
        l1 = min(nl, l0 + PLANE_GROUP)
        s0 = l0 * lane_size
        s1 = min(n, l1 * lane_size)
        m = s1 - s0
        buf = np.empty((nplanes, m), dtype=np.uint8)
        for k in range(nplanes):
            if not coded[k]:
                buf[k, :] = section[starts[k] + s0 : starts[k] + s1]
                continue
            payload = section[starts[k] : starts[k] + sizes[k]]
            size = payload.size
            tb = tbits[k]
            mask = (1 << tb) - 1
            table = tables[k]
            bk = buf[k]
            if l1 - l0 == 4 and s1 - s0 == 4 * lane_size:  # four full lanes, interleaved
                L = lane_size
                p0 = lane_offsets[k, l0]
                p1 = lane_offsets[k, l0 + 1]
                p2 = lane_offsets[k, l0 + 2]
                p3 = lane_offsets[k, l0 + 3]
                b0 = b1 = b2 = b3 = np.int64(0)
                n0 = n1 = n2 = n3 = 0
                for j in range(L):
                    v, b0, n0, p0 = _plane_symbol(payload, size, table, tb, mask, b0, n0, p0)
                    bk[j] = v
                    v, b1, n1, p1 = _plane_symbol(payload, size, table, tb, mask, b1, n1, p1)
                    bk[L + j] = v
                    v, b2, n2, p2 = _plane_symbol(payload, size, table, tb, mask, b2, n2, p2)
                    bk[2 * L + j] = v
                    v, b3, n3, p3 = _plane_symbol(payload, size, table, tb, mask, b3, n3, p3)
                    bk[3 * L + j] = v
                bits_end = (p0 * 8 - n0, p1 * 8 - n1, p2 * 8 - n2, p3 * 8 - n3)
                for q in range(4):
                    l = l0 + q
                    end = lane_offsets[k, l + 1] if l + 1 < nl else size
                    st = _lane_end_status(payload, bits_end[q], end)
                    if st != 0 and status[l] == 0:
                        status[l] = st + INDEX_STREAM * k
            else:
                for l in range(l0, l1):
                    pos = lane_offsets[k, l]
                    end = lane_offsets[k, l + 1] if l + 1 < nl else size
                    b = np.int64(0)
                    nbits = 0
                    for j in range(l * lane_size - s0, min(n, (l + 1) * lane_size) - s0):
                        v, b, nbits, pos = _plane_symbol(payload, size, table, tb, mask, b, nbits, pos)
                        bk[j] = v
                    st = _lane_end_status(payload, pos * 8 - nbits, end)
                    if st != 0 and status[l] == 0:
                        status[l] = st + INDEX_STREAM * k
        if width == 16:
            q0, q1 = buf[0], buf[1]
            for j in range(m):
                t = np.uint32(q0[j]) | (np.uint32(q1[j]) << 8)
                out[s0 + j] = (t >> 1) | ((t & 1) << 15)
        elif width == 32:
            q0, q1, q2, q3 = buf[0], buf[1], buf[2], buf[3]
            for j in range(m):
                t = np.uint32(q0[j]) | (np.uint32(q1[j]) << 8) | (np.uint32(q2[j]) << 16) | (np.uint32(q3[j]) << 24)
                out[s0 + j] = (t >> 1) | ((t & 1) << 31)
        else:
            for j in range(m):
                t = np.uint64(0)
                for k in range(nplanes):
                    t |= np.uint64(buf[k, j]) << np.uint64(8 * k)
                out[s0 + j] = (t >> np.uint64(1)) | ((t & np.uint64(1)) << np.uint64(63))
    return status


@njit(parallel=True, cache=True)
def scale_rows(out, scales, inner, first_row):
    """Per-channel scales in place (spec 7.5): float32 ``out`` (C order) is rows of ``inner`` elements, row r
    of channel (first_row + r) % scales.size; each element becomes out * scale (binary32, round to nearest
    even), and a zero product becomes +0.0."""
    channels = scales.size
    rows = out.size // inner
    for r in prange(rows):
        s = scales[(first_row + r) % channels]
        base = r * inner
        for j in range(inner):
            v = out[base + j] * s
            if v == 0:
                v = np.float32(0.0)
            out[base + j] = v


@njit(parallel=True, cache=True)
def scale_periodic(out, pattern):
    """scale_rows for short rows (a scale axis at or near the end): element i times pattern[i % P], P =
    pattern.size (the scales repeated row by row over one period of channels), in parallel over periods;
    the inner loop is contiguous (vectorised), with no division per element. A zero product becomes +0.0."""
    n = out.size
    period = pattern.size
    blocks = (n + period - 1) // period
    for b in prange(blocks):
        base = b * period
        m = min(period, n - base)
        for j in range(m):
            v = out[base + j] * pattern[j]
            if v == 0:
                v = np.float32(0.0)
            out[base + j] = v


SCALE_BLOCK_ROWS = 64  # rows shorter than this: scale_periodic


# Serial builds of the same loops (prange runs as range): for small tensors a parallel launch
# costs more than the work, and a busy machine makes it worse.
PARALLEL_MIN_SYMBOLS = 1 << 17
decode_dense_serial = njit(cache=True)(decode_dense.py_func)
decode_sparse_serial = njit(cache=True)(decode_sparse.py_func)
decode_planes_serial = njit(cache=True)(decode_planes.py_func)
encode_lanes_serial = njit(cache=True)(encode_lanes.py_func)
lane_bits_serial = njit(cache=True)(lane_bits.py_func)
scale_rows_serial = njit(cache=True)(scale_rows.py_func)
scale_periodic_serial = njit(cache=True)(scale_periodic.py_func)


def pick(parallel_kernel, serial_kernel, n: int):
    """The parallel kernel for n >= PARALLEL_MIN_SYMBOLS symbols, else the serial one."""
    return parallel_kernel if n >= PARALLEL_MIN_SYMBOLS else serial_kernel

"""Compiled hot loops (numba): Huffman lane encoding and parallel lane decoding.

Decoders never index outside their arrays whatever the input: reads past the end of a
payload see zero bits (a lane reads ahead into the next lane's bytes; that is harmless), and every write position is checked. They return one status
code per lane (see STATUS_*); the caller turns a non-zero status into a DczError.

Every kernel is compiled with ``nogil=True``: they take and return numpy arrays and integers only
(no Python object, no exception raised: errors are status codes), so they need not hold the GIL:
a decode on one thread runs beside Python work on other threads (a process loading models on several).
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


@njit(parallel=True, cache=True, nogil=True)
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


@njit(parallel=True, cache=True, nogil=True)
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
    """Top up a right-aligned bit buffer to more than 48 bits (zeros past the payload). Away from the
    payload's end, without a loop: the next 7 bytes are read (independent loads, no branch on the
    bit count) and the whole bytes that fit under 56 bits are appended."""
    if pos + 8 <= size:
        w = ((np.int64(payload[pos]) << 48) | (np.int64(payload[pos + 1]) << 40) | (np.int64(payload[pos + 2]) << 32)
             | (np.int64(payload[pos + 3]) << 24) | (np.int64(payload[pos + 4]) << 16)
             | (np.int64(payload[pos + 5]) << 8) | np.int64(payload[pos + 6]))
        k = (56 - nbits) >> 3  # whole bytes that fit: 49..56 bits after
        buf = ((buf << (8 * k)) & 0xFFFFFFFFFFFFFF) | (w >> (56 - 8 * k))
        pos += k
        nbits += 8 * k
    else:
        while nbits <= 48:
            b = np.int64(payload[pos]) if pos < size else np.int64(0)
            buf = ((buf << 8) & 0xFFFFFFFFFFFFFF) | b
            pos += 1
            nbits += 8
    return buf, nbits, pos


@njit(inline="always")
def _refill_fast(payload, pos, buf, nbits):
    """_refill where pos + 8 <= the payload's size (the caller checked): no branch at all."""
    w = ((np.int64(payload[pos]) << 48) | (np.int64(payload[pos + 1]) << 40) | (np.int64(payload[pos + 2]) << 32)
         | (np.int64(payload[pos + 3]) << 24) | (np.int64(payload[pos + 4]) << 16)
         | (np.int64(payload[pos + 5]) << 8) | np.int64(payload[pos + 6]))
    k = (56 - nbits) >> 3
    return ((buf << (8 * k)) & 0xFFFFFFFFFFFFFF) | (w >> (56 - 8 * k)), nbits + 8 * k, pos + k


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


@njit(parallel=True, cache=True, nogil=True)
def decode_dense(payload, lane_offsets, table, tbits, n, lane_size, values, out):
    """out[i] = values[symbol i] for the n symbols of one stream (values.size <= 256: a codebook).

    Each thread takes INDEX_GROUP lanes at a time and decodes them interleaved into a scratch row of
    symbols (_plane_lanes: four independent bit chains, up to three codes a lookup when the code is
    at most PAIR_MAX_BITS long and the pair table pays for itself), then looks their values up."""
    nl = lane_offsets.size
    status = np.zeros(nl, dtype=np.int64)
    pairs, use = _stream_pairs(table, tbits, n)
    for g in prange((nl + INDEX_GROUP - 1) // INDEX_GROUP):
        _dense_group(payload, lane_offsets, table, pairs, tbits, use, n, lane_size, values, out, status, g)
    return status


@njit(cache=True, nogil=True)
def _dense_group(payload, lane_offsets, table, pairs, tbits, use, n, lane_size, values, out, status, g):
    """decode_dense's lanes of group g. A function of its own, not the prange loop's body: numba compiles a
    parallel loop's body less well (the same loop ran ~2x slower per thread there)."""
    nl = lane_offsets.size
    l0 = g * INDEX_GROUP
    l1 = min(nl, l0 + INDEX_GROUP)
    s0 = l0 * lane_size
    s1 = min(n, l1 * lane_size)
    if lane_size > SCRATCH_MAX_LANE:  # no scratch rows of millions of symbols: one code at a time, in place
        for l in range(l0, l1):
            status[l] = _dense_lane(payload, lane_offsets, table, tbits, n, lane_size, values, out, l)
        return
    sym = np.empty(s1 - s0, dtype=np.uint8)
    _plane_lanes(payload, lane_offsets, table, pairs, tbits, use, nl, l0, l1, n, lane_size, s0, sym, status, 0)
    for j in range(s1 - s0):
        out[s0 + j] = values[sym[j]]


INDEX_GROUP = 4  # lanes of an index stream decoded together by one thread (as PLANE_GROUP)
# lanes longer than this (a writer's choice up to MAX_LANE_SIZE) are decoded in place, one code at a time:
# a group's scratch rows (a byte a symbol, a stream) stay at most 4 * 2^16 bytes a stream
SCRATCH_MAX_LANE = 1 << 16


@njit(inline="always")
def _dense_lane(payload, lane_offsets, table, tbits, n, lane_size, values, out, l):
    """decode_dense's lane l one code at a time, straight into ``out``; its status."""
    nl = lane_offsets.size
    size = payload.size
    mask = (1 << tbits) - 1
    pos = lane_offsets[l]
    end = lane_offsets[l + 1] if l + 1 < nl else size
    buf = np.int64(0)
    nbits = 0
    for i in range(l * lane_size, min(n, (l + 1) * lane_size)):
        if nbits < tbits:
            buf, nbits, pos = _refill(payload, pos, buf, nbits, size)
        e = np.int64(table[(buf >> (nbits - tbits)) & mask])
        nbits -= e >> 9
        out[i] = values[e & 511]
    return _lane_end_status(payload, pos * 8 - nbits, end)


@njit(inline="always")
def _stream_pairs(table, tb, n):
    """The pair table of a stream of n symbols decoded with ``table`` (tb bits), and whether to use it:
    when its codes are at most PAIR_MAX_BITS long and its 2^tb entries cost less to build than the
    lookups they save (n >= 2^tb)."""
    use = tb <= PAIR_MAX_BITS and (1 << tb) <= max(n, 1)
    pairs = np.empty((1 << tb) if use else 1, dtype=np.uint32)
    if use:
        if tb == 0:  # one symbol of 0 bits: three per (0-bit) window
            pairs[0] = table[0] | (np.uint32(table[0]) << 8) | (np.uint32(table[0]) << 16) | (3 << 24)
        else:
            _pair_table(table, tb, pairs)
    return pairs, use


@njit(parallel=True, cache=True, nogil=True)
def decode_sparse(gpay, goffs, gtable, gbits, ipay, ioffs, itable, ibits, m, lane_size, bases, numel, values, out):
    """Scatter the m (gap, index) entries of a codebook-sparse tensor into ``out`` (zeroed).

    As decode_dense: each thread decodes INDEX_GROUP lanes of both streams interleaved into scratch
    rows, then places their entries lane by lane. A lane's status is the first of: a gap past the
    tensor's end, the gap stream's lane end, the index stream's, the next lane's base."""
    nl = goffs.size
    status = np.zeros(nl, dtype=np.int64)
    if values.size > 256:  # index symbols above 255 (a full 256-entry codebook and the zero): one at a time
        for l in prange(nl):
            status[l] = _sparse_lane(gpay, goffs, gtable, gbits, ipay, ioffs, itable, ibits, m, lane_size, bases,
                                     numel, values, out, l)
        return status
    gstat = np.zeros(nl, dtype=np.int64)
    istat = np.zeros(nl, dtype=np.int64)
    gpairs, guse = _stream_pairs(gtable, gbits, m)
    ipairs, iuse = _stream_pairs(itable, ibits, m)
    for g in prange((nl + INDEX_GROUP - 1) // INDEX_GROUP):
        _sparse_group(gpay, goffs, gtable, gbits, gpairs, guse, ipay, ioffs, itable, ibits, ipairs, iuse, m, lane_size,
                      bases, numel, values, out, status, gstat, istat, g)
    return status


@njit(cache=True, nogil=True)
def _sparse_group(gpay, goffs, gtable, gbits, gpairs, guse, ipay, ioffs, itable, ibits, ipairs, iuse, m, lane_size, bases,
                  numel, values, out, status, gstat, istat, g):
    """decode_sparse's lanes of group g (a function of its own, as _dense_group)."""
    nl = goffs.size
    l0 = g * INDEX_GROUP
    l1 = min(nl, l0 + INDEX_GROUP)
    s0 = l0 * lane_size
    s1 = min(m, l1 * lane_size)
    if lane_size > SCRATCH_MAX_LANE or (not (guse and iuse) and s1 - s0 < INDEX_GROUP * lane_size):
        # neither interleaved nor from pair tables (or lanes too long for scratch rows): the two streams'
        # chains side by side, lane by lane, in place
        for l in range(l0, l1):
            status[l] = _sparse_lane(gpay, goffs, gtable, gbits, ipay, ioffs, itable, ibits, m, lane_size, bases,
                                     numel, values, out, l)
        return
    gs = np.empty(s1 - s0, dtype=np.uint8)
    ix = np.empty(s1 - s0, dtype=np.uint8)
    _plane_lanes(gpay, goffs, gtable, gpairs, gbits, guse, nl, l0, l1, m, lane_size, s0, gs, gstat, 0)
    _plane_lanes(ipay, ioffs, itable, ipairs, ibits, iuse, nl, l0, l1, m, lane_size, s0, ix, istat, 1)
    for l in range(l0, l1):
        p = bases[l]
        st = 0
        for j in range(l * lane_size - s0, min(m, (l + 1) * lane_size) - s0):
            p += gs[j]
            if p >= numel:
                st = STATUS_OUT_OF_TENSOR
                break
            out[p] = values[ix[j]]
            p += 1
        if st == 0:
            st = gstat[l]
        if st == 0:
            st = istat[l]  # INDEX_STREAM + the lane-end status (_plane_lanes' k = 1)
        if st == 0 and l + 1 < nl and p != bases[l + 1]:
            st = STATUS_BASE_MISMATCH
        status[l] = st


@njit(inline="always")
def _sparse_lane(gpay, goffs, gtable, gbits, ipay, ioffs, itable, ibits, m, lane_size, bases, numel, values, out, l):
    """decode_sparse's lane l, one gap and one index code at a time (any index alphabet); its status."""
    nl = goffs.size
    gsize = gpay.size
    isize = ipay.size
    gmask = (1 << gbits) - 1
    imask = (1 << ibits) - 1
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
            st = STATUS_OUT_OF_TENSOR
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
        st = STATUS_BASE_MISMATCH
    return st


@njit(inline="always")
def _plane_symbol(payload, size, table, tb, mask, b, nbits, pos):
    """One symbol of a plane's stream: (symbol, bit buffer, bits in it, next byte)."""
    if nbits < tb:
        b, nbits, pos = _refill(payload, pos, b, nbits, size)
    e = np.int64(table[(b >> (nbits - tb)) & mask])
    return e & 255, b, nbits - (e >> 9), pos


PLANE_TABLE_BITS = 15  # = MAX_CODE_LENGTH: the widest decode table parse_plane_streams may build


@njit(cache=True, nogil=True)
def parse_plane_streams(section, coded, starts, sizes, n, lane_size, lane_offsets, tables, pairs, tbits, pstarts,
                        psizes):
    """Check and parse the stream header of every coded plane of a float-planes tensor (spec 8.1-8.3;
    n > 0 symbols over 256, so 128 bytes of code lengths, no padding, ceil(n / lane_size) lane offsets):
    the code is complete (or one symbol of length 1), lane offsets start at 0, never decrease and stay
    within the payload. Fills lane_offsets[k], tables[k] (canonical decode table, entry = length << 9 |
    symbol, as huffman.decode_table), pairs[k] (see _pair_table), tbits[k], and pstarts[k] / psizes[k] (the payload's place in
    ``section``; for stored planes the part's own). Returns 0, or 1 + the first bad plane: the caller
    then parses that plane with streams.parse_stream, which names the problem. One compiled call
    instead of ~0.15 ms of Python per stream, which dominated small tensors."""
    for k in range(coded.size):
        if not coded[k]:
            pstarts[k] = starts[k]
            psizes[k] = sizes[k]
            continue
        tb, ps, pz = _parse_stream(section, starts[k], sizes[k], n, 256, lane_size, lane_offsets[k], tables[k])
        if tb < 0:
            return 1 + k
        pstarts[k] = ps
        psizes[k] = pz
        tbits[k] = tb
        if tb == 0:  # one symbol of 0 bits: three per (0-bit) window
            pairs[k, 0] = tables[k, 0] | (np.uint32(tables[k, 0]) << 8) | (np.uint32(tables[k, 0]) << 16) | (3 << 24)
        elif tb <= PAIR_MAX_BITS:
            _pair_table(tables[k], tb, pairs[k])
    return 0


PAIR_MAX_BITS = 12  # codes this long or shorter are decoded from the pair table (up to 3 a lookup), four lookups a refill


@njit(inline="always")
def _pair_table(table, tb, pairs):
    """For each tb-bit window: the one, two or three whole codes at its start. Entry = first symbol |
    second << 8 | third << 16 | count << 24 | bits of them all << 26. The exponent plane's codes average
    ~3 bits, so most 11-bit windows hold three: a third of the lookups of one code at a time."""
    mask = (1 << tb) - 1
    for i in range(1 << tb):
        e1 = np.int64(table[i])
        l1 = e1 >> 9
        e = (e1 & 255) | (1 << 24) | (l1 << 26)
        if l1 < tb:
            e2 = np.int64(table[(i << l1) & mask])
            l2 = e2 >> 9
            if l1 + l2 <= tb:
                e = (e1 & 255) | ((e2 & 255) << 8) | (2 << 24) | ((l1 + l2) << 26)
                if l1 + l2 < tb:
                    e3 = np.int64(table[(i << (l1 + l2)) & mask])
                    l3 = e3 >> 9
                    if l1 + l2 + l3 <= tb:
                        e = (e1 & 255) | ((e2 & 255) << 8) | ((e3 & 255) << 16) | (3 << 24) | ((l1 + l2 + l3) << 26)
        pairs[i] = e


PLANE_GROUP = 4  # lanes decoded together by one thread: four independent bit chains hide the table's latency


@njit(inline="always")
def _plane_lanes(payload, offs, table, pk, tb, use_pairs, nl, l0, l1, n, lane_size, s0, bk, status, k):
    """Decode lanes l0 .. l1 - 1 of one coded plane (its payload, lane offsets ``offs``, decode table,
    pair table ``pk`` used when ``use_pairs``, ``tb`` bits) into ``bk`` (element s0 at bk[0]); a bad lane end sets status[l] to
    STATUS_* + 16 * k unless an earlier plane already did. Every round refills each bit buffer once,
    whatever it holds (a refill leaves > 48 bits: four pair-table windows of <= 12 bits, or three
    windows of <= 15), with no bounds check while every lane is 8 bytes or more from the payload's end
    (the rest, and each lane's last few codes, one code at a time): no branch on the bit counts."""
    size = payload.size
    mask = (1 << tb) - 1
    s1 = min(n, l1 * lane_size)
    if l1 - l0 == 4 and s1 - s0 == 4 * lane_size:  # four full lanes, interleaved
        L = lane_size
        p0 = offs[l0]
        p1 = offs[l0 + 1]
        p2 = offs[l0 + 2]
        p3 = offs[l0 + 3]
        b0 = b1 = b2 = b3 = np.int64(0)
        n0 = n1 = n2 = n3 = 0
        j0 = j1 = j2 = j3 = 0
        if use_pairs:
            while (j0 <= L - 12 and j1 <= L - 12 and j2 <= L - 12 and j3 <= L - 12 and p0 + 8 <= size and p1 + 8 <= size
                   and p2 + 8 <= size and p3 + 8 <= size):
                b0, n0, p0 = _refill_fast(payload, p0, b0, n0)
                b1, n1, p1 = _refill_fast(payload, p1, b1, n1)
                b2, n2, p2 = _refill_fast(payload, p2, b2, n2)
                b3, n3, p3 = _refill_fast(payload, p3, b3, n3)
                for q in range(4):
                    e = np.int64(pk[(b0 >> (n0 - tb)) & mask])
                    n0 -= e >> 26
                    bk[j0] = e & 255
                    bk[j0 + 1] = (e >> 8) & 255
                    bk[j0 + 2] = (e >> 16) & 255
                    j0 += (e >> 24) & 3
                    e = np.int64(pk[(b1 >> (n1 - tb)) & mask])
                    n1 -= e >> 26
                    bk[L + j1] = e & 255
                    bk[L + j1 + 1] = (e >> 8) & 255
                    bk[L + j1 + 2] = (e >> 16) & 255
                    j1 += (e >> 24) & 3
                    e = np.int64(pk[(b2 >> (n2 - tb)) & mask])
                    n2 -= e >> 26
                    bk[2 * L + j2] = e & 255
                    bk[2 * L + j2 + 1] = (e >> 8) & 255
                    bk[2 * L + j2 + 2] = (e >> 16) & 255
                    j2 += (e >> 24) & 3
                    e = np.int64(pk[(b3 >> (n3 - tb)) & mask])
                    n3 -= e >> 26
                    bk[3 * L + j3] = e & 255
                    bk[3 * L + j3 + 1] = (e >> 8) & 255
                    bk[3 * L + j3 + 2] = (e >> 16) & 255
                    j3 += (e >> 24) & 3
        else:  # codes of 13-15 bits: one code a window, three windows a refill
            while (j0 <= L - 3 and j1 <= L - 3 and j2 <= L - 3 and j3 <= L - 3 and p0 + 8 <= size and p1 + 8 <= size
                   and p2 + 8 <= size and p3 + 8 <= size):
                b0, n0, p0 = _refill_fast(payload, p0, b0, n0)
                b1, n1, p1 = _refill_fast(payload, p1, b1, n1)
                b2, n2, p2 = _refill_fast(payload, p2, b2, n2)
                b3, n3, p3 = _refill_fast(payload, p3, b3, n3)
                for q in range(3):
                    e = np.int64(table[(b0 >> (n0 - tb)) & mask])
                    n0 -= e >> 9
                    bk[j0] = e & 255
                    j0 += 1
                    e = np.int64(table[(b1 >> (n1 - tb)) & mask])
                    n1 -= e >> 9
                    bk[L + j1] = e & 255
                    j1 += 1
                    e = np.int64(table[(b2 >> (n2 - tb)) & mask])
                    n2 -= e >> 9
                    bk[2 * L + j2] = e & 255
                    j2 += 1
                    e = np.int64(table[(b3 >> (n3 - tb)) & mask])
                    n3 -= e >> 9
                    bk[3 * L + j3] = e & 255
                    j3 += 1
        for j in range(j0, L):
            v, b0, n0, p0 = _plane_symbol(payload, size, table, tb, mask, b0, n0, p0)
            bk[j] = v
        for j in range(j1, L):
            v, b1, n1, p1 = _plane_symbol(payload, size, table, tb, mask, b1, n1, p1)
            bk[L + j] = v
        for j in range(j2, L):
            v, b2, n2, p2 = _plane_symbol(payload, size, table, tb, mask, b2, n2, p2)
            bk[2 * L + j] = v
        for j in range(j3, L):
            v, b3, n3, p3 = _plane_symbol(payload, size, table, tb, mask, b3, n3, p3)
            bk[3 * L + j] = v
        bits_end = (p0 * 8 - n0, p1 * 8 - n1, p2 * 8 - n2, p3 * 8 - n3)
        for q in range(4):
            l = l0 + q
            end = offs[l + 1] if l + 1 < nl else size
            st = _lane_end_status(payload, bits_end[q], end)
            if st != 0 and status[l] == 0:
                status[l] = st + INDEX_STREAM * k
        return
    for l in range(l0, l1):
        pos = offs[l]
        end = offs[l + 1] if l + 1 < nl else size
        b = np.int64(0)
        nbits = 0
        j = l * lane_size - s0
        j1 = min(n, (l + 1) * lane_size) - s0
        if use_pairs:
            while j + 12 <= j1 and pos + 8 <= size:
                b, nbits, pos = _refill_fast(payload, pos, b, nbits)
                for q in range(4):
                    e = np.int64(pk[(b >> (nbits - tb)) & mask])
                    nbits -= e >> 26
                    bk[j] = e & 255
                    bk[j + 1] = (e >> 8) & 255
                    bk[j + 2] = (e >> 16) & 255
                    j += (e >> 24) & 3
        for jj in range(j, j1):
            v, b, nbits, pos = _plane_symbol(payload, size, table, tb, mask, b, nbits, pos)
            bk[jj] = v
        st = _lane_end_status(payload, pos * 8 - nbits, end)
        if st != 0 and status[l] == 0:
            status[l] = st + INDEX_STREAM * k


@njit(inline="always")
def _plane_bytes(section, starts, coded, slot, scratch, k, s0, s1):
    """Plane k's bytes of elements s0 .. s1 - 1: the stored plane's own, or its decoded scratch row."""
    if coded[k]:
        return scratch[slot[k], : s1 - s0]
    return section[starts[k] + s0 : starts[k] + s1]


@njit(parallel=True, cache=True, nogil=True)
def decode_planes(section, coded, starts, sizes, lane_offsets, tables, pairs, tbits, n, lane_size, width, out):
    """Assemble the n elements of a float-planes tensor in ``out`` (unsigned, ``width`` = 16, 32 or 64 bits).

    Plane k's bytes start at ``section[starts[k]]``: n stored bytes if not ``coded[k]``, else the
    payload (``sizes[k]`` bytes) of a Huffman stream whose lane l starts at ``lane_offsets[k, l]``,
    decoded with ``tables[k]`` (``tbits[k]`` bits; ``pairs[k]`` up to three codes a lookup when they are
    at most PAIR_MAX_BITS). Each thread takes PLANE_GROUP lanes at a time: each coded plane's slice
    of them is decoded (four lanes interleaved) into a scratch row, then the elements are put together
    from those rows and the stored planes' own bytes (not copied first) and rotated right by one bit
    (spec 7.4), one store each. Returns one status per lane: 0, or STATUS_* + 16 * plane for the
    lane's first bad plane.
    """
    nl = (n + lane_size - 1) // lane_size
    status = np.zeros(nl, dtype=np.int64)
    nplanes = coded.size
    slot = np.zeros(nplanes, dtype=np.int64)  # plane k's row of the scratch buffer
    ncoded = 0
    for k in range(nplanes):
        if coded[k]:
            slot[k] = ncoded
            ncoded += 1
    ngroups = (nl + PLANE_GROUP - 1) // PLANE_GROUP
    for g in prange(ngroups):
        _planes_group(section, coded, starts, sizes, lane_offsets, tables, pairs, tbits, n, lane_size, width,
                      out, status, slot, ncoded, g)
    return status


@njit(cache=True, nogil=True)
def _planes_group(section, coded, starts, sizes, lane_offsets, tables, pairs, tbits, n, lane_size, width, out, status,
                  slot, ncoded, g):
    """decode_planes' lanes of group g (a function of its own, as _dense_group)."""
    nplanes = coded.size
    nl = (n + lane_size - 1) // lane_size
    l0 = g * PLANE_GROUP
    l1 = min(nl, l0 + PLANE_GROUP)
    s0 = l0 * lane_size
    s1 = min(n, l1 * lane_size)
    m = s1 - s0
    scratch = np.empty((max(ncoded, 1), m), dtype=np.uint8)
    for k in range(nplanes):
        if coded[k]:
            _plane_lanes(section[starts[k] : starts[k] + sizes[k]], lane_offsets[k], tables[k], pairs[k], tbits[k],
                         tbits[k] <= PAIR_MAX_BITS, nl, l0, l1, n, lane_size, s0, scratch[slot[k]], status, k)
    if width == 16:
        q0 = _plane_bytes(section, starts, coded, slot, scratch, 0, s0, s1)
        q1 = _plane_bytes(section, starts, coded, slot, scratch, 1, s0, s1)
        for j in range(m):
            t = np.uint32(q0[j]) | (np.uint32(q1[j]) << 8)
            out[s0 + j] = (t >> 1) | ((t & 1) << 15)
    elif width == 32:
        q0 = _plane_bytes(section, starts, coded, slot, scratch, 0, s0, s1)
        q1 = _plane_bytes(section, starts, coded, slot, scratch, 1, s0, s1)
        q2 = _plane_bytes(section, starts, coded, slot, scratch, 2, s0, s1)
        q3 = _plane_bytes(section, starts, coded, slot, scratch, 3, s0, s1)
        for j in range(m):
            t = np.uint32(q0[j]) | (np.uint32(q1[j]) << 8) | (np.uint32(q2[j]) << 16) | (np.uint32(q3[j]) << 24)
            out[s0 + j] = (t >> 1) | ((t & 1) << 31)
    else:
        for j in range(m):
            out[s0 + j] = 0
        for k in range(nplanes):
            qk = _plane_bytes(section, starts, coded, slot, scratch, k, s0, s1)
            sh = np.uint64(8 * k)
            for j in range(m):
                out[s0 + j] |= np.uint64(qk[j]) << sh
        for j in range(m):
            t = np.uint64(out[s0 + j])
            out[s0 + j] = (t >> np.uint64(1)) | ((t & np.uint64(1)) << np.uint64(63))


@njit(parallel=True, cache=True, nogil=True)
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


@njit(parallel=True, cache=True, nogil=True)
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
decode_dense_serial = njit(cache=True, nogil=True)(decode_dense.py_func)
decode_sparse_serial = njit(cache=True, nogil=True)(decode_sparse.py_func)
decode_planes_serial = njit(cache=True, nogil=True)(decode_planes.py_func)
encode_lanes_serial = njit(cache=True, nogil=True)(encode_lanes.py_func)
lane_bits_serial = njit(cache=True, nogil=True)(lane_bits.py_func)
scale_rows_serial = njit(cache=True, nogil=True)(scale_rows.py_func)
scale_periodic_serial = njit(cache=True, nogil=True)(scale_periodic.py_func)


def threads() -> int:
    """Threads numba's parallel kernels run on."""
    import numba

    return numba.get_num_threads()


def pick(parallel_kernel, serial_kernel, n: int):
    """The parallel kernel for n >= PARALLEL_MIN_SYMBOLS symbols, else the serial one."""
    return parallel_kernel if n >= PARALLEL_MIN_SYMBOLS else serial_kernel


# ---------------------------------------------------------------- many small tensors in one call
# decode.decode_records lays out one row of REC_* columns per tensor; decode_records decodes them all
REC_ENC, REC_START, REC_LENGTH, REC_NUMEL, REC_WIDTH, REC_MASK, REC_LANE, REC_ALPHABET, REC_GAPS, REC_ENTRIES, \
    REC_NONZEROS, REC_OUT, REC_CODED, REC_VALUES, REC_NVALUES, REC_BOOL, REC_NPARTS, REC_PARTS = range(18)
REC_COLUMNS = REC_PARTS + 8  # up to 8 part lengths, in layout order
REC_RAW, REC_DENSE, REC_SPARSE, REC_PLANES = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def _parse_stream(sec, s0, size, n, alphabet, lane_size, lane_offsets, table):
    """streams.parse_stream's checks of one stream part (n > 0 symbols; ``sec[s0 : s0 + size]``) and its
    decode table: fills lane_offsets (ceil(n / lane_size)) and table (>= 2^15 entries, entry = length << 9
    | symbol, as huffman.decode_table); returns (table bits, payload start, payload size), bits -1 when
    anything is wrong (the caller then decodes the tensor with decode.decode_tensor, whose error names it)."""
    nl = (n + lane_size - 1) // lane_size
    lt = (alphabet + 1) // 2
    la = (lt + 7) // 8 * 8
    prefix = la + 8 * nl
    if size < prefix:
        return -1, 0, 0
    count = np.zeros(16, np.int64)
    nxt = np.zeros(16, np.int64)
    maxlen = 0
    single = -1
    kraft = 0
    if alphabet % 2 == 1 and (np.int64(sec[s0 + lt - 1]) & 15) != 0:  # the unused low nibble
        return -1, 0, 0
    for sym in range(alphabet):
        b = np.int64(sec[s0 + (sym >> 1)])
        ln = (b >> 4) if sym % 2 == 0 else (b & 15)
        if ln > 0:
            count[ln] += 1
            single = sym
            if ln > maxlen:
                maxlen = ln
            kraft += 1 << (15 - ln)
    used = count.sum()
    if used == 0:
        return -1, 0, 0
    for i in range(lt, la):
        if sec[s0 + i] != 0:
            return -1, 0, 0
    payload = size - prefix
    prev = np.int64(0)
    for l in range(nl):
        at = s0 + la + 8 * l
        hi = np.int64(sec[at + 7])
        if hi >= 128:
            return -1, 0, 0
        o = hi
        for j in range(6, -1, -1):
            o = (o << 8) | np.int64(sec[at + j])
        if (l == 0 and o != 0) or o < prev or o > payload:
            return -1, 0, 0
        lane_offsets[l] = o
        prev = o
    if used == 1:
        b = np.int64(sec[s0 + (single >> 1)])
        if ((b >> 4) if single % 2 == 0 else (b & 15)) != 1:
            return -1, 0, 0
        table[0] = single
        return 0, s0 + prefix, payload
    if kraft != 1 << 15:
        return -1, 0, 0
    for ln in range(1, 16):
        nxt[ln] = (nxt[ln - 1] + count[ln - 1]) << 1 if ln > 1 else 0
    for sym in range(alphabet):
        b = np.int64(sec[s0 + (sym >> 1)])
        ln = (b >> 4) if sym % 2 == 0 else (b & 15)
        if ln > 0:
            c = nxt[ln]
            nxt[ln] += 1
            span = 1 << (maxlen - ln)
            e = (ln << 9) | sym
            for t in range(c * span, (c + 1) * span):
                table[t] = e
    return maxlen, s0 + prefix, payload


@njit(inline="always")
def _nonzeros(a, mask):
    """Elements of ``a`` (bit patterns) with a bit of ``mask`` set: np.count_nonzero of the values (mask
    without the sign bit for floats: -0.0 is zero, NaN is not)."""
    c = 0
    for i in range(a.size):
        if a[i] & mask:
            c += 1
    return c


@njit(cache=True, nogil=True)
def decode_records(buf, rec, vals, out8, out16, out32, out64, outw, raw, status):
    """Decode the tensors of ``rec`` (one row of REC_* columns each) from their sections in ``buf`` into
    ``out*`` (one buffer seen as 8/16/32/64-bit elements; tensor t's bytes from rec[t, REC_OUT], a multiple
    of 8), one tensor after another: the raw ones (copied) if ``raw``, and the codebook-dense/-sparse and
    float-planes ones whose elements have ``outw``'s width (``outw`` is one of out16/32/64; their values in
    vals[REC_VALUES:][:REC_NVALUES]; the caller calls once per width present, so that numba compiles the
    stream decoders for the widths a file has, not all three), each checked as decode.decode_tensor checks
    it (zero padding between parts, stream headers, lane ends, the count of non-zero elements unless
    REC_NONZEROS is -1, bool bytes 0 or 1). status[t] = 0, or 1 when anything is wrong: the caller decodes
    that tensor with decode.decode_tensor, which raises the error naming it. The work of decode_tensor
    without its Python: ~50 us a small tensor down to ~1 us plus the decoding."""
    _decode_range(buf, rec, vals, out8, out16, out32, out64, outw, raw, status, 0, rec.shape[0])


@njit(parallel=True, cache=True, nogil=True)
def decode_records_parallel(buf, rec, vals, out8, out16, out32, out64, outw, raw, status, bounds):
    """decode_records with the tensors cut into runs (run g: rec[bounds[g] : bounds[g + 1]]), the runs
    decoded in parallel, each by one thread with its own scratch tables."""
    for g in prange(bounds.size - 1):
        _decode_range(buf, rec, vals, out8, out16, out32, out64, outw, raw, status, bounds[g], bounds[g + 1])


@njit(cache=True, nogil=True)
def _decode_range(buf, rec, vals, out8, out16, out32, out64, outw, raw, status, t0, t1):
    """decode_records for tensors t0 .. t1 - 1."""
    tables = np.empty((2, 1 << 15), np.uint16)
    ptables = np.empty((8, 1 << PLANE_TABLE_BITS), np.uint16)
    pairs = np.empty((8, 1 << PAIR_MAX_BITS), np.uint32)
    pos_ = np.zeros(8, np.int64)
    W = outw.itemsize
    for t in range(t0, t1):
        r = rec[t]
        enc = r[REC_ENC]
        w = r[REC_WIDTH]
        if (enc == REC_RAW and not raw) or (enc != REC_RAW and w != W):
            continue
        s0 = r[REC_START]
        length = r[REC_LENGTH]
        sec = buf[s0 : s0 + length]
        n = r[REC_NUMEL]
        o = r[REC_OUT]
        mask = np.uint64(r[REC_MASK])
        bad = False
        pos = 0
        np_ = r[REC_NPARTS]
        for k in range(np_):  # parts at multiples of 8, zero padding between them (decode.split_parts)
            start = (pos + 7) // 8 * 8
            if start > length:
                bad = True
                break
            for i in range(pos, start):
                if sec[i] != 0:
                    bad = True
            pos_[k] = start
            pos = start + r[REC_PARTS + k]
        if bad or pos > length:
            status[t] = 1
            continue
        found = 0
        ow = outw[o // W : o // W + n]  # the tensor's elements (coded encodings)
        if enc == REC_RAW:
            nb = n * w
            if r[REC_PARTS] != nb:
                status[t] = 1
                continue
            out8[o : o + nb] = sec[0:nb]
            if w == 1:
                found = _nonzeros(out8[o : o + n], mask)
                if r[REC_BOOL]:
                    for i in range(o, o + n):
                        if out8[i] > 1:
                            bad = True
            elif w == 2:
                found = _nonzeros(out16[o // 2 : o // 2 + n], mask)
            elif w == 4:
                found = _nonzeros(out32[o // 4 : o // 4 + n], mask)
            else:
                found = _nonzeros(out64[o // 8 : o // 8 + n], mask)
        elif enc == REC_PLANES:
            coded = np.zeros(w, np.bool_)
            starts = np.empty(w, np.int64)
            sizes = np.empty(w, np.int64)
            for k in range(w):
                coded[k] = (r[REC_CODED] >> k) & 1
                starts[k] = pos_[k]
                sizes[k] = r[REC_PARTS + k]
            nl = (n + r[REC_LANE] - 1) // r[REC_LANE]
            lane_offsets = np.zeros((w, nl), np.int64)
            tbits = np.zeros(w, np.int64)
            pstarts = np.zeros(w, np.int64)
            psizes = np.zeros(w, np.int64)
            if parse_plane_streams(sec, coded, starts, sizes, n, r[REC_LANE], lane_offsets, ptables, pairs, tbits,
                                   pstarts, psizes):
                status[t] = 1
                continue
            st = decode_planes_serial(sec, coded, pstarts, psizes, lane_offsets, ptables, pairs, tbits, n,
                                      r[REC_LANE], 8 * W, ow)
            found = _nonzeros(ow, mask)
            bad = st.any()
        else:
            lane = r[REC_LANE]
            m = n if enc == REC_DENSE else r[REC_ENTRIES]
            nl = (m + lane - 1) // lane
            last = np_ - 1  # the index stream is the last part
            if m == 0:  # a sparse tensor of no entries: all zeros, empty streams and lane bases
                if r[REC_PARTS + last] or r[REC_PARTS + last - 1] or r[REC_PARTS + last - 2]:
                    status[t] = 1
                    continue
                ow[:] = 0
                if r[REC_NONZEROS] > 0:
                    status[t] = 1
                continue
            ioffs = np.empty(nl, np.int64)
            ib, ip, isz = _parse_stream(sec, pos_[last], r[REC_PARTS + last], m, r[REC_ALPHABET], lane, ioffs,
                                        tables[0])
            if ib < 0:
                status[t] = 1
                continue
            v = vals[r[REC_VALUES] : r[REC_VALUES] + r[REC_NVALUES]]
            if enc == REC_DENSE:
                st = decode_dense_serial(sec[ip : ip + isz], ioffs, tables[0], ib, n, lane, v, ow)
            else:
                goffs = np.empty(nl, np.int64)
                gb, gp, gsz = _parse_stream(sec, pos_[last - 1], r[REC_PARTS + last - 1], m, r[REC_GAPS], lane,
                                            goffs, tables[1])
                bp = pos_[last - 2]
                if gb < 0 or r[REC_PARTS + last - 2] != 8 * nl:
                    status[t] = 1
                    continue
                bases = np.empty(nl, np.int64)
                for l in range(nl):
                    hi = np.int64(sec[bp + 8 * l + 7])
                    b = hi
                    for j in range(6, -1, -1):
                        b = (b << 8) | np.int64(sec[bp + 8 * l + j])
                    if hi >= 128 or b > n or (l == 0 and b != 0):  # decode.lane_bases
                        bad = True
                    bases[l] = b
                if bad:
                    status[t] = 1
                    continue
                ow[:] = 0
                st = decode_sparse_serial(sec[gp : gp + gsz], goffs, tables[1], gb, sec[ip : ip + isz], ioffs,
                                          tables[0], ib, m, lane, bases, n, v, ow)
            found = _nonzeros(ow, mask)
            bad = st.any()
        if bad or (r[REC_NONZEROS] >= 0 and found != r[REC_NONZEROS]):
            status[t] = 1

"""Lane decoding in numpy: the results of kernels.py's decoders, bit for bit, without numba.

Starting numba in a fresh process costs 1-2 s (its import, then loading each cached kernel),
more than decoding a small model takes. This decoder takes the lanes of every Huffman stream
of many tensors at once and advances all of them in lockstep, one numpy operation per step
over all of them: a step costs a few microseconds plus a few ns per lane. Lanes longer than
SPEC_CHUNK symbols are cut into chunks that start at guessed bit positions and are decoded
together (:func:`_speculate`: ~16x more walkers, ~16x fewer steps), then joined where one
chunk's codes meet the next chunk's; a lane that this cannot prove right (a damaged one, a
code that never resynchronises) is decoded symbol by symbol (:func:`_lockstep`). A batch of
small tensors, or a few large ones, decodes in about SPEC_CHUNK x (a few us) plus ~10-20 ns
per symbol. :mod:`dcformat.decode` picks it for a batch when numba is not imported yet and
the batch is small enough (``decode.NUMPY_MAX_SYMBOLS``).

Reads follow the kernels: a lane may read ahead into the next lane's bytes, past its payload
it sees zero bits; the same status codes per lane (kernels.STATUS_*), so a broken file gets
the same error from either decoder (tests/test_npdecode.py checks both on the hostile files).
"""

from __future__ import annotations

import numpy as np

from .constants import DTYPES, ENC_CB_DENSE, ENC_CB_SPARSE, ENC_FLOAT_PLANES, PLANE_ALPHABET, PLANE_HUFFMAN, UINT_OF_SIZE
from .errors import DczError, HuffmanError, TensorError
from .streams import parse_stream, raise_lane_error

STATUS_OVERRUN, STATUS_UNDERRUN, STATUS_PADDING, STATUS_OUT_OF_TENSOR, STATUS_BASE_MISMATCH = 1, 2, 3, 4, 5
INDEX_STREAM = 16  # as kernels.INDEX_STREAM
STATUS_TEXT = {  # as kernels.STATUS_TEXT (tests/test_npdecode.py checks), here to be read without numba
    STATUS_OVERRUN: "codes run past the end of the lane",
    STATUS_UNDERRUN: "the lane has unused trailing bytes",
    STATUS_PADDING: "padding bits after the last code are not zero",
    STATUS_OUT_OF_TENSOR: "a gap points past the end of the tensor",
    STATUS_BASE_MISMATCH: "the lane does not end where the next lane's base says",
}
WINDOW_BITS = 64  # a step reads 8 bytes: up to 7 bits of offset and then whole codes


def decode_streams(jobs, speculate: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode the symbols of many streams together.

    ``jobs``: (streams.Stream, n symbols, lane_size) each, n > 0. Returns, for each, the
    decode-table entries of its n symbols (uint16: ``(length << 9) | symbol``), in stream
    order, and the bit position (from the start of its payload) where each lane's codes end.

    The entries of all streams go to one array (the views returned share it), each lane's at its
    place. Lanes are decoded in chunks (:func:`_speculate`), and those it cannot prove right (a
    damaged lane, a code that does not resynchronise) symbol by symbol (:func:`_lockstep`), so
    the result is always that of decoding each lane from its start. ``speculate=False``: every
    lane symbol by symbol (the reference the tests compare with).
    """
    k = len(jobs)
    sizes = [s.payload.size for s, _, _ in jobs]
    pstart = np.zeros(k + 1, np.int64)
    np.cumsum(np.asarray(sizes, np.int64) + 8, out=pstart[1:])  # 8 zero bytes after each payload
    buf = np.zeros(int(pstart[-1]) + 8, np.uint8)
    tables = [s.table for s, _, _ in jobs]
    toffs = np.zeros(k + 1, np.int64)
    np.cumsum([t.size for t in tables], out=toffs[1:])
    table = np.concatenate(tables).astype(np.uint16)
    soffs = np.zeros(k + 1, np.int64)  # where each stream's entries start in the output
    np.cumsum([n for _, n, _ in jobs], out=soffs[1:])
    lane_pos, lane_end, lane_lim, lane_cnt, lane_tb, lane_toff, lane_out, lane_gcd = [], [], [], [], [], [], [], []
    for i, (s, n, lane_size) in enumerate(jobs):
        at = int(pstart[i])
        buf[at : at + sizes[i]] = s.payload
        nl = s.lane_offsets.size
        lane_pos.append((at + s.lane_offsets) * 8)
        end = np.empty(nl, np.int64)
        end[:-1] = s.lane_offsets[1:]
        end[-1] = sizes[i]
        lane_end.append((at + end) * 8)
        cnt = np.full(nl, lane_size, np.int64)
        cnt[-1] = n - (nl - 1) * lane_size
        lane_cnt.append(cnt)
        lane_lim.append(np.full(nl, at + sizes[i], np.int64))
        lane_tb.append(np.full(nl, s.table_bits, np.int64))
        lane_toff.append(np.full(nl, toffs[i], np.int64))
        lane_out.append(soffs[i] + np.arange(nl, dtype=np.int64) * lane_size)
        # codes start only at multiples of the code lengths' gcd from the lane's start (a fixed-length
        # code's: of its length): chunks start at such bits, or they could never meet the true codes
        lengths = np.unique(s.table >> 9) if s.table_bits else np.ones(1, np.uint16)
        lane_gcd.append(np.full(nl, int(np.gcd.reduce(lengths.astype(np.int64))), np.int64))
    lanes = _Lanes(np.concatenate(lane_pos), np.concatenate(lane_lim), np.concatenate(lane_tb),
                   np.concatenate(lane_toff), np.concatenate(lane_cnt), np.concatenate(lane_out))
    win = np.ndarray((buf.size - 7,), ">u8", buf, 0, (1,))  # the 8 bytes from each byte on, big-endian
    out = np.empty(int(soffs[-1]), np.uint16)
    ends = np.full(lanes.pos.size, -1, np.int64)
    lane_end, lane_gcd = np.concatenate(lane_end), np.concatenate(lane_gcd)
    # lanes whose chunks did not all meet are tried again with other cuts and a wider search, then in
    # short chunks with a long overrun (a lane fails where one of its cuts lands on a stretch the next
    # chunk's codes take long to meet, or where code lengths change along it so that a chunk holds far
    # more symbols than its share; PP-OCRv4 rec left 16384-symbol lanes to _lockstep: 180 ms)
    retry = (RETRY_EXTRA, RETRY_SYNC, RETRY_SYNC_NEXT)
    tries = ((SPEC_CHUNK, None), (SPEC_CHUNK * 5 // 8, retry), (SPEC_CHUNK // 8, retry)) if speculate else ()
    rest = np.arange(lanes.pos.size)
    for first_chunk, search in tries:
        if rest.size == 0:
            break
        got = np.full(rest.size, -1, np.int64)
        _speculate(win, table, lanes.take(rest), lane_end[rest], lane_gcd[rest], out, got,
                   first_chunk=max(1, first_chunk), search=search)
        ends[rest] = got
        rest = rest[got < 0]
    if rest.size:
        ends[rest] = _lockstep(win, table, lanes.take(rest), out)
    results = []
    first = 0
    for i, (s, n, _) in enumerate(jobs):
        nl = s.lane_offsets.size
        results.append((out[soffs[i] : soffs[i + 1]], ends[first : first + nl] - int(pstart[i]) * 8))
        first += nl
    return results


class _Lanes:
    """Decoders' state, one entry per lane (or chunk): bit position in the joined buffer, the byte
    reads stop at (its payload's end), decode-table bits and offset, symbols to decode, and where
    in the output the next entry goes."""

    def __init__(self, pos, lim, tb, toff, cnt, ptr):
        self.pos, self.lim, self.tb, self.toff, self.cnt, self.ptr = pos, lim, tb, toff, cnt, ptr

    def take(self, idx) -> "_Lanes":
        return _Lanes(*(a[idx] for a in (self.pos, self.lim, self.tb, self.toff, self.cnt, self.ptr)))


def _steps(win, table, lanes: _Lanes, steps: int, active, rows=None, ptr=None, out=None):
    """Advance lanes in lockstep for ``steps`` symbols, one numpy operation per step over all of them.

    The lanes must be sorted by ``cnt``, longest first; ``active[j]``: how many have more than j
    symbols (a prefix). The decode-table entries of step j go to ``rows[j]`` (all lanes active
    throughout), or to ``out`` at ``ptr`` (each lane's next place, advanced). Returns the bit
    position where each lane stopped."""
    pos = lanes.pos.copy()
    rs = WINDOW_BITS - lanes.tb
    mask = (np.int64(1) << lanes.tb) - 1
    per_window = max(1, (WINDOW_BITS - 7) // max(1, int(lanes.tb.max(initial=0))))
    ebuf = np.empty(pos.size, np.uint16)
    lbuf = np.empty(pos.size, np.int64)
    j = 0
    while j < steps:
        a0 = int(active[j])
        p = pos[:a0]
        byte = p >> 3
        np.minimum(byte, lanes.lim[:a0], out=byte)
        w = win[byte].astype(np.int64)  # arithmetic shifts: the bits kept below are the same
        sh = sh0 = rs[:a0] - (p & 7)  # w >> sh puts the next code's bits lowest; sh0: all a0 lanes
        m, t, e, ln = mask[:a0], lanes.toff[:a0], ebuf[:a0], lbuf[:a0]
        pt = None if ptr is None else ptr[:a0]
        idx = np.empty(a0, np.int64)
        a1 = a0
        for q in range(min(per_window, steps - j)):
            a = int(active[j + q])
            if a < a1:  # lanes that have all their symbols drop out (the rest are a prefix)
                w, sh, m, t, idx, e, ln = w[:a], sh[:a], m[:a], t[:a], idx[:a], e[:a], ln[:a]
                pt = None if pt is None else pt[:a]
                a1 = a
            np.right_shift(w, sh, out=idx)
            idx &= m
            idx += t
            if rows is not None:
                e = rows[j + q]
            table.take(idx, out=e)
            if pt is not None:
                out.put(pt, e)
                pt += 1
            np.right_shift(e, 9, out=ln)
            sh -= ln
        pos[:a0] = p - (p & 7) + rs[:a0] - sh0
        j += per_window
    return pos


def _lockstep(win, table, lanes: _Lanes, out) -> np.ndarray:
    """Decode whole lanes symbol by symbol into ``out`` (each lane's entries from ``lanes.ptr`` on);
    returns the bit position where each lane's codes end."""
    order = np.argsort(-lanes.cnt, kind="stable")  # longest lanes first: the lanes still going are a prefix
    ls = lanes.take(order)
    steps = int(ls.cnt[0])
    active = ls.cnt.size - np.searchsorted(ls.cnt[::-1], np.arange(steps), side="right")
    end = _steps(win, table, ls, steps, active, ptr=ls.ptr.copy(), out=out)
    ends = np.empty(end.size, np.int64)
    ends[order] = end
    return ends


SPEC_CHUNK = 1024  # symbols per chunk of a lane decoded speculatively (at least; doubled up to
SPEC_MAX_CHUNK = 4096  # this while there would be more than SPEC_WALKERS chunks: wider steps than that
SPEC_WALKERS = 4096  # run out of cache (8.2M symbols: 0.17-0.2 s in 8k chunks of 1024, 0.12-0.19 s in 4k)
SPEC_EXTRA = 64  # symbols a chunk decodes past its share: room for codes shorter than the lane's average
SPEC_SYNC = 48  # codes of a chunk past the next chunk's first bit searched for one the next chunk also has
SPEC_SYNC_NEXT = 192  # among the next chunk's first codes (else the lane is tried again, then _lockstep)
# The second try, for the lanes the first left: other cuts (chunks of 5/8 the size) and a wider search.
# Near-uniform codes (a 256-entry codebook's 7/8-bit indices) resynchronise slowly: with the first try
# alone most long lanes of PP-OCR cls, Silero VAD and Magika fell back to _lockstep (43 of 47 on Magika:
# 189 ms; the wider search for all lanes: 46 ms, but 33 -> 50 ms on a 9.2M-parameter MLP whose codes meet
# at once: measured by decoding those files with DCZ_DECODER=numpy).
RETRY_EXTRA, RETRY_SYNC, RETRY_SYNC_NEXT = 256, 224, 512
assert (SPEC_MAX_CHUNK + max(SPEC_EXTRA, RETRY_EXTRA)) * 15 < 1 << 16  # positions within a chunk fit uint16


def _speculate(win, table, lanes: _Lanes, lane_end, lane_gcd, out, ends, first_chunk: int | None = None,
               search: tuple[int, int, int] | None = None) -> None:
    """Decode long lanes in chunks that start at guessed bit positions, all chunks in lockstep.

    Lane l of n_l symbols is cut at bit positions into C_l = ceil(n_l / chunk) chunks (at multiples of
    the gcd of the code's lengths from the lane's first bit: the only places codes can start); each
    chunk decodes K symbols from its first bit as if a code started there. Chunk 0 starts where the lane
    does, so it is right. Decoding is a function of the bit position: once chunk c has a code at a
    position where the lane's true decoding (from its start) has one, both decode the same codes
    from there on. So the lane's entries are chunk 0's up to its first code at or past chunk 1's
    first bit, then chunk 1's from that code on (if chunk 1 has a code starting exactly there), and
    so on; the last chunk gives what the lane still lacks of its n_l. A lane where any of this fails
    (a chunk that does not meet the true codes, one that stops short, too few symbols: a damaged
    lane) is left to :func:`_lockstep` (``ends`` stays -1); for the others their entries are written
    to ``out`` and their end bits to ``ends``. ``first_chunk``: the chunk size before doubling
    (default SPEC_CHUNK; lanes of at most that many symbols are left alone); ``search``: (symbols
    decoded past a chunk's share, codes searched, codes of the next chunk searched among), by default
    (SPEC_EXTRA, SPEC_SYNC, SPEC_SYNC_NEXT)."""
    first_chunk = SPEC_CHUNK if first_chunk is None else first_chunk
    search = (SPEC_EXTRA, SPEC_SYNC, SPEC_SYNC_NEXT) if search is None else search
    cand = np.flatnonzero((lanes.tb > 0) & (lanes.cnt > first_chunk))
    if cand.size == 0:
        return
    chunk = first_chunk
    while chunk < SPEC_MAX_CHUNK and int(lanes.cnt[cand].sum()) > SPEC_WALKERS * chunk:
        chunk = min(2 * chunk, SPEC_MAX_CHUNK)
    nc = -(-lanes.cnt[cand] // chunk)  # chunks per lane, >= 2
    # groups of lanes of at most SPEC_WALKERS chunks (one lane at least): no wider steps, and scratch
    # memory (~6 bytes a symbol) bounded by a group's
    group = np.cumsum(nc) // SPEC_WALKERS
    cuts = np.flatnonzero(np.diff(group)) + 1
    groups = np.split(np.arange(cand.size), cuts)
    most = max(int(nc[g].sum()) for g in groups) * (chunk + search[0] + 1)
    scratch = [np.empty(most, np.uint16) for _ in range(3)]  # one set of buffers for every group
    for g in groups:
        _speculate_lanes(win, table, lanes, lane_end, lane_gcd, cand[g], nc[g], chunk, out, ends, scratch, *search)


def _speculate_lanes(win, table, lanes: _Lanes, lane_end, lane_gcd, cand, nc, chunk, out, ends, scratch,
                     extra, sync, sync_next) -> None:
    """:func:`_speculate` for the lanes ``cand``, in ``nc`` chunks each (of about ``chunk`` symbols);
    ``scratch``: three uint16 buffers of at least (chunks) x (chunk + extra + 1) entries; ``extra``,
    ``sync``, ``sync_next``: :func:`_speculate`'s ``search``."""
    ls = lanes.take(cand)
    b0, b1 = ls.pos, np.maximum(lane_end[cand], ls.pos)
    K = chunk + extra  # K * 15 bits < 2^16: positions within a chunk fit uint16
    first = np.zeros(cand.size + 1, np.int64)
    np.cumsum(nc, out=first[1:])
    W = int(first[-1])
    lane_of = np.repeat(np.arange(cand.size), nc)
    c_of = np.arange(W) - first[lane_of]
    g = lane_gcd[cand][lane_of]
    start = b0[lane_of] + (b1 - b0)[lane_of] * c_of // nc[lane_of] // g * g  # each chunk's first bit
    ch = _Lanes(start, ls.lim[lane_of], ls.tb[lane_of], ls.toff[lane_of], np.full(W, K, np.int64), None)
    E0 = scratch[0][: K * W].reshape(K, W)  # E0[j, w]: entry j of chunk w (rows: contiguous stores)
    _steps(win, table, ch, K, np.full(K, W, np.int64), rows=E0)
    S = scratch[1][: (K + 1) * W].reshape(K + 1, W)  # S[j, w]: first bit of entry j of chunk w, from its first bit
    S[0] = 0
    np.right_shift(E0, 9, out=S[1:])  # code lengths, summed down each column (at most K * 15 < 2^16)
    for j in range(1, K + 1):  # row by row: ~4x faster than numpy's cumsum along axis 0
        np.add(S[j - 1], S[j], out=S[j])
    # each chunk's first code at or past the next chunk's first bit (K + 1: it does not get there)
    gap = np.zeros(W, np.int64)
    gap[:-1] = start[1:] - start[:-1]
    cols = np.arange(W)
    lo, hi = np.zeros(W, np.int64), np.full(W, K + 1, np.int64)
    while (going := lo < hi).any():  # a binary search down each column (increasing: every code has >= 1 bit)
        mid = (lo + hi) >> 1  # <= K while lo < hi
        below = S[np.minimum(mid, K), cols] < gap
        lo, hi = np.where(going & below, mid + 1, lo), np.where(going & ~below, mid, hi)
    reach = lo
    E = scratch[2][: W * K].reshape(W, K)  # a chunk's entries in a row (transposed by blocks: cache-friendly)
    for r in range(0, K, 64):
        E[:, r : r + 64] = E0[r : r + 64].T
    nl = cand.size
    k = np.zeros(nl, np.int64)  # where the true codes start in the lane's current chunk
    taken = np.zeros(nl, np.int64)  # entries the lane has from its chunks before the current one
    ok = np.ones(nl, bool)
    seg_w, seg_a, seg_b, seg_to = [], [], [], []
    for c in range(int(nc.max())):
        here = np.flatnonzero(ok & (nc > c))
        if here.size == 0:
            break
        w = first[here] + c
        kh = k[here]
        last = nc[here] == c + 1
        # the last chunk: what the lane still lacks of its n_l entries
        fin = np.flatnonzero(last)
        need = kh[fin] + ls.cnt[here[fin]] - taken[here[fin]]
        good = (need >= kh[fin]) & (need <= K)
        wf = w[fin]
        ends[cand[here[fin[good]]]] = start[wf[good]] + S[need[good], wf[good]]
        seg_w.append(wf[good])
        seg_a.append(kh[fin[good]])
        seg_b.append(need[good])
        seg_to.append(ls.ptr[here[fin[good]]] + taken[here[fin[good]]])
        ok[here[fin[~good]]] = False
        # other chunks: up to the first of their codes at or past the next chunk's first bit that is also
        # a code of the next chunk (a flat search: keys are column << 20 | bit from the next chunk's start)
        inner = np.flatnonzero(~last)
        if inner.size == 0:
            continue
        wm, hm, km = w[inner], here[inner], kh[inner]
        cm = np.arange(inner.size)
        i = np.maximum(reach[wm], km)  # this chunk's first (true) code at or past the next chunk's first bit
        rows = np.minimum(i[None, :] + np.arange(sync)[:, None], K)  # (sync, lanes)
        q = S[rows, wm[None, :]].astype(np.int64) - gap[wm][None, :]  # their bits from the next chunk's first bit
        nxt = S[:sync_next, wm + 1].astype(np.int64)  # the next chunk's first codes
        flat = ((cm.astype(np.int64) << 20)[None, :] + nxt).T.ravel()  # sorted: by lane, then position
        qk = (cm.astype(np.int64) << 20)[None, :] + q
        at = np.searchsorted(flat, qk)
        hit = (flat[np.minimum(at, flat.size - 1)] == qk) & (q >= 0) & (q < 1 << 16)  # keys of this lane only
        found = hit.any(axis=0)
        first_hit = hit.argmax(axis=0)
        jstar = rows[first_hit, cm]  # this chunk's entries end at its first code the next chunk also has
        k2 = at[first_hit, cm] - cm * nxt.shape[0]  # where that code is in the next chunk
        found &= (k2 >= 0) & (k2 < K)
        g = np.flatnonzero(found)
        seg_w.append(wm[g])
        seg_a.append(km[g])
        seg_b.append(jstar[g])
        seg_to.append(ls.ptr[hm[g]] + taken[hm[g]])
        taken[hm[g]] += jstar[g] - km[g]
        k[hm[g]] = k2[g]
        ok[hm[~found]] = False
    seg_w, seg_a, seg_b, seg_to = (np.concatenate(x) for x in (seg_w, seg_a, seg_b, seg_to))
    keep = ok[lane_of[seg_w]]
    for w, a, b, to in zip(*(x[keep].tolist() for x in (seg_w, seg_a, seg_b, seg_to))):
        out[to : to + b - a] = E[w, a:b]
    ends[cand[~ok]] = -1


def lane_end_status(payload: np.ndarray, bit: np.ndarray, lane_offsets: np.ndarray) -> np.ndarray:
    """kernels._lane_end_status for every lane: did it end exactly at its last byte, zero-padded?"""
    nl = lane_offsets.size
    end = np.empty(nl, np.int64)
    end[:-1] = lane_offsets[1:]
    end[-1] = payload.size
    endbit = end * 8
    st = np.zeros(nl, np.int64)
    partial = bit < endbit
    if partial.any():
        rem = 8 - (bit & 7)
        at = np.minimum(bit >> 3, max(payload.size - 1, 0))
        byte = payload[at].astype(np.int64) if payload.size else np.zeros(nl, np.int64)
        st[partial & ((byte & ((np.int64(1) << rem) - 1)) != 0)] = STATUS_PADDING
    st[endbit - bit >= 8] = STATUS_UNDERRUN
    st[bit > endbit] = STATUS_OVERRUN
    return st


ENTRIES = 16 << 9  # decode-table entries are (length << 9) | symbol, length <= 15: all below this


def entry_values(values: np.ndarray) -> np.ndarray:
    """``values`` indexed by decode-table entry (values[entry & 511]), so that one take maps entries to values.
    Entries of symbols past ``values`` never occur (a stream's alphabet is its codebook's size)."""
    return values[np.minimum(np.arange(ENTRIES) & 511, values.size - 1)]


def dense(decoded, s, values, out) -> np.ndarray:
    """kernels.decode_dense from decode_streams' result for stream ``s``: out[i] = values[symbol i]; the lane statuses."""
    syms, ends = decoded
    entry_values(values).take(syms, out=out, mode="clip")  # clip: no bounds buffer (every entry is in range)
    return lane_end_status(s.payload, ends, s.lane_offsets)


def sparse(gdec, idec, g, s, m, lane_size, bases, numel, values, out) -> tuple[np.ndarray, np.ndarray | None]:
    """kernels.decode_sparse from decode_streams' results for the gap and index streams: the lane
    statuses and, when they are all 0, the m values written into ``out`` (zeroed; None otherwise)."""
    gsyms, gends = gdec
    isyms, iends = idec
    nl = g.lane_offsets.size
    # position of entry i: its lane's base + the gaps and entries before it in the lane, + its gap; one
    # cumulative sum per lane (full lanes as the rows of a 2-D view), int32 where no sum can reach 2^31
    pdt = np.int32 if numel + lane_size * 512 < 2**31 else np.int64
    p = np.empty(m, pdt)
    np.bitwise_and(gsyms, 511, out=p)
    p += 1
    nfull = m // lane_size
    full = p[: nfull * lane_size].reshape(nfull, lane_size)
    np.cumsum(full, axis=1, out=full)
    full += (bases[:nfull] - 1).astype(pdt)[:, None]
    if nfull < nl:
        tail = p[nfull * lane_size :]
        np.cumsum(tail, out=tail)
        tail += pdt(bases[nfull] - 1)
    last = p[np.minimum(np.arange(1, nl + 1, dtype=np.int64) * lane_size, m) - 1]  # each lane's last position
    st = np.where(last >= numel, STATUS_OUT_OF_TENSOR, 0)  # positions grow within a lane: its last is its largest
    gst = lane_end_status(g.payload, gends, g.lane_offsets)
    ist = lane_end_status(s.payload, iends, s.lane_offsets)
    mismatch = np.zeros(nl, bool)
    mismatch[:-1] = last[:-1] + 1 != bases[1:]
    st = np.where(st != 0, st, np.where(gst != 0, gst, np.where(ist != 0, ist + INDEX_STREAM,
                                                                np.where(mismatch, STATUS_BASE_MISMATCH, 0))))
    if st.any():
        return st, None
    v = entry_values(values).take(isyms, mode="clip")
    out[p] = v  # lanes cover disjoint ranges when every status is 0
    return st, v


def planes(parsed, decoded, section, coded, starts, n, lane_size, width, out) -> np.ndarray:
    """kernels.decode_planes from decode_streams' results for the coded planes (``parsed``: plane -> Stream)."""
    nplanes = coded.size
    nl = (n + lane_size - 1) // lane_size
    status = np.zeros(nl, np.int64)
    t = np.empty((n, nplanes), np.uint8)  # element i's bytes, plane 0 first: little-endian t
    for k in range(nplanes):
        if coded[k]:
            syms, ends = decoded[k]
            s = parsed[k]
            st = lane_end_status(s.payload, ends, s.lane_offsets)
            status = np.where((status == 0) & (st != 0), st + INDEX_STREAM * k, status)
            t[:, k] = syms  # the symbol is the entry's low byte (entry & 255)
        else:
            t[:, k] = section[starts[k] : starts[k] + n]
    u = t.view(out.dtype).reshape(n)  # rotate right by one bit within the width (spec 7.4)
    np.right_shift(u, 1, out=out)
    out |= u << np.array(width - 1, out.dtype)
    return status


# ---------------------------------------------------------------- tensors
def decode_tensors(batch) -> dict[str, np.ndarray]:
    """decode.decode_tensor for each (record, checksum-verified section) of ``batch``, with the lanes of
    all their streams decoded together; the same arrays, and the same first error, as decoding them in turn."""
    from .decode import decode_tensor

    jobs: list = []
    finish: list = []  # (name, array, or a function of the decoded streams that returns it)
    error = None
    for info, section in batch:
        try:
            enc, n = info.encoding, info.numel
            if enc == ENC_CB_DENSE and n or enc == ENC_CB_SPARSE and info.entries or enc == ENC_FLOAT_PLANES and n:
                finish.append((info.name, _prepare(info, section, jobs)))
            else:  # raw, or nothing to decode: no kernel runs
                finish.append((info.name, decode_tensor(info, section)))
        except DczError as e:  # what decoding in turn would raise, once the tensors before it are decoded
            error = e
            break
    decoded = decode_streams(jobs) if jobs else []
    out = {}
    for name, item in finish:
        out[name] = item(decoded) if callable(item) else item
    if error is not None:
        raise error
    return out


def _prepare(info, section, jobs):
    """Parse one tensor's streams (as decode.decode_tensor does), queue them in ``jobs``; returns the
    function that builds the tensor from the decoded streams (and raises what the kernels' statuses say)."""
    from .decode import _checked, _values, apply_scales, lane_bases, read_scales, split_parts
    where = f"tensor {info.name!r}"
    parts = split_parts(info, section, where)
    offs = {k: info.offset + v for k, v in info.part_offsets().items()}
    tdt = DTYPES[info.dtype]
    n = info.numel
    udt = UINT_OF_SIZE[tdt.itemsize]
    first = len(jobs)
    scales, vdt = None, None
    if info.scaled:  # unscaled float32 values first, then the scales (spec 7.5), as decode_tensor does
        scales = read_scales(info, parts["scales"], where, offs["scales"])
        udt, vdt = np.dtype("<u4"), "float32"

    def result(out):
        return out.view(tdt) if scales is None else apply_scales(info, out.view(np.float32), scales)
    if info.encoding == ENC_CB_DENSE:
        s = parse_stream(parts["indices"], n, info.index_alphabet, info.lane_size, where, offs["indices"])
        jobs.append((s, n, info.lane_size))
        values = _values(info, parts["codebook"], False, vdt)

        def dense_done(decoded):
            out = np.empty(n, udt)
            raise_lane_error(dense(decoded[first], s, values, out), where, (("index", s),))
            return _checked(info, result(out), where).reshape(info.shape)

        return dense_done
    if info.encoding == ENC_CB_SPARSE:
        m = info.entries
        g = parse_stream(parts["gaps"], m, 1 << info.gap_bits, info.lane_size, where, offs["gaps"])
        s = parse_stream(parts["indices"], m, info.index_alphabet, info.lane_size, where, offs["indices"])
        bases = lane_bases(parts, offs, n, where)
        jobs += [(g, m, info.lane_size), (s, m, info.lane_size)]
        values = _values(info, parts["codebook"], True, vdt)

        def sparse_done(decoded):
            out = np.zeros(n, udt)
            st, v = sparse(decoded[first], decoded[first + 1], g, s, m, info.lane_size, bases.astype(np.int64), n,
                           values, out)
            raise_lane_error(st, where, (("gap", g), ("index", s)))
            if scales is not None:
                return _checked(info, result(out), where).reshape(info.shape)
            # the elements not written are +0: the written values hold every non-zero one (m, not n, to count)
            return _checked(info, out.view(tdt), where, found=v.view(tdt)).reshape(info.shape)

        return sparse_done
    w = len(info.planes)
    coded = np.array([mode == PLANE_HUFFMAN for mode in info.planes])
    parsed, index = {}, {}
    for k in range(w):  # every coded plane's stream is checked before any lane is decoded (spec 11)
        if coded[k]:
            parsed[k] = parse_stream(parts[f"plane{k}"], n, PLANE_ALPHABET, info.lane_size, where, offs[f"plane{k}"])
    for k, st in parsed.items():
        index[k] = len(jobs)
        jobs.append((st, n, info.lane_size))
    starts = np.array([offs[f"plane{k}"] - info.offset for k in range(w)], np.int64)

    def planes_done(decoded):
        out = np.empty(n, UINT_OF_SIZE[w])
        status = planes(parsed, {k: decoded[i] for k, i in index.items()}, section, coded, starts, n, info.lane_size,
                        8 * w, out)
        bad = np.flatnonzero(status)
        if bad.size:
            lane = int(bad[0])
            k, code = divmod(int(status[lane]), INDEX_STREAM)
            st = parsed[k]
            raise HuffmanError(f"{where}: plane{k} stream lane {lane} (byte {st.payload_at + int(st.lane_offsets[lane])}): "
                               f"{STATUS_TEXT[code]}")
        return _checked(info, out.view(tdt), where).reshape(info.shape)

    return planes_done

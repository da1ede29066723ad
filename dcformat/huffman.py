"""Canonical, length-limited Huffman codes (spec/FORMAT.md, "Huffman streams").

Only code lengths are stored. Codes are assigned canonically: symbols sorted by
(length, symbol value) receive consecutive codes, the code growing by a left shift
whenever the length grows -- the same rule as DEFLATE (RFC 1951, 3.2.2). Bits are
written most-significant first. A code with exactly one used symbol gives that symbol
length 1 in the table and spends zero bits on it.
"""

from __future__ import annotations

import functools

import numpy as np

from .constants import MAX_CODE_LENGTH
from .errors import HuffmanError

_SYM_BITS = 9  # decode table entry: (length << 9) | symbol; symbols < 512


def code_lengths(freqs, max_len: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal code lengths limited to ``max_len`` bits (package-merge), as uint8.

    Unused symbols get length 0. One used symbol gets length 1 (coded with zero bits).
    Ties are broken by symbol value, so the result is deterministic.

    Package-merge (Larmore and Hirschberg): the used symbols, sorted by (count, symbol), are the
    leaves, keyed 0 .. n-1. A list holds the leaves; each of the next max_len - 1 lists is the leaves
    merged with the packages of the list before (items 2j and 2j+1 summed, keyed n + j), ordered by
    (weight, key). A symbol's length is the number of times it occurs in the first 2n - 2 items of the
    last list, packages expanded into their items. Only counts are needed for that: the first m items of
    a list are its first a leaves (they come in leaf order) and its first m - a packages, which expand
    into the first 2(m - a) items of the list before; each of those a leaves adds one to its length.
    So each list is one stable sort of weights and the lengths one pass back over the lists (this
    replaced a version that carried a vector of symbol counts with every item: the same lengths,
    tests/test_huffman_lengths.py, ~100x slower on 256 symbols).
    """
    freqs = np.ascontiguousarray(freqs, dtype=np.int64)
    if freqs.ndim != 1:
        freqs = freqs.reshape(-1)
    # the same counts come back often (a converter's estimates: ~60% of its calls), so the lengths of small
    # alphabets are cached (at most CACHE_ENTRIES x ~4.6 KB)
    if freqs.size <= CACHE_MAX_ALPHABET:
        return _cached_lengths(freqs.tobytes(), max_len).copy()
    return _lengths(freqs.tobytes(), max_len).copy()


CACHE_MAX_ALPHABET = 512
CACHE_ENTRIES = 2048


def _lengths(counts: bytes, max_len: int) -> np.ndarray:
    freqs = np.frombuffer(counts, np.int64)
    lengths = np.zeros(freqs.size, dtype=np.uint8)
    used = np.flatnonzero(freqs > 0)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    n = used.size
    if n > (1 << max_len):
        raise HuffmanError(f"{n} symbols cannot be coded in {max_len} bits")
    order = used[np.lexsort((used, freqs[used]))]  # by (count, symbol)
    leaves = freqs[order]
    merge = _merged_lists_py if n <= SMALL_ALPHABET else _merged_lists
    lists = merge(leaves, max_len)
    repeats = max_len - 1 - len(lists)  # lists after the last one built, all equal to it
    m = 2 * n - 2
    gains = [0] * (n + 1)  # gains[a] += 1: the first a leaves gain one bit
    for k in range(len(lists) - 1, -1, -1):
        leaves_in = lists[k]
        for _ in range(1 + (repeats if k == len(lists) - 1 else 0)):
            a = int(leaves_in[m - 1]) if m else 0
            gains[a] += 1
            m = 2 * (m - a)
    gains[m] += 1  # the first list holds leaves only
    lengths[order] = np.cumsum(gains[::-1])[::-1][1:]  # leaf i: the lists whose first a leaves have a > i
    lengths.flags.writeable = False  # cached: callers get copies
    return lengths


_cached_lengths = functools.lru_cache(maxsize=CACHE_ENTRIES)(_lengths)

SMALL_ALPHABET = 40  # used symbols up to this many: the lists are merged in plain Python (numpy's calls cost more)


def _merged_lists(leaves: np.ndarray, max_len: int) -> list:
    """Per list after the first, the running count of leaves among its items, until a list repeats."""
    n = leaves.size
    lists = []
    current = leaves
    for level in range(max_len - 1):
        packages = current[0 : current.size - 1 : 2] + current[1::2][: current.size // 2]
        weights = np.concatenate((leaves, packages))
        # keys: leaves 0 .. n-1, packages n + j: at equal weight a leaf comes first, then by index
        pick = np.argsort(weights, kind="stable")
        new = weights[pick]
        if level and new.size == current.size and np.array_equal(new, current):
            break  # the same weights make the same packages: every later list is this one
        current = new
        lists.append(np.cumsum(pick < n))
    return lists


def _merged_lists_py(leaves: np.ndarray, max_len: int) -> list:
    """:func:`_merged_lists` for a few symbols: both inputs of each merge are sorted (the packages of a
    sorted list are), so a leaf goes first while it weighs no more than the next package."""
    leaf = [int(x) for x in leaves]
    n = len(leaf)
    lists = []
    current = leaf
    for level in range(max_len - 1):
        packages = [current[j] + current[j + 1] for j in range(0, len(current) - 1, 2)]
        new, counts = [], []
        i = j = c = 0
        while i < n or j < len(packages):
            if j == len(packages) or (i < n and leaf[i] <= packages[j]):
                new.append(leaf[i])
                i += 1
                c += 1
            else:
                new.append(packages[j])
                j += 1
            counts.append(c)
        if level and new == current:
            break
        current = new
        lists.append(counts)
    return lists


def validate_lengths(lengths: np.ndarray, where: str) -> None:
    """Raise HuffmanError unless ``lengths`` describe a complete prefix code."""
    if lengths.size and int(lengths.max()) > MAX_CODE_LENGTH:
        raise HuffmanError(f"{where}: code length {int(lengths.max())} exceeds {MAX_CODE_LENGTH}")
    nz = lengths[lengths > 0]
    if nz.size == 0:
        raise HuffmanError(f"{where}: code has no symbols")
    if nz.size == 1:
        if int(nz[0]) != 1:
            raise HuffmanError(f"{where}: a single-symbol code must have length 1, not {int(nz[0])}")
        return
    kraft = int(np.sum(np.left_shift(1, MAX_CODE_LENGTH - nz.astype(np.int64))))
    if kraft > (1 << MAX_CODE_LENGTH):
        raise HuffmanError(f"{where}: code lengths are over-subscribed (Kraft sum > 1)")
    if kraft < (1 << MAX_CODE_LENGTH):
        raise HuffmanError(f"{where}: code lengths are incomplete (Kraft sum < 1)")


def canonical_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, bit lengths) to encode with; a single-symbol code spends 0 bits."""
    lengths = np.asarray(lengths, dtype=np.uint8)
    codes = np.zeros(lengths.size, dtype=np.int64)
    used = np.flatnonzero(lengths)
    if used.size <= 1:
        return codes, np.zeros(lengths.size, dtype=np.int64)
    order = sorted(used.tolist(), key=lambda s: (int(lengths[s]), s))
    code, prev = 0, int(lengths[order[0]])
    for s in order:
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes, lengths.astype(np.int64)


def decode_table(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """Lookup table indexed by the next ``bits`` bits of a stream.

    Entry = (code length << 9) | symbol. Assumes ``validate_lengths`` passed: the code is
    complete, so the symbols in canonical order (by length, then value) fill the table in
    consecutive runs of 2^(bits - length) entries, built here with one np.repeat.
    """
    lengths = np.asarray(lengths, dtype=np.uint8)
    used = np.flatnonzero(lengths)
    if used.size == 1:
        return np.array([int(used[0])], dtype=np.uint16), 0
    ln = lengths[used].astype(np.int64)
    order = np.lexsort((used, ln))  # canonical order
    ln, sym = ln[order], used[order]
    bits = int(ln[-1])
    table = np.repeat(((ln << _SYM_BITS) | sym).astype(np.uint16), 1 << (bits - ln))
    if table.size != 1 << bits:  # pragma: no cover - validate_lengths rules this out
        raise HuffmanError("code lengths do not form a complete code")
    return table, bits


def coded_bits(freqs: np.ndarray, lengths: np.ndarray) -> int:
    """Payload bits of a stream with these symbol counts (0 for a single-symbol code)."""
    if np.count_nonzero(lengths) <= 1:
        return 0
    return int(np.dot(np.asarray(freqs, np.int64), lengths.astype(np.int64)))

"""Canonical, length-limited Huffman codes (spec/FORMAT.md, "Huffman streams").

Only code lengths are stored. Codes are assigned canonically: symbols sorted by
(length, symbol value) receive consecutive codes, the code growing by a left shift
whenever the length grows -- the same rule as DEFLATE (RFC 1951, 3.2.2). Bits are
written most-significant first. A code with exactly one used symbol gives that symbol
length 1 in the table and spends zero bits on it.
"""

from __future__ import annotations

import numpy as np

from .constants import MAX_CODE_LENGTH
from .errors import HuffmanError

_SYM_BITS = 9  # decode table entry: (length << 9) | symbol; symbols < 512


def code_lengths(freqs, max_len: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal code lengths limited to ``max_len`` bits (package-merge), as uint8.

    Unused symbols get length 0. One used symbol gets length 1 (coded with zero bits).
    Ties are broken by symbol value, so the result is deterministic.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
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
    order = sorted(used.tolist(), key=lambda s: (int(freqs[s]), s))
    # an item is (weight, tie-break key, symbol counts); leaves count one symbol each
    eye = np.eye(n, dtype=np.int32)
    leaves = [(int(freqs[s]), i, eye[i]) for i, s in enumerate(order)]
    current = leaves
    for _ in range(max_len - 1):
        packages = [
            (current[j][0] + current[j + 1][0], n + j, current[j][2] + current[j + 1][2])
            for j in range(0, len(current) - 1, 2)
        ]
        current = sorted(leaves + packages, key=lambda item: (item[0], item[1]))
    counts = np.sum([item[2] for item in current[: 2 * n - 2]], axis=0)
    for i, s in enumerate(order):
        lengths[s] = counts[i]
    return lengths


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

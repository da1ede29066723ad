"""Huffman stream parts: code lengths, lane table and payload (spec/FORMAT.md, "Huffman streams").

Layout of a stream part holding n > 0 symbols of an alphabet of A symbols, cut into
lanes of ``lane_size`` symbols (nl = ceil(n / lane_size) lanes)::

    ceil(A/2) bytes     code length of each symbol (0..15), two per byte: symbol 2i in the
                        high nibble of byte i, symbol 2i+1 in the low nibble (0 if A is odd)
    zero bytes          padding to a multiple of 8
    nl x u64 (LE)       byte offset of each lane's first bit within the payload
    payload             the lanes' codes, MSB first, each lane padded with zero bits to a byte

A stream of n = 0 symbols is an empty part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import huffman
from .constants import INDEX_CODE_LENGTH, LANE_OFFSET_BYTES, MAX_CODE_LENGTH, PART_ALIGNMENT
from .errors import HuffmanError


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def num_lanes(n: int, lane_size: int) -> int:
    return (n + lane_size - 1) // lane_size


def length_table_bytes(alphabet: int) -> int:
    """Bytes of a stream's packed code-length table (two 4-bit lengths per byte)."""
    return (alphabet + 1) // 2


def stream_prefix_bytes(alphabet: int, n: int, lane_size: int) -> int:
    """Bytes before the payload: code lengths, padding, lane table."""
    return align(length_table_bytes(alphabet), 8) + LANE_OFFSET_BYTES * num_lanes(n, lane_size)


def pack_lengths(lengths: np.ndarray) -> np.ndarray:
    padded = np.zeros(2 * length_table_bytes(lengths.size), np.uint8)
    padded[: lengths.size] = lengths
    return (padded[0::2] << 4) | padded[1::2]


def unpack_lengths(packed: np.ndarray, alphabet: int) -> np.ndarray:
    out = np.empty(2 * packed.size, np.uint8)
    out[0::2] = packed >> 4
    out[1::2] = packed & 15
    return out[:alphabet], out[alphabet:]


def estimate_stream_bytes(freqs: np.ndarray, lane_size: int, max_len: int = INDEX_CODE_LENGTH) -> int:
    """Size of a stream with these symbol counts, to within one byte per lane."""
    n = int(freqs.sum())
    if n == 0:
        return 0
    lengths = huffman.code_lengths(freqs, max_len)
    nl = num_lanes(n, lane_size)
    return stream_prefix_bytes(freqs.size, n, lane_size) + (huffman.coded_bits(freqs, lengths) + 4 * nl) // 8


def encode_stream(symbols: np.ndarray, alphabet: int, lane_size: int, max_len: int = INDEX_CODE_LENGTH) -> np.ndarray:
    """Huffman-code ``symbols`` (integers < alphabet) into a stream part (uint8 array), codes of at
    most ``max_len`` bits (at most MAX_CODE_LENGTH; shorter codes make a smaller decode table; the default,
    INDEX_CODE_LENGTH, is the reference encoder's choice for index and gap streams)."""
    from . import kernels  # numba is imported on first use, not when dcformat is
    n = symbols.size
    if n == 0:
        return np.zeros(0, np.uint8)
    freqs = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(freqs, max_len)
    codes, bitlen = huffman.canonical_codes(lengths)
    lane_bytes = (kernels.pick(kernels.lane_bits, kernels.lane_bits_serial, n)(symbols, bitlen, lane_size) + 7) // 8
    starts = np.zeros(lane_bytes.size, np.int64)
    np.cumsum(lane_bytes[:-1], out=starts[1:])
    prefix = stream_prefix_bytes(alphabet, n, lane_size)
    out = np.zeros(prefix + int(lane_bytes.sum()), np.uint8)
    table_at = align(length_table_bytes(alphabet), 8)
    out[: length_table_bytes(alphabet)] = pack_lengths(lengths)
    out[table_at:prefix] = starts.astype("<u8").view(np.uint8)
    kernels.pick(kernels.encode_lanes, kernels.encode_lanes_serial, n)(symbols, codes, bitlen, lane_size, starts, out[prefix:])
    return out


@dataclass
class Stream:
    """A parsed, validated stream part, ready for the decode kernels."""

    payload: np.ndarray  # uint8
    lane_offsets: np.ndarray  # int64, one per lane
    table: np.ndarray  # uint16 decode table
    table_bits: int
    payload_at: int  # byte offset of the payload in the file

    @classmethod
    def empty(cls, at: int) -> "Stream":
        return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(1, np.uint16), 0, at)


def parse_stream(part: np.ndarray, n: int, alphabet: int, lane_size: int, where: str, at: int) -> Stream:
    """Validate a stream part's code, padding and lane table; ``at`` is its file offset."""
    if n == 0:
        if part.size:
            raise HuffmanError(f"{where}: a stream of 0 symbols must be empty, has {part.size} bytes at byte {at}")
        return Stream.empty(at)
    prefix = stream_prefix_bytes(alphabet, n, lane_size)
    if part.size < prefix:
        raise HuffmanError(
            f"{where}: stream of {part.size} bytes at byte {at} is shorter than its "
            f"code table and lane table ({prefix} bytes)"
        )
    lengths, spare = unpack_lengths(part[: length_table_bytes(alphabet)], alphabet)
    if spare.any():
        raise HuffmanError(f"{where}: the unused low nibble of the code-length table is not zero (byte {at + alphabet // 2})")
    huffman.validate_lengths(lengths, f"{where} (code lengths at byte {at})")
    table_at = align(length_table_bytes(alphabet), 8)
    pad = part[length_table_bytes(alphabet) : table_at]
    if pad.any():
        raise HuffmanError(f"{where}: non-zero padding after the code lengths at byte {at + length_table_bytes(alphabet)}")
    offsets = part[table_at:prefix].view("<u8")
    payload = part[prefix:]
    if offsets[0] != 0:
        raise HuffmanError(f"{where}: first lane offset is {int(offsets[0])}, must be 0 (byte {at + table_at})")
    if offsets.size > 1 and np.any(offsets[1:] < offsets[:-1]):
        bad = int(np.flatnonzero(offsets[1:] < offsets[:-1])[0]) + 1
        raise HuffmanError(f"{where}: lane offsets decrease at lane {bad} (byte {at + table_at + 8 * bad})")
    if int(offsets[-1]) > payload.size:
        raise HuffmanError(
            f"{where}: lane offset {int(offsets[-1])} is past the payload's {payload.size} bytes "
            f"(byte {at + prefix - 8})"
        )
    table, bits = huffman.decode_table(lengths)
    return Stream(payload, offsets.astype(np.int64), table, bits, at + prefix)


def raise_lane_error(status: np.ndarray, where: str, streams: tuple[tuple[str, Stream], ...]) -> None:
    """Turn the first non-zero lane status from a kernel into a HuffmanError."""
    from .npdecode import INDEX_STREAM, STATUS_TEXT  # the kernels' codes (numba not imported for them)
    bad = np.flatnonzero(status)
    if bad.size == 0:
        return
    lane = int(bad[0])
    code = int(status[lane])
    name, stream = streams[0]
    if code >= INDEX_STREAM:
        code -= INDEX_STREAM
        name, stream = streams[1]
    at = stream.payload_at + int(stream.lane_offsets[lane])
    raise HuffmanError(f"{where}: {name} stream lane {lane} (byte {at}): {STATUS_TEXT[code]}")

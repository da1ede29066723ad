"""The container: preamble, JSON header, section table (spec/FORMAT.md, "Container").

Preamble (24 bytes, little-endian)::

    0   8  magic          MAGIC
    8   2  major version  u16
    10  2  minor version  u16
    12  4  header length  u32, stored bytes of the header that follows
    16  4  header CRC32   u32, of the stored header bytes
    20  4  preamble CRC32 u32, of bytes 0..19

then the header (ASCII JSON, stored as a raw DEFLATE stream), then the sections, each
starting at the next multiple of ALIGNMENT after the previous one ends (the first after
the header), the gaps filled with zeros. Sections carry no offsets: their places follow
from their lengths. The file ends where the last section ends.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from .constants import ALIGNMENT, DEFLATE_LEVEL, MAGIC, PREAMBLE_SIZE, VERSION_MAJOR, VERSION_MINOR
from .errors import FormatError, LimitError
from .streams import align

PREAMBLE = struct.Struct("<8sHHIII")
assert PREAMBLE.size == PREAMBLE_SIZE


@dataclass
class Section:
    """One entry of the header's section table."""

    kind: str
    offset: int  # file offset, from the tiling rule (not stored)
    length: int
    crc32: int
    tensor: dict | None = None  # the tensor descriptor, for kind == "tensor"

    def entry(self) -> dict:
        d = {"kind": self.kind, "length": self.length, "crc32": self.crc32}
        if self.tensor is not None:
            d["tensor"] = self.tensor
        return d


def dump_json(obj) -> bytes:
    """The one JSON form of the format: compact, ASCII, no NaN; keys in the given order."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def deflate(data: bytes, zdict: bytes | None = None) -> bytes:
    """Raw DEFLATE (RFC 1951) of ``data``, as the format stores its header, metadata and graph; with
    ``zdict`` (1.4: DEFLATE_DICT, 1.5: DEFLATE_DICT_15), against that preset dictionary."""
    c = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **({"zdict": zdict} if zdict else {}))
    return c.compress(data) + c.flush()


def inflate(data, limit: int, what: str, why: str = "", zdict: bytes | None = None) -> bytes:
    """Inverse of :func:`deflate`: the stream must be complete, end exactly at the end of
    ``data`` and inflate to at most ``limit`` bytes (checked as it inflates; ``why`` explains
    the limit in the LimitError; ``zdict``: the preset dictionary of a 1.4 or later file)."""
    d = zlib.decompressobj(-15, **({"zdict": zdict} if zdict else {}))
    try:
        out = d.decompress(bytes(data), limit + 1)
    except zlib.error as e:
        raise FormatError(f"{what}: not a valid DEFLATE stream ({e})") from None
    if len(out) > limit:
        raise LimitError(f"{what}: inflates to more than {limit} bytes{why}")
    if not d.eof:
        raise FormatError(f"{what}: the DEFLATE stream is incomplete")
    if d.unused_data:
        raise FormatError(f"{what}: {len(d.unused_data)} bytes after the end of the DEFLATE stream")
    return out


def layout(kinds_lengths: list[tuple[str, int, int, dict | None]], zdict: bytes | None = None
           ) -> tuple[bytes, list[Section], int]:
    """The stored header (deflated against ``zdict`` if given) and the sections placed after it;
    returns (header bytes, sections, length of the header's JSON text)."""
    sections = [Section(kind, 0, length, crc, tensor) for kind, length, crc, tensor in kinds_lengths]
    text = dump_json({"sections": [s.entry() for s in sections]})
    header = deflate(text, zdict)
    pos = PREAMBLE_SIZE + len(header)
    for s in sections:
        s.offset = pos = align(pos, ALIGNMENT)
        pos += s.length
    return header, sections, len(text)


def file_size(header: bytes, sections: list[Section]) -> int:
    """Where the file laid out by :func:`layout` ends."""
    return sections[-1].offset + sections[-1].length if sections else PREAMBLE_SIZE + len(header)


def preamble(header: bytes, major: int = VERSION_MAJOR, minor: int = VERSION_MINOR) -> bytes:
    head = struct.pack("<8sHHII", MAGIC, major, minor, len(header), zlib.crc32(header))
    return head + struct.pack("<I", zlib.crc32(head))

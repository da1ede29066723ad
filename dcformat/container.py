"""The container: preamble, JSON header, section table (spec/FORMAT.md, "Container").

Preamble (24 bytes, little-endian)::

    0   8  magic          MAGIC
    8   2  major version  u16
    10  2  minor version  u16
    12  4  header length  u32, bytes of the JSON header that follows
    16  4  header CRC32   u32, of the header bytes
    20  4  preamble CRC32 u32, of bytes 0..19

then the header (UTF-8 JSON, ASCII only), then the sections, each starting at the
next multiple of ALIGNMENT after the previous one ends, the gaps filled with zeros.
The file ends where the last section ends.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from .constants import ALIGNMENT, MAGIC, PREAMBLE_SIZE, VERSION_MAJOR, VERSION_MINOR
from .streams import align

PREAMBLE = struct.Struct("<8sHHIII")
assert PREAMBLE.size == PREAMBLE_SIZE


@dataclass
class Section:
    """One entry of the header's section table."""

    kind: str
    offset: int
    length: int
    crc32: int
    tensor: dict | None = None  # the tensor descriptor, for kind == "tensor"

    def entry(self) -> dict:
        d = {"kind": self.kind, "offset": self.offset, "length": self.length, "crc32": self.crc32}
        if self.tensor is not None:
            d["tensor"] = self.tensor
        return d


def dump_json(obj) -> bytes:
    """The one JSON form of the format: compact, ASCII, no NaN; keys in the given order."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def layout(kinds_lengths: list[tuple[str, int, int, dict | None]]) -> tuple[bytes, list[Section]]:
    """Place sections after a header that lists them; returns (header bytes, sections).

    Offsets depend on the header's length, which depends on the offsets' digits: iterate
    to the fixed point (two or three rounds).
    """
    header_len = 0
    for _ in range(16):
        pos = align(PREAMBLE_SIZE + header_len, ALIGNMENT)
        sections = []
        for kind, length, crc, tensor in kinds_lengths:
            sections.append(Section(kind, pos, length, crc, tensor))
            pos = align(pos + length, ALIGNMENT)
        header = dump_json({"sections": [s.entry() for s in sections]})
        if len(header) == header_len:
            return header, sections
        header_len = len(header)
    raise RuntimeError("header layout did not converge")  # pragma: no cover


def preamble(header: bytes, major: int = VERSION_MAJOR, minor: int = VERSION_MINOR) -> bytes:
    head = struct.pack("<8sHHII", MAGIC, major, minor, len(header), zlib.crc32(header))
    return head + struct.pack("<I", zlib.crc32(head))

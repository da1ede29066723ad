"""Hostile .dcz files for tests/test_hostile.py, generated from code (no binary blobs in git).

Three small valid sample files are written with the dcformat API (:func:`write_samples`).
:class:`Dcz` splits a file into its version, header dict and section payloads; tampering
with those and calling :meth:`Dcz.build` lays the file out again and RE-COMPUTES every
checksum (preamble, header, sections), so the reader's structural checks -- not its CRCs --
are what must catch the damage. :data:`ATTACKS` is the catalogue of such crafted files,
each with the :class:`dcformat.DczError` subclass it must raise, a fragment its message
must contain (naming the section or tensor), and the stage at which it must be raised.
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import dcformat
from dcformat import ChecksumError, DczError, FormatError, HuffmanError, LimitError, TensorError, VersionError
from dcformat.constants import (
    ALIGNMENT,
    MAX_HEADER_BYTES,
    MAX_SECTIONS,
    PART_ALIGNMENT,
    PREAMBLE_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
)
from dcformat.container import PREAMBLE, deflate, dump_json, preamble
from dcformat.huffman import canonical_codes
from dcformat.streams import align, length_table_bytes, num_lanes, unpack_lengths

# ============================================================================ samples

LANE = 256  # the smallest lane size: several lanes from few symbols
META = {"producer": "tests/attacks/make_attacks.py", "purpose": "hostile-input fixtures"}
DENSE_SHAPE = (40, 25)
SPARSE_SHAPE = (3000,)


def tiny_graph() -> bytes:
    """A small valid ONNX ModelProto (y = Identity(x)), serialized."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(g, producer_name="attacks", opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(deterministic=True)


def dense_indices() -> np.ndarray:
    """Skewed symbols (code lengths 1, 2, 3, 3) over 4 lanes of 256 symbols (the last one partial)."""
    rng = np.random.default_rng(1234)
    return rng.choice(4, size=int(np.prod(DENSE_SHAPE)), p=[0.5, 0.25, 0.125, 0.125]).astype(np.uint8)


DENSE_CODEBOOK = np.array([-0.5, 0.25, 1.0, 2.0])


def sparse_indices() -> np.ndarray:
    """~20% non-zeros with long zero runs (fillers at gap_bits=2); the last element is non-zero."""
    rng = np.random.default_rng(99)
    n = SPARSE_SHAPE[0]
    idx = np.where(rng.random(n) < 0.2, rng.integers(1, 4, n), 0)
    idx[500:560] = 0  # a long run: several fillers in a row
    idx[-1] = 2
    return idx.astype(np.uint8)


SPARSE_CODEBOOK = np.array([0.0, 0.5, -1.5, 3.0])


def sample_tensors(kind: str) -> list:
    if kind == "raw":
        return [
            dcformat.encode_raw("raw.w", (np.arange(12, dtype=np.float32) * 0.25 - 1.0).reshape(3, 4)),
            dcformat.encode_raw("raw.mask", np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)),
        ]
    if kind == "dense":
        t = dcformat.encode_codebook(
            "dense.w", DENSE_CODEBOOK, dense_indices(), DENSE_SHAPE, encoding="codebook-dense", lane_size=LANE
        )
        assert num_lanes(t.info.numel, LANE) >= 4
        return [t]
    if kind == "sparse":
        t = dcformat.encode_codebook(
            "sparse.w", SPARSE_CODEBOOK, sparse_indices(), SPARSE_SHAPE,
            encoding="codebook-sparse", gap_bits=2, lane_size=LANE,
        )
        nonzero = int(np.count_nonzero(sparse_indices()))
        assert t.info.entries > nonzero, "the sparse sample must need fillers"
        assert num_lanes(t.info.entries, LANE) >= 3, "the sparse sample must have several lanes"
        return [t]
    raise KeyError(kind)


SAMPLES = ("raw", "dense", "sparse")


def expected_arrays(kind: str) -> dict[str, np.ndarray]:
    """What the sample files decode to."""
    if kind == "raw":
        return {
            "raw.w": (np.arange(12, dtype=np.float32) * 0.25 - 1.0).reshape(3, 4),
            "raw.mask": np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool),
        }
    if kind == "dense":
        return {"dense.w": DENSE_CODEBOOK.astype(np.float32)[dense_indices()].reshape(DENSE_SHAPE)}
    return {"sparse.w": SPARSE_CODEBOOK.astype(np.float32)[sparse_indices()].reshape(SPARSE_SHAPE)}


def write_samples(directory) -> dict[str, Path]:
    """Write the three valid sample files (each with metadata and a graph section)."""
    directory = Path(directory)
    out = {}
    for kind in SAMPLES:
        path = directory / f"{kind}.dcz"
        dcformat.write(path, sample_tensors(kind), graph=tiny_graph(), metadata=META)
        out[kind] = path
    return out


# ============================================================================ file surgery


def fix_preamble(data: bytearray, *, major=None, minor=None, hlen=None, hcrc=None, magic=None) -> bytearray:
    """Rewrite preamble fields in place and recompute the preamble CRC (header CRC kept unless given)."""
    m, ma, mi, hl, hc, _ = PREAMBLE.unpack(bytes(data[:PREAMBLE_SIZE]))
    head = struct.pack(
        "<8sHHII",
        m if magic is None else magic,
        ma if major is None else major,
        mi if minor is None else minor,
        hl if hlen is None else hlen,
        hc if hcrc is None else hcrc,
    )
    data[:PREAMBLE_SIZE] = head + struct.pack("<I", zlib.crc32(head))
    return data


@dataclass
class StreamParts:
    """A Huffman stream part split up: code lengths (unpacked, one per symbol), the unused low nibble of
    the packed table (odd alphabets only), the padding after the table, lane table, payload."""

    lengths: bytearray
    pad: bytearray
    offsets: list[int]
    payload: bytearray
    spare: int = 0  # the low nibble of the table's last byte when the alphabet is odd (must be 0)

    @classmethod
    def split(cls, part: bytes, alphabet: int, n: int, lane_size: int) -> "StreamParts":
        c = length_table_bytes(alphabet)
        table_at = align(c, 8)
        nl = num_lanes(n, lane_size)
        prefix = table_at + 8 * nl
        offsets = list(struct.unpack(f"<{nl}Q", bytes(part[table_at:prefix])))
        lengths, spare = unpack_lengths(np.frombuffer(bytes(part[:c]), np.uint8), alphabet)
        return cls(bytearray(lengths.tobytes()), bytearray(part[c:table_at]), offsets, bytearray(part[prefix:]),
                   int(spare[0]) if spare.size else 0)

    @property
    def table(self) -> bytes:
        """The packed code-length table: two lengths per byte, symbol 2i in the high nibble."""
        assert max(self.lengths, default=0) <= 15 and 0 <= self.spare <= 15, "a nibble holds 0..15"
        nib = list(self.lengths) + ([self.spare] if len(self.lengths) % 2 else [])
        return bytes((nib[i] << 4) | nib[i + 1] for i in range(0, len(nib), 2))

    def set_table(self, table: bytes) -> None:
        """Set the packed table's bytes as they are (ceil(alphabet / 2) of them)."""
        assert len(table) == length_table_bytes(len(self.lengths))
        lengths, spare = unpack_lengths(np.frombuffer(bytes(table), np.uint8), len(self.lengths))
        self.lengths[:] = lengths.tobytes()
        self.spare = int(spare[0]) if spare.size else 0

    def to_bytes(self) -> bytes:
        return self.table + bytes(self.pad) + struct.pack(f"<{len(self.offsets)}Q", *self.offsets) + bytes(self.payload)

    def lane_end(self, lane: int) -> int:
        return self.offsets[lane + 1] if lane + 1 < len(self.offsets) else len(self.payload)


def make_stream(alphabet: int, lengths: dict[int, int], lane_offsets: list[int], payload: bytes = b"",
                spare: int = 0) -> bytes:
    """Raw bytes of a stream part, for hand-made tensors (``spare``: the unused nibble of an odd alphabet)."""
    ln = bytearray(alphabet)
    for s, v in lengths.items():
        ln[s] = v
    c = length_table_bytes(alphabet)
    return StreamParts(ln, bytearray(align(c, 8) - c), list(lane_offsets), bytearray(payload), spare).to_bytes()


def join_parts(parts: dict[str, bytes]) -> tuple[bytes, dict[str, int]]:
    """Section bytes of a tensor (each part 8-aligned, zero padding) and its parts' lengths."""
    out = bytearray()
    for p in parts.values():
        out += bytes(align(len(out), PART_ALIGNMENT) - len(out))
        out += p
    return bytes(out), {k: len(v) for k, v in parts.items()}


DEFLATED_KINDS = ("metadata", "graph")  # sections stored as raw DEFLATE of their content


class Stored(bytes):
    """A metadata or graph payload given as the bytes to store: :meth:`Dcz.build` does not deflate it."""


def tiling(header_len: int, lengths: list[int]) -> list[int]:
    """Where sections of these lengths start after a stored header of ``header_len`` bytes (3.3)."""
    pos, out = PREAMBLE_SIZE + header_len, []
    for n in lengths:
        pos = align(pos, ALIGNMENT)
        out.append(pos)
        pos += n
    return out


def _inflate_all(data: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    out = d.decompress(bytes(data))
    if not d.eof or d.unused_data:
        raise zlib.error("not one complete raw DEFLATE stream")
    return out


@dataclass
class Dcz:
    """A .dcz file taken apart: version, header (a JSON-able dict) and one payload per section.

    Metadata and graph payloads are held inflated (the JSON / ModelProto bytes) and deflated again
    by :meth:`build`, unless given as :class:`Stored` bytes (stored as they are). Entries carry no
    offsets: sections tile the file after the header.
    """

    header: dict
    payloads: list[bytes]
    major: int = VERSION_MAJOR
    minor: int = VERSION_MINOR

    @classmethod
    def parse(cls, data: bytes) -> "Dcz":
        _, major, minor, hlen, _, _ = PREAMBLE.unpack(data[:PREAMBLE_SIZE])
        header = json.loads(_inflate_all(data[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen]))
        entries = header["sections"]
        payloads = []
        for e, at in zip(entries, tiling(hlen, [e["length"] for e in entries])):
            p = bytes(data[at : at + e["length"]])
            if e.get("kind") in DEFLATED_KINDS:
                try:
                    p = _inflate_all(p)
                except zlib.error:
                    p = Stored(p)
            payloads.append(p)
        return cls(header, payloads, major, minor)

    @classmethod
    def load(cls, path) -> "Dcz":
        return cls.parse(Path(path).read_bytes())

    @classmethod
    def of_sections(cls, sections: list[tuple[str, bytes, dict | None]]) -> "Dcz":
        """A file from (kind, payload, tensor descriptor) triples; lengths and CRCs are filled in by build."""
        header = {"sections": []}
        for kind, _, tensor in sections:
            e = {"kind": kind, "length": 0, "crc32": 0}
            if tensor is not None:
                e["tensor"] = tensor
            header["sections"].append(e)
        return cls(header, [p for _, p, _ in sections])

    def copy(self) -> "Dcz":
        return Dcz(copy.deepcopy(self.header), list(self.payloads), self.major, self.minor)

    def stored(self, i: int) -> bytes:
        """The bytes section ``i`` stores: its payload, deflated if it is metadata or a graph (not Stored)."""
        p = self.payloads[i]
        if self.entries[i].get("kind") in DEFLATED_KINDS and not isinstance(p, Stored):
            return deflate(bytes(p))
        return bytes(p)

    # ---------------------------------------------------------------- lookups
    @property
    def entries(self) -> list[dict]:
        return self.header["sections"]

    def index(self, kind_or_name: str) -> int:
        """Index of the first section of a kind, or of the tensor with that name."""
        for i, e in enumerate(self.entries):
            if e.get("kind") == kind_or_name or (e.get("tensor") or {}).get("name") == kind_or_name:
                return i
        raise KeyError(kind_or_name)

    def desc(self, name: str) -> dict:
        return self.entries[self.index(name)]["tensor"]

    def parts(self, name: str) -> dict[str, bytes]:
        """The parts of a tensor section, by name."""
        i = self.index(name)
        out, pos = {}, 0
        for pname, length in self.entries[i]["tensor"]["parts"].items():
            start = align(pos, PART_ALIGNMENT)
            out[pname] = self.payloads[i][start : start + length]
            pos = start + length
        return out

    def set_parts(self, name: str, **new: bytes) -> None:
        """Replace some parts of a tensor, updating the descriptor's part lengths."""
        i = self.index(name)
        parts = self.parts(name) | {k: bytes(v) for k, v in new.items()}
        self.payloads[i], lengths = join_parts(parts)
        self.entries[i]["tensor"]["parts"] = lengths

    def stream(self, name: str, part: str) -> StreamParts:
        d = self.desc(name)
        sparse = d["encoding"] == "codebook-sparse"
        n = d["entries"] if sparse else int(np.prod(d["shape"], dtype=np.int64))
        alphabet = (1 << d["gap_bits"]) if part == "gaps" else d["codebook_size"] + (1 if sparse else 0)
        return StreamParts.split(self.parts(name)[part], alphabet, n, d["lane_size"])

    def set_stream(self, name: str, part: str, s: StreamParts) -> None:
        self.set_parts(name, **{part: s.to_bytes()})

    # ---------------------------------------------------------------- assembly
    def build(
        self,
        tamper: Callable[[dict], None] | None = None,
        *,
        encoder: Callable[[dict], bytes] = dump_json,
        compress: Callable[[bytes], bytes] = deflate,
        gaps: dict[int, int] | None = None,
        recrc: bool = True,
    ) -> bytes:
        """Lay the file out again (lengths and CRCs recomputed, sections tiled), then serialize.

        ``tamper(header)`` edits the finished header (a copy) before it is encoded; ``encoder``
        turns it into JSON text and ``compress`` that into the stored header bytes (raw DEFLATE);
        ``gaps[i]`` puts that many extra zero bytes before section i (so that it is not where the
        tiling rule puts it); ``recrc=False`` keeps the section CRCs of the header as they are.
        """
        gaps = gaps or {}
        stored = [self.stored(i) for i in range(len(self.payloads))]
        h = copy.deepcopy(self.header)
        for e, p in zip(h["sections"], stored):
            e["length"] = len(p)
            if recrc:
                e["crc32"] = zlib.crc32(p)
        if tamper is not None:
            tamper(h)
        hb = compress(encoder(h))
        pos = PREAMBLE_SIZE + len(hb)
        places = []
        for i, p in enumerate(stored):
            pos = align(pos, ALIGNMENT) + gaps.get(i, 0)
            places.append(pos)
            pos += len(p)
        data = bytearray(pos)
        data[:PREAMBLE_SIZE] = preamble(hb, self.major, self.minor)
        data[PREAMBLE_SIZE : PREAMBLE_SIZE + len(hb)] = hb
        for at, p in zip(places, stored):
            data[at : at + len(p)] = p
        return bytes(data)


def section_offsets(data: bytes) -> list[int]:
    """Where the sections of a (valid) file start, by the tiling rule."""
    hlen = PREAMBLE.unpack(bytes(data[:PREAMBLE_SIZE]))[3]
    return tiling(hlen, [e["length"] for e in Dcz.parse(data).entries])


def region(data: bytes, offset: int) -> str:
    """Which part of a (valid) file a byte offset is in: for reports of undetected damage."""
    if offset < PREAMBLE_SIZE:
        return "preamble"
    d = Dcz.parse(data)
    _, _, _, hlen, _, _ = PREAMBLE.unpack(data[:PREAMBLE_SIZE])
    if offset < PREAMBLE_SIZE + hlen:
        return "header"
    for i, (e, at) in enumerate(zip(d.entries, section_offsets(data))):
        if at <= offset < at + e["length"]:
            what = f"section {i} ({e['kind']})"
            t = e.get("tensor")
            if t:
                pos = 0
                for pname, length in t["parts"].items():
                    start = align(pos, PART_ALIGNMENT)
                    if at + start <= offset < at + start + length:
                        return f"{what} tensor {t['name']!r} part {pname!r} byte {offset - at - start}"
                    pos = start + length
                return f"{what} tensor {t['name']!r} part padding"
            return what
    return "padding between sections"


# ============================================================================ the catalogue


@dataclass(frozen=True)
class Attack:
    """A crafted hostile file and what reading it must do.

    stage: "open" -- dcformat.open raises; "verify" -- open succeeds, reader.verify() raises
    (and so does reader[tensor] when ``tensor`` is set); "graph" -- open and verify succeed,
    reader.graph raises; "ok" -- the file is valid and must read without error.
    """

    name: str
    sample: str
    make: Callable[[Dcz], bytes] = field(repr=False)
    error: type[DczError] | None
    match: str | tuple[str, ...]  # a fragment of the message, or several that must all be in it
    stage: str = "open"
    tensor: str | None = None
    open_kwargs: dict = field(default_factory=dict)


ATTACKS: list[Attack] = []


def attack(name, sample, error, match, stage="open", tensor=None, **open_kwargs):
    def deco(fn):
        ATTACKS.append(Attack(name, sample, fn, error, match, stage, tensor, open_kwargs))
        return fn

    return deco


def _sections(h: dict) -> list[dict]:
    return h["sections"]


# ----------------------------------------------------------------------------- valid controls


@attack("control-rebuilt-dense", "dense", None, "", stage="ok")
def _(d):
    return d.build()  # the surgery itself must produce a valid file


@attack("control-rebuilt-sparse", "sparse", None, "", stage="ok")
def _(d):
    return d.build()


@attack("control-minor-version-bump", "raw", None, "", stage="ok")
def _(d):
    d.minor = VERSION_MINOR + 7  # a newer minor version only adds optional things
    return d.build()


@attack("control-unknown-section-kind", "raw", None, "", stage="ok")
def _(d):
    d.header["sections"].insert(2, {"kind": "x-future", "length": 0, "crc32": 0})
    d.payloads.insert(2, b"some future section")
    return d.build()


# ----------------------------------------------------------------------------- preamble and checksums


@attack("bad-magic", "dense", FormatError, "magic")
def _(d):
    return bytes(fix_preamble(bytearray(d.build()), magic=b"\x89DCX\r\n\x1a\n"))


@attack("text-mode-mangled-magic", "dense", FormatError, "magic")
def _(d):
    return d.build().replace(b"\r\n", b"\n", 1)


@attack("major-version-2", "dense", VersionError, "version 2.0")
def _(d):
    d.major = 2
    return d.build()


@attack("major-version-0", "dense", VersionError, "version 0.0")
def _(d):
    d.major = 0
    return d.build()


@attack("preamble-crc-mismatch", "dense", ChecksumError, "preamble")
def _(d):
    data = bytearray(d.build())
    data[10] ^= 1  # minor version, CRC left stale
    return bytes(data)


@attack("header-crc-mismatch", "dense", ChecksumError, "header")
def _(d):
    data = bytearray(d.build())
    data[PREAMBLE_SIZE + 3] ^= 0x20
    return bytes(data)


@attack("tensor-section-crc-mismatch", "dense", ChecksumError, "tensor 'dense.w'", stage="verify", tensor="dense.w")
def _(d):
    return d.build(lambda h: _sections(h)[2].__setitem__("crc32", _sections(h)[2]["crc32"] ^ 1))


@attack("metadata-crc-mismatch", "dense", ChecksumError, "metadata", stage="verify")
def _(d):
    return d.build(lambda h: _sections(h)[0].__setitem__("crc32", _sections(h)[0]["crc32"] ^ 0x80000000))


@attack("graph-crc-mismatch", "dense", ChecksumError, "section 1 (graph)", stage="verify")
def _(d):
    return d.build(lambda h: _sections(h)[1].__setitem__("crc32", 0))


@attack("unknown-kind-crc-mismatch", "raw", ChecksumError, "section 2 (x-future)", stage="verify")
def _(d):
    d.header["sections"].insert(2, {"kind": "x-future", "length": 0, "crc32": 0})
    d.payloads.insert(2, b"some future section")
    return d.build(lambda h: _sections(h)[2].__setitem__("crc32", 12345))


# ----------------------------------------------------------------------------- header length


@attack("header-length-beyond-file", "dense", LimitError, "header length")
def _(d):
    data = bytearray(d.build())
    return bytes(fix_preamble(data, hlen=len(data)))


@attack("header-length-over-limit", "dense", LimitError, "header length")
def _(d):
    return bytes(fix_preamble(bytearray(d.build()), hlen=MAX_HEADER_BYTES + 1))


@attack("header-length-u32-max", "dense", LimitError, "header length")
def _(d):
    return bytes(fix_preamble(bytearray(d.build()), hlen=0xFFFFFFFF))


def _rehlen(d: Dcz, delta: int) -> bytes:
    data = bytearray(d.build())
    hlen = len(_header_of(data)) + delta
    return bytes(fix_preamble(data, hlen=hlen, hcrc=zlib.crc32(bytes(data[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen]))))


def _header_of(data) -> bytes:
    hlen = PREAMBLE.unpack(bytes(data[:PREAMBLE_SIZE]))[3]
    return bytes(data[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen])


@attack("header-length-short", "dense", FormatError, "header")
def _(d):
    return _rehlen(d, -1)


@attack("header-length-long", "dense", FormatError, "header")
def _(d):
    return _rehlen(d, +2)  # swallows padding zeros: not JSON any more


@attack("header-length-zero", "dense", FormatError, "header")
def _(d):
    return _rehlen(d, -len(_header_of(d.build())))


# ----------------------------------------------------------------------------- header DEFLATE stream


def _raw_deflate(data: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


@attack("control-header-stored-uncompressed", "dense", None, "", stage="ok")
def _(d):
    # DEFLATE "stored" blocks (level 0): another encoder's stream, valid all the same
    return d.build(compress=lambda t: _raw_deflate(t, 0))


@attack("control-header-other-deflate-level", "sparse", None, "", stage="ok")
def _(d):
    return d.build(compress=lambda t: _raw_deflate(t, 1))


@attack("header-stream-invalid", "dense", FormatError, ("header", "not a valid DEFLATE stream"))
def _(d):
    return d.build(compress=lambda t: b"\xff" * 16)  # block type 3: reserved


@attack("header-stream-is-plain-json", "dense", FormatError, "header")
def _(d):
    return d.build(compress=lambda t: t)  # the old layout: JSON text, not deflated


@attack("header-stream-zlib-wrapped", "dense", FormatError, "header")
def _(d):
    return d.build(compress=lambda t: zlib.compress(t, 9))  # a zlib stream, not raw DEFLATE


@attack("header-stream-incomplete", "dense", FormatError, ("header", "incomplete"))
def _(d):
    return d.build(compress=lambda t: deflate(t)[:-1])


@attack("header-stream-empty", "dense", FormatError, ("header", "incomplete"))
def _(d):
    return d.build(compress=lambda t: b"")


@attack("header-stream-no-final-block", "dense", FormatError, ("header", "incomplete"))
def _(d):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return d.build(compress=lambda t: c.compress(t) + c.flush(zlib.Z_SYNC_FLUSH))  # BFINAL never set


@attack("header-stream-trailing-byte", "dense", FormatError, ("header", "1 bytes after the end of the DEFLATE stream"))
def _(d):
    return d.build(compress=lambda t: deflate(t) + b"\x00")


@attack("header-stream-trailing-second-stream", "dense", FormatError, ("header", "after the end of the DEFLATE stream"))
def _(d):
    return d.build(compress=lambda t: deflate(t) + deflate(b" "))


@attack("header-inflates-past-limit", "dense", LimitError, ("header", "inflates to more than", "// 32: parsing it"))
def _(d):
    # 64 MiB + 2 of valid JSON (whitespace) from ~64 KB stored: refused once the output passes the
    # parse limit, (expansion bound) / JSON_PARSE_FACTOR, here ~2.6 MB
    return d.build(encoder=lambda h: b'{"sections":[' + b" " * MAX_HEADER_BYTES + b"]}")


@attack("header-utf8-not-ascii", "raw", FormatError, ("header", "non-ASCII"))
def _(d):
    d.desc("raw.w")["name"] = "raw.\u00e9"
    return d.build(encoder=lambda h: json.dumps(h, ensure_ascii=False, separators=(",", ":")).encode())


# ----------------------------------------------------------------------------- header JSON


def _raw_header(d: Dcz, hb: bytes) -> bytes:
    return d.build(encoder=lambda h: hb)


@attack("header-not-json", "dense", FormatError, "header")
def _(d):
    return _raw_header(d, b"this is not JSON")


@attack("header-invalid-utf8", "dense", FormatError, "header")
def _(d):
    return _raw_header(d, b'{"sections":["\xff\xfe"]}')


@attack("header-not-object", "dense", FormatError, "header")
def _(d):
    return _raw_header(d, b"[1,2,3]")


@attack("header-no-sections", "dense", FormatError, "header")
def _(d):
    return _raw_header(d, b'{"tensors":[]}')


@attack("header-sections-not-list", "dense", FormatError, "header")
def _(d):
    return _raw_header(d, b'{"sections":{"0":1}}')


@attack("header-deeply-nested", "dense", FormatError, "header")
def _(d):
    return _raw_header(d, b'{"sections":' + b"[" * 200_000 + b"]" * 200_000 + b"}")


@attack("header-too-many-sections", "dense", LimitError, "sections", max_decoded_bytes=1 << 30)
def _(d):  # 2 MB of header text: past the parse limit of so small a file, unless the caller raises it
    return _raw_header(d, b'{"sections":[' + b",".join([b"0"] * (MAX_SECTIONS + 1)) + b"]}")


def _nan_encoder(h: dict) -> bytes:
    return json.dumps(h, separators=(",", ":"), allow_nan=True).encode()


@attack("header-nan", "dense", FormatError, "NaN")
def _(d):
    return d.build(lambda h: _sections(h)[2].__setitem__("crc32", float("nan")), encoder=_nan_encoder)


@attack("header-infinity", "dense", FormatError, "Infinity")
def _(d):
    return d.build(lambda h: _sections(h)[2].__setitem__("length", float("inf")), encoder=_nan_encoder)


@attack("header-nan-in-shape", "dense", FormatError, "NaN")
def _(d):
    return d.build(lambda h: _sections(h)[2]["tensor"].__setitem__("shape", [float("nan")]), encoder=_nan_encoder)


def _dup_encoder(key: bytes):
    """Encode, then repeat the first ``"key":value`` pair (a duplicate key with the same value)."""

    def enc(h):
        hb = dump_json(h)
        at = hb.index(b'"' + key + b'":')
        end = at
        depth = 0
        while True:  # end of the value: the next ',' or '}' at depth 0
            c = hb[end : end + 1]
            if c in (b"[", b"{"):
                depth += 1
            elif c in (b"]", b"}"):
                if depth == 0:
                    break
                depth -= 1
            elif c == b"," and depth == 0:
                break
            end += 1
        return hb[:end] + b"," + hb[at:end] + hb[end:]

    return enc


@attack("header-duplicate-key-section", "dense", FormatError, "duplicate key 'length'")
def _(d):
    return d.build(encoder=_dup_encoder(b"length"))


@attack("header-duplicate-key-descriptor", "dense", FormatError, "duplicate key 'shape'")
def _(d):
    return d.build(encoder=_dup_encoder(b"shape"))


@attack("header-duplicate-key-top", "dense", FormatError, "duplicate key 'sections'")
def _(d):
    return d.build(encoder=_dup_encoder(b"sections"))


@attack("header-huge-int-literal", "dense", FormatError, "header")
def _(d):
    return d.build(encoder=lambda h: dump_json(h).replace(b'"crc32":', b'"crc32":' + b"9" * 5000 + b",\"x\":", 1))


@attack("section-entry-not-object", "dense", FormatError, "section 1")
def _(d):
    return d.build(lambda h: _sections(h).__setitem__(1, [1, 2]))


@attack("section-kind-not-string", "dense", FormatError, "section 0")
def _(d):
    return d.build(lambda h: _sections(h)[0].__setitem__("kind", 7))


@attack("section-kind-missing", "dense", FormatError, "section 1")
def _(d):
    return d.build(lambda h: _sections(h)[1].pop("kind"))


# wrong JSON types in the section table: strings for ints, floats, bools, negatives, huge, nested
BAD_INTS = {
    "string": lambda v: str(v),
    "float": lambda v: float(v),
    "bool": lambda v: True,
    "null": lambda v: None,
    "negative": lambda v: -1 - v,
    "huge": lambda v: 10**30,
    "u64-max": lambda v: 2**64 - 1,
    "nested": lambda v: [v],
    "object": lambda v: {"value": v},
}


def _entry_field_attack(key: str, label: str, fn):
    @attack(f"section-{key}-{label}", "dense", FormatError, f"'{key}'")
    def _(d):
        def t(h):
            e = _sections(h)[2]
            e[key] = fn(e[key])

        return d.build(t)


for _key in ("length", "crc32"):
    for _label, _fn in BAD_INTS.items():
        _entry_field_attack(_key, _label, _fn)


# v1.0 entries have no "offset": sections tile the file. An "offset" key is an unknown key, ignored
# whatever it holds (it must not move a section): each of these files is valid.

def _offset_control(label: str, fn):
    @attack(f"control-section-offset-{label}-ignored", "dense", None, "", stage="ok")
    def _(d):
        def t(h):
            offsets = tiling(len(deflate(dump_json(h))), [e["length"] for e in _sections(h)])
            for e, off in zip(_sections(h), offsets):
                e["offset"] = fn(off)

        return d.build(t)


for _label, _fn in {**BAD_INTS, "true-value": lambda v: v, "zero": lambda v: 0, "unaligned": lambda v: v + 3,
                    "past-end": lambda v: v + (1 << 20)}.items():
    _offset_control(_label, _fn)


# ----------------------------------------------------------------------------- section table layout


@attack("length-past-end-of-file", "dense", FormatError, "section 2")
def _(d):
    return d.build(lambda h: _sections(h)[2].__setitem__("length", _sections(h)[2]["length"] + 64))


@attack("length-into-next-section", "dense", FormatError, ("section 1", "non-zero padding"))
def _(d):
    # the metadata claims 64 bytes of the graph: every later section moves, and the graph's place is where
    # its bytes are not (here: graph bytes where padding must be zero)
    return d.build(lambda h: _sections(h)[0].__setitem__("length", _sections(h)[0]["length"] + 64))


@attack("length-shorter-than-payload", "dense", FormatError, "section 2")
def _(d):
    # the graph claims fewer bytes: its tail looks like non-zero padding before the tensor
    return d.build(lambda h: _sections(h)[1].__setitem__("length", _sections(h)[1]["length"] - 5))


@attack("overlapping-sections", "dense", FormatError, ("section 2", "non-zero padding"))
def _(d):
    # the graph claims 8 bytes less, the tensor 8 bytes more (offsets cannot overlap: there are none): the
    # graph's last bytes then lie where the padding before the tensor must be zero
    def t(h):
        _sections(h)[1]["length"] -= 8
        _sections(h)[2]["length"] += 8

    return d.build(t)


@attack("hole-before-section", "dense", FormatError, "after the last section")
def _(d):
    # the tensor stored 64 bytes after its place: the tiling rule reads zeros there, and the file runs on
    return d.build(gaps={2: 64})


@attack("hole-before-first-section", "dense", FormatError, "non-zero padding")
def _(d):
    return d.build(gaps={0: 64})


@attack("section-unaligned", "dense", FormatError, "non-zero padding")
def _(d):
    return d.build(gaps={1: 4})  # the graph stored at an offset that is not a multiple of ALIGNMENT


@attack("section-at-old-64-byte-alignment", "dense", FormatError, "non-zero padding")
def _(d):
    # the old layout (ALIGNMENT = 64): sections at multiples of 64, not where the 8-byte tiling puts them
    data = bytearray(d.build())
    hlen = len(_header_of(data))
    pos, gaps = PREAMBLE_SIZE + hlen, {}
    for i in range(len(d.payloads)):
        gaps[i] = align(pos, 64) - align(pos, ALIGNMENT)
        pos = align(pos, 64) + len(d.stored(i))
    assert any(gaps.values()), "the sample's sections are all at multiples of 64 already"
    return d.build(gaps=gaps)


@attack("sections-wrong-order", "dense", FormatError, ("section 1", "non-zero padding"))
def _(d):
    def t(h):
        s = _sections(h)
        s[0], s[1] = s[1], s[0]

    return d.build(t)


@attack("section-missing-from-table", "dense", FormatError, "after the last section")
def _(d):
    return d.build(lambda h: _sections(h).pop())


@attack("empty-section-table-with-data", "dense", FormatError, "after the last section")
def _(d):
    return d.build(lambda h: _sections(h).clear())


def _deflaters():
    """Raw DEFLATE encoders that store the same data in different numbers of bytes (all valid)."""
    for strategy in (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FIXED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FILTERED):
        for level in (9, 1, 0):
            def enc(t, level=level, strategy=strategy):
                c = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
                return c.compress(t) + c.flush()
            yield enc


def _nonzero_pad(d: Dcz, before: int) -> bytes:
    """A 1 in the last padding byte before section ``before``. With 8-byte alignment there may be no padding
    there: the header (before == 0) or the section before it (a metadata or graph section) is then stored
    by another DEFLATE encoder, of another length, until there is."""
    assert before == 0 or d.entries[before - 1]["kind"] in DEFLATED_KINDS
    plain = d.payloads[before - 1] if before else None
    for enc in _deflaters():
        if before:
            d.payloads[before - 1] = Stored(enc(plain))
            data = bytearray(d.build())
        else:
            data = bytearray(d.build(compress=enc))
        offsets = section_offsets(data)
        end = offsets[before - 1] + len(d.stored(before - 1)) if before else PREAMBLE_SIZE + len(_header_of(data))
        if end < offsets[before]:
            data[offsets[before] - 1] = 0x01
            return bytes(data)
    raise AssertionError("no encoder leaves padding there")


@attack("nonzero-padding-after-header", "dense", FormatError, "section 0")
def _(d):
    return _nonzero_pad(d, 0)


@attack("nonzero-padding-between-sections", "dense", FormatError, "section 2")
def _(d):
    return _nonzero_pad(d, 2)


@attack("trailing-zero-bytes", "dense", FormatError, "after the last section")
def _(d):
    return d.build() + bytes(64)


@attack("trailing-byte", "dense", FormatError, "after the last section")
def _(d):
    return d.build() + b"\x01"


# ----------------------------------------------------------------------------- metadata, graph, names


@attack("second-metadata-section", "dense", FormatError, "section 1")
def _(d):
    d.header["sections"].insert(1, copy.deepcopy(d.entries[0]))
    d.payloads.insert(1, d.payloads[0])
    return d.build()


@attack("second-graph-section", "dense", FormatError, "section 2")
def _(d):
    d.header["sections"].insert(2, copy.deepcopy(d.entries[1]))
    d.payloads.insert(2, d.payloads[1])
    return d.build()


@attack("duplicate-tensor-name", "raw", FormatError, "duplicate tensor name 'raw.w'")
def _(d):
    d.desc("raw.mask")["name"] = "raw.w"
    return d.build()


def _meta(d: Dcz, payload: bytes) -> bytes:
    d.payloads[0] = payload
    return d.build()


@attack("metadata-is-list", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b'[{"producer":"x"}]')


@attack("metadata-is-string", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b'"hello"')


@attack("metadata-not-json", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b"producer = x")


@attack("metadata-empty", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b"")


@attack("metadata-nan", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b'{"loss":NaN}')


@attack("metadata-duplicate-key", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b'{"a":1,"a":2}')


@attack("metadata-invalid-utf8", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b'{"a":"\xc3\x28"}')


@attack("metadata-deeply-nested", "dense", FormatError, "metadata", stage="verify")
def _(d):
    return _meta(d, b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


# metadata and graph are stored as raw DEFLATE streams: a bad stream is found when they are read
# (verify reads the metadata; the graph is read by .graph)

_BAD_STREAMS = {
    "invalid": (lambda s: b"\xff" * 16, "not a valid DEFLATE stream"),
    "plain": (lambda s: _inflate_all(s), ""),  # the old layout: stored as it is
    "zlib-wrapped": (lambda s: zlib.compress(_inflate_all(s), 9), ""),
    "incomplete": (lambda s: s[:-1], "incomplete"),
    "empty": (lambda s: b"", "incomplete"),
    "trailing-zero-byte": (lambda s: s + b"\x00", "1 bytes after the end of the DEFLATE stream"),
    "trailing-second-stream": (lambda s: s + deflate(b"{}"), "after the end of the DEFLATE stream"),
}


def _stream_attack(kind: str, label: str, fn, fragment: str):
    stage = "verify" if kind == "metadata" else "graph"
    match = (kind, fragment) if fragment else kind

    @attack(f"{kind}-deflate-{label}", "dense", FormatError, match, stage=stage)
    def _(d):
        i = d.index(kind)
        d.payloads[i] = Stored(fn(d.stored(i)))
        return d.build()


for _kind in DEFLATED_KINDS:
    for _label, (_fn, _fragment) in _BAD_STREAMS.items():
        _stream_attack(_kind, _label, _fn, _fragment)

    @attack(f"control-{_kind}-stored-uncompressed", "dense", None, "", stage="ok")
    def _(d, kind=_kind):
        i = d.index(kind)
        d.payloads[i] = Stored(_raw_deflate(d.payloads[i], 0))  # DEFLATE stored blocks: valid
        return d.build()


@attack("control-metadata-utf8", "dense", None, "", stage="ok")
def _(d):
    d.payloads[0] = json.dumps({"producer": "\u00e9t\u00e9"}, ensure_ascii=False).encode()  # UTF-8 JSON is fine here
    return d.build()


@attack("graph-not-a-modelproto", "dense", FormatError, "graph", stage="graph")
def _(d):
    d.payloads[1] = b"\xff" * 40
    return d.build()


@attack("graph-truncated-modelproto", "dense", FormatError, "graph", stage="graph")
def _(d):
    d.payloads[1] = d.payloads[1][: len(d.payloads[1]) // 2]
    return d.build()


@attack("graph-is-json", "dense", FormatError, "graph", stage="graph")
def _(d):
    d.payloads[1] = b'{"graph": "not protobuf", "nodes": [1, 2, 3]}'
    return d.build()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([b]))
        out.append(b | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@attack("graph-deeply-nested", "dense", FormatError, "graph", stage="graph")
def _(d):
    g = b""
    for _ in range(2000):  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g -> GraphProto ...
        g = _field(1, _field(5, _field(6, g)))
    d.payloads[1] = _field(7, g)  # ModelProto.graph
    return d.build()


@attack("graph-field-length-past-end", "dense", FormatError, "graph", stage="graph")
def _(d):
    d.payloads[1] = _varint(7 << 3 | 2) + _varint(2**62) + b"\x00" * 16
    return d.build()


# Graph tensors that would make ONNX Runtime read another file (found while fuzzing to_onnx:
# the reference check used to look at initializers and tensor attributes only). ORT resolves
# EXTERNAL data of sparse tensors, also in Constant nodes, against its working directory.


def _external(t, location: str = "secret.bin", tensor: str | None = None):
    """``t`` turned into an EXTERNAL tensor: a file (offset/length) or, with ``tensor``, a record reference."""
    from onnx import TensorProto

    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = [("location", location)] + ([("tensor", tensor)] if tensor else [("offset", "0"), ("length", "16")])
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def _zeros4(name: str = "w"):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(4, np.float32), name)


def _sparse4(values):
    from onnx import helper, numpy_helper

    return helper.make_sparse_tensor(values, numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_idx"), [4])


def _model(nodes=None, initializer=None, sparse_initializer=(), functions=(), training_init=None) -> bytes:
    """y = x + w over float32 [4] (w an initializer unless told otherwise), with the given extras."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = nodes if nodes is not None else [helper.make_node("Add", ["x", "w"], ["y"])]
    inits = initializer if initializer is not None else [_zeros4()]
    g = helper.make_graph(nodes, "g", [x], [y], inits, sparse_initializer=list(sparse_initializer))
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("local", 1)] if functions else [])
    model = helper.make_model(g, opset_imports=opsets)
    model.functions.extend(functions)
    if training_init is not None:
        model.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], [training_init]))
    return model.SerializeToString()


def _node(*args, **kw):
    from onnx import helper

    return helper.make_node(*args, **kw)


def _add_k_function(k):
    """A model-local function b = a + k, k a Constant node inside the function."""
    from onnx import helper

    return helper.make_function("local", "AddK", ["a"], ["b"],
                                [_node("Constant", [], ["k"], value=k), _node("Add", ["a", "k"], ["b"])],
                                [helper.make_opsetid("", 17)])


def _int_attribute_holding_tensor():
    from onnx import AttributeProto

    node = _node("Add", ["x", "w"], ["y"])
    a = node.attribute.add()
    a.name, a.type, a.i = "hidden", AttributeProto.INT, 1
    a.t.CopyFrom(_external(_zeros4("h")))  # declared INT: a walk by attribute type would not look here
    return _model(nodes=[node])


def _graph_attack(name, error, match, make_graph, stage="graph"):
    @attack(name, "dense", error, match, stage=stage)
    def _(d):
        d.payloads[d.index("graph")] = make_graph()
        return d.build()


_OUTSIDE = {
    "graph-external-sparse-initializer": lambda: _model(initializer=[], sparse_initializer=[_sparse4(_external(_zeros4()))]),
    "graph-external-sparse-constant": lambda: _model(initializer=[], nodes=[
        _node("Constant", [], ["w"], sparse_value=_sparse4(_external(_zeros4()))), _node("Add", ["x", "w"], ["y"])]),
    "graph-external-in-function": lambda: _model(initializer=[], nodes=[_node("AddK", ["x"], ["y"], domain="local")],
                                                 functions=[_add_k_function(_external(_zeros4("k")))]),
    "graph-external-in-training-info": lambda: _model(training_init=_external(_zeros4("t"))),
    "graph-external-in-attribute-declared-int": _int_attribute_holding_tensor,
    "graph-external-absolute-path": lambda: _model(initializer=[_external(_zeros4(), "/etc/hostname")]),
    "graph-external-location-dcz-without-tensor": lambda: _model(initializer=[_external(_zeros4(), "dcz")]),
}
_RECORD_IN_WRONG_PLACE = {
    "graph-record-reference-in-sparse-initializer": lambda: _model(
        initializer=[], sparse_initializer=[_sparse4(_external(_zeros4(), "dcz", "dense.w"))]),
    "graph-record-reference-in-function": lambda: _model(
        initializer=[], nodes=[_node("AddK", ["x"], ["y"], domain="local")],
        functions=[_add_k_function(_external(_zeros4("k"), "dcz", "dense.w"))]),
}
HOSTILE_GRAPHS = {**_OUTSIDE, **_RECORD_IN_WRONG_PLACE}  # name -> bytes of the graph section (plain ModelProto)
for _name, _make in _OUTSIDE.items():
    _graph_attack(_name, FormatError, ("graph", "outside the .dcz"), _make)
for _name, _make in _RECORD_IN_WRONG_PLACE.items():
    _graph_attack(_name, FormatError, ("graph", "'dense.w'", "not filled in"), _make)
_graph_attack("control-graph-sparse-initializer-holding-its-data", None, "",
              lambda: _model(initializer=[], sparse_initializer=[_sparse4(_zeros4())]), stage="ok")


def amplifying_graph(record: str, numel: int, n: int) -> bytes:
    """A ModelProto whose ``n`` float32 [numel] initializers all refer to one record."""
    from onnx import TensorProto, helper

    refs = [_external(TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[numel]), "dcz", record)
            for i in range(n)]
    return helper.make_model(helper.make_graph([], "g", [], [], refs)).SerializeToString()


@attack("graph-references-amplify-one-record", "dense", LimitError, ("graph", "once per reference"), stage="graph")
def _(d):
    # 2,000 initializers naming one 4 MiB record: a rebuilt model would hold 8 GB (found by review while
    # fuzzing to_onnx); the references, counted once each, must obey the expansion bound too
    numel = 1 << 20
    bomb = bomb_dense([numel], 1 << 24)
    graph = amplifying_graph("bomb", numel, 2000)
    return Dcz.of_sections([("graph", graph, None), ("tensor", bomb.payloads[0], bomb.entries[0]["tensor"])]).build()


# ----------------------------------------------------------------------------- tensor descriptors


def _desc_attack(name, sample, tensor, error, match, edit):
    @attack(name, sample, error, match)
    def _(d):
        edit(d.desc(tensor))
        return d.build()


def _set(key, value):
    return lambda t: t.__setitem__(key, value)


def _pop(key):
    return lambda t: t.pop(key)


for _label, _fn in BAD_INTS.items():
    _desc_attack(f"shape-dim-{_label}", "raw", "raw.w", TensorError, "tensor 'raw.w'",
                 lambda t, f=_fn: t.__setitem__("shape", [f(t["shape"][0]), t["shape"][1]]))
    for _key in ("codebook_size", "lane_size", "gap_bits", "entries"):
        _desc_attack(f"{_key}-{_label}", "sparse", "sparse.w", TensorError, f"'{_key}'",
                     lambda t, f=_fn, k=_key: t.__setitem__(k, f(t[k])))
    for _key in ("codebook_size", "lane_size"):
        _desc_attack(f"dense-{_key}-{_label}", "dense", "dense.w", TensorError, f"'{_key}'",
                     lambda t, f=_fn, k=_key: t.__setitem__(k, f(t[k])))
    _desc_attack(f"part-length-{_label}", "dense", "dense.w", TensorError, "part 'indices'",
                 lambda t, f=_fn: t["parts"].__setitem__("indices", f(t["parts"]["indices"])))

for _label, _value in {
    "string": "3,4", "number": 12, "null": None, "object": {"0": 3}, "nested": [[3], [4]],
    "floats": [3.0, 4.0], "bools": [True, 12], "negative": [-3, -4], "neg-and-zero": [-1, 0],
    "huge": [10**30, 1], "2^40x2^40": [2**40, 2**40], "2^41": [2**41], "40-dims": [1] * 40,
    "33-dims": [1] * 33,
}.items():
    _desc_attack(f"shape-{_label}", "raw", "raw.w", TensorError, "tensor 'raw.w'", _set("shape", _value))

for _label, _value in {
    "unknown": "float128", "case": "Float32", "int": 4, "null": None, "list": ["float32"],
    "object": {"float32": 1}, "empty": "",
}.items():
    _desc_attack(f"dtype-{_label}", "raw", "raw.w", TensorError, "tensor 'raw.w'", _set("dtype", _value))

for _label, _value in {
    "unknown": "zstd", "case": "RAW", "int": 1, "null": None, "list": ["raw"], "object": {"raw": 1},
}.items():
    _desc_attack(f"encoding-{_label}", "raw", "raw.w", TensorError, "tensor 'raw.w'", _set("encoding", _value))

for _label, _value in {"float64": "float64", "bfloat16": "bfloat16", "int": 2, "list": ["float32"], "null": None}.items():
    _desc_attack(f"codebook-dtype-{_label}", "dense", "dense.w", TensorError, "codebook_dtype",
                 _set("codebook_dtype", _value))

for _label, _value in {"int": 5, "null": None, "list": ["raw.w"], "object": {"n": 1}, "too-long": "w" * 5000}.items():
    _desc_attack(f"name-{_label}", "raw", "raw.w", TensorError, "section 2", _set("name", _value))

for _label, _edit in {
    "not-object": lambda t: t.__setitem__("parts", [["data", 48]]),
    "missing": _pop("parts"),
    "missing-part": lambda t: t["parts"].pop("lane_bases"),
    "extra-part": lambda t: t["parts"].__setitem__("extra", 0),
    "wrong-order": lambda t: t.__setitem__("parts", dict(reversed(list(t["parts"].items())))),
    "renamed": lambda t: t.__setitem__("parts", {("idx" if k == "indices" else k): v for k, v in t["parts"].items()}),
}.items():
    _desc_attack(f"parts-{_label}", "sparse", "sparse.w", TensorError, "tensor 'sparse.w'", _edit)

@attack("tensor-descriptor-missing", "raw", TensorError, "section 3")
def _(d):
    return d.build(lambda h: _sections(h)[3].pop("tensor"))


@attack("tensor-descriptor-not-object", "raw", TensorError, "section 2")
def _(d):
    return d.build(lambda h: _sections(h)[2].__setitem__("tensor", ["raw.w", "float32"]))


@attack("parts-do-not-add-up", "dense", TensorError, "parts add up")
def _(d):
    return d.build(lambda h: _sections(h)[2]["tensor"]["parts"].__setitem__("codebook", 8))


@attack("part-longer-than-section", "dense", TensorError, "part 'indices'")
def _(d):
    def t(h):
        p = _sections(h)[2]["tensor"]["parts"]
        p["indices"] = _sections(h)[2]["length"] + 1

    return d.build(t)


@attack("raw-data-length-mismatch", "raw", TensorError, "raw data")
def _(d):
    d.desc("raw.w")["shape"] = [4, 4]
    return d.build()


@attack("raw-shape-zero", "raw", TensorError, "raw data")
def _(d):
    d.desc("raw.w")["shape"] = [0, 4]
    d.desc("raw.w")["nonzeros"] = 0  # consistent with the new shape: the data length is what is wrong
    return d.build()


@attack("codebook-on-int-dtype", "dense", TensorError, "floating-point")
def _(d):
    d.desc("dense.w")["dtype"] = "int32"
    return d.build()


@attack("codebook-size-inconsistent-with-parts", "dense", TensorError, "codebook part")
def _(d):
    d.desc("dense.w")["codebook_size"] += 1
    return d.build()


@attack("codebook-size-too-big", "dense", TensorError, "'codebook_size'")
def _(d):
    d.desc("dense.w")["codebook_size"] = 257
    return d.build()


@attack("dense-empty-codebook", "dense", TensorError, "needs a codebook")
def _(d):
    d.desc("dense.w")["codebook_size"] = 0
    d.set_parts("dense.w", codebook=b"")
    return d.build()


@attack("sparse-codebook-size-inconsistent", "sparse", TensorError, "codebook part")
def _(d):
    d.desc("sparse.w")["codebook_size"] -= 1
    return d.build()


@attack("lane-size-changed", "dense", HuffmanError, "tensor 'dense.w'", stage="verify", tensor="dense.w")
def _(d):
    d.desc("dense.w")["lane_size"] = 2 * LANE  # half the lanes: the lane table is misread
    return d.build()


@attack("gap-bits-narrowed", "sparse", HuffmanError, "tensor 'sparse.w'", stage="verify", tensor="sparse.w")
def _(d):
    # 2 -> 1: the gap code's lengths of symbols 2 and 3 become non-zero padding. (Widening
    # instead is harmless: the extra symbols get length 0 from the padding, and a gap's
    # value does not depend on gap_bits, so the file decodes to the same tensor.)
    d.desc("sparse.w")["gap_bits"] -= 1
    return d.build()


@attack("lane-size-not-power-of-two", "dense", TensorError, "power of two")
def _(d):
    d.desc("dense.w")["lane_size"] = 300
    return d.build()


@attack("lane-size-too-small", "dense", TensorError, "'lane_size'")
def _(d):
    d.desc("dense.w")["lane_size"] = 128
    return d.build()


@attack("lane-size-too-big", "dense", TensorError, "'lane_size'")
def _(d):
    d.desc("dense.w")["lane_size"] = 1 << 25
    return d.build()


@attack("gap-bits-zero", "sparse", TensorError, "'gap_bits'")
def _(d):
    d.desc("sparse.w")["gap_bits"] = 0
    return d.build()


@attack("gap-bits-nine", "sparse", TensorError, "'gap_bits'")
def _(d):
    d.desc("sparse.w")["gap_bits"] = 9
    return d.build()


@attack("entries-more-than-numel", "sparse", TensorError, "'entries'")
def _(d):
    d.desc("sparse.w")["entries"] = SPARSE_SHAPE[0] + 1
    return d.build()


@attack("entries-lane-count-mismatch", "sparse", TensorError, "lane_bases part")
def _(d):
    d.desc("sparse.w")["entries"] += LANE  # one lane more than lane_bases has
    return d.build()


@attack("entries-one-fewer", "sparse", HuffmanError, "tensor 'sparse.w'", stage="verify", tensor="sparse.w")
def _(d):
    t = d.desc("sparse.w")
    assert t["entries"] % LANE != 1
    t["entries"] -= 1  # same lane count; the last lane then has unused codes
    return d.build()


# ----------------------------------------------------------------------------- Huffman code lengths


def _lengths_attack(name, match, edit, tensor="dense.w", part="indices", error=HuffmanError):
    @attack(name, tensor.split(".")[0], error, match, stage="verify", tensor=tensor)
    def _(d):
        s = d.stream(tensor, part)
        edit(s)
        d.set_stream(tensor, part, s)
        return d.build()


def _set_lengths(*values):
    def edit(s):
        s.lengths[:] = bytes(values)

    return edit


_lengths_attack("huffman-over-subscribed", "over-subscribed", _set_lengths(1, 1, 2, 2))
_lengths_attack("huffman-over-subscribed-all-1", "over-subscribed", _set_lengths(1, 1, 1, 1))
_lengths_attack("huffman-incomplete", "incomplete", _set_lengths(2, 2, 2, 0))
_lengths_attack("huffman-incomplete-long", "incomplete", _set_lengths(1, 2, 3, 15))
# a nibble holds at most 15 = MAX_CODE_LENGTH: "too long" is no longer expressible, the longest lengths are
_lengths_attack("huffman-all-lengths-15", "incomplete", _set_lengths(15, 15, 15, 15))
_lengths_attack("huffman-packed-table-ff", "incomplete", lambda s: s.set_table(b"\xff\xff"))
_lengths_attack("huffman-packed-table-over-subscribed", "over-subscribed", lambda s: s.set_table(b"\x11\xff"))
_lengths_attack("huffman-packed-table-one-byte-per-length", "tensor 'dense.w'",
                lambda s: (s.pad.__setitem__(slice(0, 2), s.table[1:]), s.set_table(bytes([s.lengths[0], s.lengths[1]]))))
_lengths_attack("huffman-single-symbol-length-2", "single-symbol", _set_lengths(0, 2, 0, 0))
_lengths_attack("huffman-no-symbols", "no symbols", _set_lengths(0, 0, 0, 0))
_lengths_attack("huffman-nonzero-length-padding", "padding after the code lengths",
                lambda s: s.pad.__setitem__(0, 1))
_lengths_attack("sparse-gap-code-over-subscribed", "over-subscribed",
                lambda s: s.lengths.__setitem__(slice(None), bytes([1, 1, 1, 1])), "sparse.w", "gaps")
_lengths_attack("sparse-index-code-incomplete", "incomplete",
                lambda s: s.lengths.__setitem__(slice(None), bytes([2, 2, 2, 0])), "sparse.w", "indices")
_lengths_attack("sparse-index-code-length-15", "tensor 'sparse.w'",
                lambda s: s.lengths.__setitem__(0, 15), "sparse.w", "indices")


# odd alphabets: the low nibble of the table's last byte belongs to no symbol and must be 0

def odd_alphabet_tensor(name: str = "odd", spare: int = 0) -> tuple[bytes, dict]:
    """(payload, descriptor) of a codebook-dense float32 [8] tensor over a codebook of 3 (an odd alphabet):
    code lengths 1 2 2, eight symbols 0 (eight 0 bits), so every element is 1.0."""
    parts = {"codebook": struct.pack("<3f", 1.0, 2.0, 3.0),
             "indices": make_stream(3, {0: 1, 1: 2, 2: 2}, [0], b"\x00", spare=spare)}
    payload, lengths = join_parts(parts)
    desc = {"name": name, "dtype": "float32", "shape": [8], "encoding": "codebook-dense", "nonzeros": 8,
            "codebook_dtype": "float32", "codebook_size": 3, "lane_size": LANE, "parts": lengths}
    return payload, desc


def _with_odd_tensor(d: Dcz, spare: int) -> bytes:
    payload, desc = odd_alphabet_tensor(spare=spare)
    d.header["sections"].append({"kind": "tensor", "length": 0, "crc32": 0, "tensor": desc})
    d.payloads.append(payload)
    return d.build()


@attack("control-odd-alphabet", "dense", None, "", stage="ok")
def _(d):
    assert make_stream(3, {0: 1, 1: 2, 2: 2}, [0])[:2] == b"\x12\x20"  # spec 13.1's packing
    return _with_odd_tensor(d, 0)


for _spare in (1, 8, 15):
    @attack(f"huffman-unused-nibble-{_spare}", "dense", HuffmanError, ("tensor 'odd'", "unused low nibble"),
            stage="verify", tensor="odd")
    def _(d, spare=_spare):
        return _with_odd_tensor(d, spare)


@attack("huffman-unused-nibble-single-symbol", "dense", HuffmanError, ("tensor 'bomb'", "unused low nibble"),
        stage="verify", tensor="bomb")
def _(d):
    b = bomb_dense([1000], LANE)  # alphabet 1: the table is one byte, 0x10
    s = b.stream("bomb", "indices")
    assert s.table == b"\x10"
    s.spare = 1
    b.set_stream("bomb", "indices", s)
    return b.build()

# ----------------------------------------------------------------------------- lanes


def _offsets_edit(fn):
    def edit(s):
        s.offsets = fn(list(s.offsets), len(s.payload))

    return edit


_lengths_attack("lane-offset-first-nonzero", "first lane offset", _offsets_edit(lambda o, n: [1] + o[1:]))
_lengths_attack("lane-offsets-decreasing", "decrease", _offsets_edit(lambda o, n: [0, o[2], o[1]] + o[3:]))
_lengths_attack("lane-offset-past-payload", "past the payload", _offsets_edit(lambda o, n: o[:-1] + [n + 1]))
_lengths_attack("lane-offset-u64-max", "past the payload", _offsets_edit(lambda o, n: o[:-1] + [2**64 - 1]))
_lengths_attack("lane-offset-2^63", "past the payload", _offsets_edit(lambda o, n: o[:-1] + [2**63]))
_lengths_attack("sparse-gap-lane-offset-past-payload", "past the payload",
                _offsets_edit(lambda o, n: o[:-1] + [n + 8]), "sparse.w", "gaps")
_lengths_attack("sparse-index-lane-offsets-decreasing", "decrease",
                _offsets_edit(lambda o, n: [0, o[2], o[1]] + o[3:]), "sparse.w", "indices")


@attack("stream-shorter-than-lane-table", "dense", HuffmanError, "shorter than its code table", stage="verify",
        tensor="dense.w")
def _(d):
    s = d.stream("dense.w", "indices")
    d.set_parts("dense.w", indices=s.to_bytes()[: len(s.to_bytes()) - len(s.payload) - 1])
    return d.build()


def dense_lane_bits(lengths: bytes) -> list[int]:
    """Bits each lane of the dense sample's index stream holds."""
    _, bitlen = canonical_codes(np.frombuffer(bytes(lengths), np.uint8))
    sym = dense_indices()
    return [int(bitlen[sym[i : i + LANE]].sum()) for i in range(0, sym.size, LANE)]


def _padded_lane(s: StreamParts) -> tuple[int, int]:
    """(lane, its last byte) for a lane of the dense sample whose last byte holds padding bits."""
    for lane, bits in enumerate(dense_lane_bits(s.lengths)):
        if bits % 8:
            assert s.offsets[lane] + (bits + 7) // 8 == s.lane_end(lane)
            return lane, s.lane_end(lane) - 1
    raise AssertionError("no lane of the dense sample has padding bits")


@attack("lane-padding-bits-nonzero", "dense", HuffmanError, "padding bits", stage="verify", tensor="dense.w")
def _(d):
    s = d.stream("dense.w", "indices")
    _, last = _padded_lane(s)
    s.payload[last] |= 1  # the lowest bit of a lane's last byte is padding here
    d.set_stream("dense.w", "indices", s)
    return d.build()


@attack("lane-extra-trailing-byte-last", "dense", HuffmanError, "unused trailing bytes", stage="verify",
        tensor="dense.w")
def _(d):
    s = d.stream("dense.w", "indices")
    s.payload.append(0)
    d.set_stream("dense.w", "indices", s)
    return d.build()


@attack("lane-extra-trailing-byte-middle", "dense", HuffmanError, "lane 1", stage="verify", tensor="dense.w")
def _(d):
    s = d.stream("dense.w", "indices")
    end = s.lane_end(1)
    s.payload[end:end] = b"\x00"
    s.offsets = s.offsets[:2] + [o + 1 for o in s.offsets[2:]]
    d.set_stream("dense.w", "indices", s)
    return d.build()


@attack("lane-missing-last-byte", "dense", HuffmanError, "run past the end of the lane", stage="verify",
        tensor="dense.w")
def _(d):
    s = d.stream("dense.w", "indices")
    s.payload.pop()
    d.set_stream("dense.w", "indices", s)
    return d.build()


@attack("lanes-merged", "dense", HuffmanError, "index stream lane 0", stage="verify", tensor="dense.w")
def _(d):
    s = d.stream("dense.w", "indices")
    s.offsets[1] = s.offsets[2]  # lane 0 claims lane 1's bytes too
    d.set_stream("dense.w", "indices", s)
    return d.build()


@attack("sparse-gap-lane-extra-byte", "sparse", HuffmanError, "gap stream lane", stage="verify", tensor="sparse.w")
def _(d):
    s = d.stream("sparse.w", "gaps")
    s.payload.append(0)
    d.set_stream("sparse.w", "gaps", s)
    return d.build()


@attack("sparse-index-lane-extra-byte", "sparse", HuffmanError, "index stream lane", stage="verify",
        tensor="sparse.w")
def _(d):
    s = d.stream("sparse.w", "indices")
    s.payload.append(0)
    d.set_stream("sparse.w", "indices", s)
    return d.build()


@attack("stream-of-zero-symbols-not-empty", "dense", HuffmanError, "0 symbols", stage="verify", tensor="dense.w")
def _(d):
    d.desc("dense.w")["shape"] = [0, 25]
    d.desc("dense.w")["nonzeros"] = 0  # consistent with the new shape: the stream is what is wrong
    return d.build()


# ----------------------------------------------------------------------------- sparse: gaps and lane bases


@attack("gap-runs-past-tensor-end", "sparse", HuffmanError, "past the end of the tensor", stage="verify",
        tensor="sparse.w")
def _(d):
    d.desc("sparse.w")["shape"] = [SPARSE_SHAPE[0] - 1]  # the last (non-zero) element falls off the end
    return d.build()


def _bases(d: Dcz) -> list[int]:
    b = d.parts("sparse.w")["lane_bases"]
    return list(struct.unpack(f"<{len(b) // 8}Q", b))


def _set_bases(d: Dcz, bases: list[int]) -> None:
    d.set_parts("sparse.w", lane_bases=struct.pack(f"<{len(bases)}Q", *bases))


@attack("lane-bases-not-matching", "sparse", HuffmanError, "next lane's base", stage="verify", tensor="sparse.w")
def _(d):
    b = _bases(d)
    b[1] += 1
    _set_bases(d, b)
    return d.build()


@attack("lane-bases-swapped", "sparse", HuffmanError, "tensor 'sparse.w'", stage="verify", tensor="sparse.w")
def _(d):
    b = _bases(d)
    b[1], b[2] = b[2], b[1]
    _set_bases(d, b)
    return d.build()


@attack("lane-base-first-nonzero", "sparse", TensorError, "first lane base", stage="verify", tensor="sparse.w")
def _(d):
    b = _bases(d)
    b[0] = 1
    _set_bases(d, b)
    return d.build()


@attack("lane-base-past-tensor", "sparse", TensorError, "past the tensor", stage="verify", tensor="sparse.w")
def _(d):
    b = _bases(d)
    b[-1] = SPARSE_SHAPE[0] + 1
    _set_bases(d, b)
    return d.build()


@attack("lane-base-u64-max", "sparse", TensorError, "past the tensor", stage="verify", tensor="sparse.w")
def _(d):
    b = _bases(d)
    b[1] = 2**64 - 1
    _set_bases(d, b)
    return d.build()


@attack("nonzero-padding-between-parts", "sparse", TensorError, "padding before part 'lane_bases'", stage="verify",
        tensor="sparse.w")
def _(d):
    i = d.index("sparse.w")
    cb = d.desc("sparse.w")["parts"]["codebook"]
    assert cb % PART_ALIGNMENT, "the sample's codebook part must be followed by padding"
    p = bytearray(d.payloads[i])
    p[cb] = 0x80
    d.payloads[i] = bytes(p)
    return d.build()


# ----------------------------------------------------------------------------- raw data


@attack("bool-value-2", "raw", TensorError, "tensor 'raw.mask'", stage="verify", tensor="raw.mask")
def _(d):
    d.set_parts("raw.mask", data=b"\x01\x00\x02\x01\x00\x00\x01\x00")
    return d.build()


@attack("bool-value-255", "raw", TensorError, "bool", stage="verify", tensor="raw.mask")
def _(d):
    d.set_parts("raw.mask", data=b"\x01\x00\x00\x01\x00\x00\x01\xff")
    return d.build()


# ----------------------------------------------------------------------------- nonzeros


SAMPLE_TENSORS = {"raw.w": "raw", "raw.mask": "raw", "dense.w": "dense", "sparse.w": "sparse"}


def sample_nonzeros(tensor: str) -> int:
    """The non-zero elements of a sample tensor: what its descriptor's 'nonzeros' says."""
    return int(np.count_nonzero(expected_arrays(SAMPLE_TENSORS[tensor])[tensor]))


def sample_numel(tensor: str) -> int:
    return int(expected_arrays(SAMPLE_TENSORS[tensor])[tensor].size)


def _declares(tensor: str, found: int, declared: int) -> tuple[str, str]:
    """What the reader says when a decoded tensor's non-zero count is not the declared one."""
    return f"tensor {tensor!r}", f"decodes to {found} non-zero elements, the record declares {declared}"


def _section_of(tensor: str) -> int:
    return {"raw.w": 2, "raw.mask": 3, "dense.w": 2, "sparse.w": 2}[tensor]


# at open: 'nonzeros' must be an integer in [0, N]; for codebook-sparse, entries in [nonzeros, N]

for _t in SAMPLE_TENSORS:
    _n = sample_numel(_t)
    _where = f"tensor {_t!r} (section {_section_of(_t)})"
    _desc_attack(f"nonzeros-over-numel-{_t}", SAMPLE_TENSORS[_t], _t, TensorError,
                 (_where, f"'nonzeros' must be an integer in [0, {_n}], got {_n + 1}"), _set("nonzeros", _n + 1))
    _desc_attack(f"nonzeros-missing-{_t}", SAMPLE_TENSORS[_t], _t, TensorError, (_where, "'nonzeros'"), _pop("nonzeros"))
    for _label, _fn in BAD_INTS.items():
        _desc_attack(f"nonzeros-{_label}-{_t}", SAMPLE_TENSORS[_t], _t, TensorError, (_where, "'nonzeros'"),
                     lambda t, f=_fn: t.__setitem__("nonzeros", f(t["nonzeros"])))


@attack("sparse-entries-fewer-than-nonzeros", "sparse", TensorError,
        ("tensor 'sparse.w'", f"'entries' must be an integer in [{sample_nonzeros('sparse.w')}, {SPARSE_SHAPE[0]}]"))
def _(d):
    t = d.desc("sparse.w")
    t["entries"] = t["nonzeros"] - 1
    return d.build()


@attack("sparse-nonzeros-more-than-entries", "sparse", TensorError, ("tensor 'sparse.w'", "'entries'"))
def _(d):
    t = d.desc("sparse.w")
    assert t["entries"] < SPARSE_SHAPE[0]  # so that nonzeros stays in [0, N] and only entries >= nonzeros fails
    t["nonzeros"] = t["entries"] + 1
    return d.build()


@attack("sparse-all-zero-entries-zero-nonzeros-one", "sparse", TensorError, ("tensor 'sparse.w'", "'entries'"))
def _(d):
    # a record with no entries cannot hold a non-zero element, whatever its parts
    d.set_parts("sparse.w", codebook=b"", lane_bases=b"", gaps=b"", indices=b"")
    d.desc("sparse.w").update(codebook_size=0, entries=0, nonzeros=1)
    return d.build()


# the order of the descriptor checks (6.1): parts and section length, then nonzeros, then the rest

@attack("nonzeros-bad-and-parts-do-not-add-up", "dense", TensorError, "parts add up")
def _(d):
    def t(h):
        _sections(h)[2]["tensor"]["parts"]["codebook"] = 8
        _sections(h)[2]["tensor"]["nonzeros"] = -1

    return d.build(t)


@attack("nonzeros-bad-and-raw-data-mismatch", "raw", TensorError, ("tensor 'raw.w'", "'nonzeros'"))
def _(d):
    d.desc("raw.w").update(shape=[4, 4], nonzeros=17)
    return d.build()


@attack("nonzeros-bad-and-codebook-on-int-dtype", "dense", TensorError, ("tensor 'dense.w'", "'nonzeros'"))
def _(d):
    d.desc("dense.w").update(dtype="int32", nonzeros=1001)
    return d.build()


@attack("nonzeros-bad-and-entries-bad", "sparse", TensorError, ("tensor 'sparse.w'", "'nonzeros'"))
def _(d):
    d.desc("sparse.w").update(entries=-1, nonzeros=SPARSE_SHAPE[0] + 1)
    return d.build()


# at decode: the decoded tensor has exactly 'nonzeros' non-zero elements (CRCs recomputed: only this check is left)

for _t in SAMPLE_TENSORS:
    _nz = sample_nonzeros(_t)
    for _delta, _label in ((+1, "one-more"), (-1, "one-fewer")):
        if 0 <= _nz + _delta <= sample_numel(_t):
            _a = attack(f"nonzeros-{_label}-{_t}", SAMPLE_TENSORS[_t], TensorError, _declares(_t, _nz, _nz + _delta),
                        stage="verify", tensor=_t)
            _a(lambda d, t=_t, v=_nz + _delta: (d.desc(t).__setitem__("nonzeros", v), d.build())[1])


def _raw_w_element(d: Dcz, at: int, value: float) -> None:
    data = bytearray(d.parts("raw.w")["data"])
    data[4 * at : 4 * at + 4] = struct.pack("<f", value)
    d.set_parts("raw.w", data=bytes(data))


RAW_W_ZERO_AT = 4  # raw.w is arange(12) * 0.25 - 1: element 4 is the only zero


@attack("raw-negative-zero-counts-as-zero", "raw", None, "", stage="ok")
def _(d):
    _raw_w_element(d, RAW_W_ZERO_AT, -0.0)  # nonzeros stays 11
    return d.build()


@attack("raw-negative-zero-declared-non-zero", "raw", TensorError, _declares("raw.w", 11, 12), stage="verify",
        tensor="raw.w")
def _(d):
    _raw_w_element(d, RAW_W_ZERO_AT, -0.0)
    d.desc("raw.w")["nonzeros"] = 12
    return d.build()


@attack("raw-nan-counts-as-non-zero", "raw", None, "", stage="ok")
def _(d):
    _raw_w_element(d, RAW_W_ZERO_AT, float("nan"))
    d.desc("raw.w")["nonzeros"] = 12
    return d.build()


@attack("raw-nan-declared-zero", "raw", TensorError, _declares("raw.w", 12, 11), stage="verify", tensor="raw.w")
def _(d):
    _raw_w_element(d, RAW_W_ZERO_AT, float("nan"))  # the data changed, the record did not
    return d.build()


@attack("raw-bool-flipped", "raw", TensorError, _declares("raw.mask", 5, 4), stage="verify", tensor="raw.mask")
def _(d):
    d.set_parts("raw.mask", data=b"\x01\x00\x01\x01\x01\x00\x01\x00")  # one more True, record unchanged
    return d.build()


def _set_codebook_entry(d: Dcz, tensor: str, k: int, value: float) -> None:
    cb = bytearray(d.parts(tensor)["codebook"])
    cb[4 * k : 4 * k + 4] = struct.pack("<f", value)
    d.set_parts(tensor, codebook=bytes(cb))


DENSE_SYMBOL0 = int(np.count_nonzero(dense_indices() == 0))  # elements that decode to codebook entry 0


@attack("dense-codebook-entry-zeroed", "dense", TensorError, _declares("dense.w", 1000 - DENSE_SYMBOL0, 1000),
        stage="verify", tensor="dense.w")
def _(d):
    _set_codebook_entry(d, "dense.w", 0, 0.0)
    return d.build()


@attack("dense-codebook-entry-negative-zero", "dense", TensorError, _declares("dense.w", 1000 - DENSE_SYMBOL0, 1000),
        stage="verify", tensor="dense.w")
def _(d):
    _set_codebook_entry(d, "dense.w", 0, -0.0)
    return d.build()


@attack("dense-codebook-entry-negative-zero-declared", "dense", None, "", stage="ok")
def _(d):
    _set_codebook_entry(d, "dense.w", 0, -0.0)
    d.desc("dense.w")["nonzeros"] = 1000 - DENSE_SYMBOL0
    return d.build()


@attack("dense-codebook-entry-nan", "dense", None, "", stage="ok")
def _(d):
    _set_codebook_entry(d, "dense.w", 0, float("nan"))  # NaN is not zero: the count is unchanged
    return d.build()


SPARSE_SYMBOL1 = int(np.count_nonzero(sparse_indices() == 1))  # elements that decode to codebook entry 0 (0.5)


@attack("sparse-codebook-entry-zeroed", "sparse", TensorError,
        _declares("sparse.w", sample_nonzeros("sparse.w") - SPARSE_SYMBOL1, sample_nonzeros("sparse.w")),
        stage="verify", tensor="sparse.w")
def _(d):
    _set_codebook_entry(d, "sparse.w", 0, 0.0)
    return d.build()


@attack("sparse-codebook-entry-zeroed-declared", "sparse", None, "", stage="ok")
def _(d):
    # a stored entry may decode to zero (a writer should not do it, a reader accepts it) if the count says so
    _set_codebook_entry(d, "sparse.w", 0, 0.0)
    d.desc("sparse.w")["nonzeros"] -= SPARSE_SYMBOL1
    return d.build()


# ----------------------------------------------------------------------------- decompression bombs


def bomb_dense(shape, lane_size, lanes=None, dtype="float32") -> Dcz:
    """A codebook-dense tensor of ``shape`` whose index stream is a single-symbol code: zero payload bits."""
    numel = int(np.prod(shape, dtype=object))
    nl = num_lanes(numel, lane_size) if lanes is None else lanes
    parts = {"codebook": struct.pack("<f", 1.5), "indices": make_stream(1, {0: 1}, [0] * nl)}
    payload, lengths = join_parts(parts)
    desc = {"name": "bomb", "dtype": dtype, "shape": list(shape), "encoding": "codebook-dense",
            "nonzeros": numel,  # every element is 1.5: the record is consistent, only its size is hostile
            "codebook_dtype": "float32", "codebook_size": 1, "lane_size": lane_size, "parts": lengths}
    return Dcz.of_sections([("tensor", payload, desc)])


def bomb_sparse(shape, entries=0, lane_size=1 << 24) -> Dcz:
    """An all-zero codebook-sparse tensor of ``shape``: nothing stored at all."""
    parts = {"codebook": b"", "lane_bases": bytes(8 * num_lanes(entries, lane_size)), "gaps": b"", "indices": b""}
    payload, lengths = join_parts(parts)
    desc = {"name": "zeros", "dtype": "float32", "shape": list(shape), "encoding": "codebook-sparse",
            "nonzeros": 0, "codebook_dtype": "float32", "codebook_size": 0, "lane_size": lane_size, "gap_bits": 8,
            "entries": entries, "parts": lengths}
    return Dcz.of_sections([("tensor", payload, desc)])


@attack("bomb-dense-2^33-single-symbol", "dense", LimitError, "decoded bytes")
def _(d):
    return bomb_dense([2**33], 1 << 24).build()


@attack("bomb-dense-2^33-float64", "dense", LimitError, "decoded bytes")
def _(d):
    return bomb_dense([2**17, 2**16], 1 << 24, dtype="float64").build()


@attack("bomb-sparse-all-zero-2^33", "dense", LimitError, "decoded bytes")
def _(d):
    return bomb_sparse([2**33]).build()


@attack("bomb-sum-of-tensors", "dense", LimitError, "decoded bytes")
def _(d):
    one = bomb_dense([2**21], 1 << 24)  # 8 MiB each: fine alone, not all ten together
    sections = []
    for k in range(10):
        desc = copy.deepcopy(one.entries[0]["tensor"])
        desc["name"] = f"bomb{k}"
        sections.append(("tensor", one.payloads[0], desc))
    return Dcz.of_sections(sections).build()


@attack("bomb-lane-table-claims-billions", "dense", LimitError, "decoded bytes")
def _(d):
    return bomb_dense([2**33], LANE, lanes=4).build()  # 2^25 lanes declared by the shape, 4 stored


@attack("bomb-lane-table-claims-billions-override", "dense", HuffmanError, "tensor 'bomb'", stage="verify",
        tensor="bomb", max_decoded_bytes=1 << 40)
def _(d):
    return bomb_dense([2**33], LANE, lanes=4).build()


@attack("bomb-sparse-lane-bases-claim-billions", "dense", TensorError, "lane_bases part")
def _(d):
    b = bomb_sparse([2**33], entries=0)
    b.desc("zeros")["entries"] = 2**33
    return b.build()


@attack("bomb-sparse-entries-billions-override", "dense", HuffmanError, "tensor 'zeros'", stage="verify",
        tensor="zeros", max_decoded_bytes=1 << 40)
def _(d):
    # 2^33 entries in lanes of 2^24: 512 lane bases fit the file; the streams claim nothing
    return bomb_sparse([2**33], entries=2**33).build()


@attack("max-decoded-bytes-below-file", "dense", LimitError, "max_decoded_bytes", max_decoded_bytes=100)
def _(d):
    return d.build()


@attack("max-decoded-bytes-zero", "raw", LimitError, "max_decoded_bytes", max_decoded_bytes=0)
def _(d):
    return d.build()


# ============================================================================ red-team review (issue 14)


@attack("padding-section-holds-a-script", "raw", FormatError, ("padding", "non-zero byte", "all zeros"))
def _(d):
    # spec 5.4: a padding section MUST be zero; with a valid CRC a shell script passed verify()
    d.header["sections"].append({"kind": "padding", "length": 0, "crc32": 0})
    d.payloads.append(b"#!/bin/sh\ntouch /tmp/pwned\n" + bytes(100))
    return d.build()


@attack("padding-section-zeros", "raw", None, "", stage="ok")
def _(d):
    d.header["sections"].append({"kind": "padding", "length": 0, "crc32": 0})
    d.payloads.append(bytes(4096))
    return d.build()


@attack("tensor-name-lone-surrogate", "raw", TensorError, ("lone surrogate", "mask\\ud800"))
def _(d):
    d.desc("raw.mask")["name"] = "mask\ud800"  # the header is ASCII JSON: the escape decodes to a lone surrogate
    return d.build()


@attack("tensor-name-surrogate-pair-ok", "raw", None, "", stage="ok")
def _(d):
    d.desc("raw.mask")["name"] = "mask\U0001f600"  # a real character outside the BMP: valid
    return d.build()


# ============================================================================ writing them


ATTACK_NAMES = [a.name for a in ATTACKS]
assert len(set(ATTACK_NAMES)) == len(ATTACK_NAMES), "attack names must be unique"


def make(a: Attack, samples: dict[str, Path]) -> bytes:
    return a.make(Dcz.load(samples[a.sample]))


def write_attacks(directory, samples: dict[str, Path]) -> dict[str, Path]:
    """Write every crafted hostile file into ``directory``; returns name -> path."""
    directory = Path(directory)
    out = {}
    for a in ATTACKS:
        path = directory / f"{a.name}.dcz"
        path.write_bytes(make(a, samples))
        out[a.name] = path
    return out

"""Reading .dcz files: checked up front, tensors read and decoded lazily.

Section bytes are read with positioned reads (``os.pread``) of a descriptor held open, not
through a memory map: a file truncated while open (``cp other.dcz path`` does that) then gives
short reads, a :class:`FormatError`, where a map would kill the process with SIGBUS.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
import zlib
from collections.abc import Iterator, Mapping

import numpy as np

from .constants import (
    ALIGNMENT,
    EXPANSION_SLACK,
    GRAPH_OBJECT_COST,
    GRAPH_PARSE_FACTOR,
    JSON_PARSE_FACTOR,
    MAGIC,
    MAX_EXPANSION,
    MAX_HEADER_BYTES,
    MAX_SECTIONS,
    PREAMBLE_SIZE,
    SECTION_COST,
    SECTION_GRAPH,
    SECTION_METADATA,
    SECTION_PADDING,
    SECTION_TENSOR,
    VERSION_MAJOR,
    VERSION_MINOR,
    deflate_dict,
    expansion_bound,
)
from .container import PREAMBLE, Section, inflate
from .decode import decode_tensor
from .errors import ChecksumError, DczError, FormatError, LimitError, TensorError, VersionError
from .records import TensorInfo, parse_descriptor
from .streams import align


SCRATCH_BYTES = 64 << 20  # tensor sections up to this size are read into a reused per-thread buffer
GAP_WINDOW = 1 << 20  # the padding between sections is read in windows of up to this many bytes ...
GAP_JOIN = 16 << 10  # ... holding gaps at most this far apart: past that, reading the section between them costs
# more than a read of its own (a positioned read of a few bytes is ~1-2 us, copying 16 KiB from the page cache as much)


def _parse_json(data: bytes, what: str):
    def no_duplicates(pairs):
        d = dict(pairs)  # one C call per object (a header holds one per tensor, and its parts)
        if len(d) != len(pairs):
            seen = set()
            for k, _ in pairs:
                if k in seen:
                    raise FormatError(f"{what}: duplicate key {k!r}")
                seen.add(k)
        return d

    def reject_constant(name):
        raise FormatError(f"{what}: {name} is not allowed in JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=reject_constant)
    except DczError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"{what}: not valid JSON ({e})") from None


class DczReader(Mapping):
    """A .dcz file opened for reading. Use :func:`dcformat.open`.

    The whole structure is checked when the file is opened -- preamble and header
    checksums, the section table tiling the file, zero padding, every tensor record --
    and each tensor's data is checksummed and decoded when it is asked for::

        with dcformat.open("model.dcz") as r:
            names = list(r)            # tensor names, in file order
            w = r["fc1.weight"]        # numpy array, original dtype and shape
            r.info("fc1.weight")       # TensorInfo: encoding, stored bytes, parts ...
    """

    # The minor version this reader implements (spec 2.2): what later ones add is unknown to it. A tensor
    # record it cannot parse in a file of a later minor version is a VersionError (the file needs a newer
    # reader), not a TensorError. (A subclass with a lower MINOR reads exactly as that older reader.)
    MINOR = VERSION_MINOR

    def __init__(self, path, *, max_decoded_bytes: int | None = None):
        self.path = os.fspath(path)
        self.closed = False
        self._f = None
        self._lock = threading.Lock()  # for platforms without os.pread (seek + read)
        self._scratch = threading.local()  # per-thread buffer for tensor sections up to SCRATCH_BYTES
        try:
            self._f = builtins.open(self.path, "rb")
        except IsADirectoryError:
            raise FormatError(f"{self.path}: is a directory, not a .dcz file") from None
        try:
            self.file_size = os.fstat(self._f.fileno()).st_size
            self._parse(max_decoded_bytes)
        except BaseException:
            self.close()
            raise

    def _read_scratch(self, offset: int, length: int) -> np.ndarray:
        """Like :meth:`_read`, into a buffer this thread reuses (valid until its next call)."""
        if self.closed or self._f is None:
            raise DczError(f"{self.path}: the reader is closed")
        buf = getattr(self._scratch, "buf", None)
        if buf is None or len(buf) < length:
            buf = self._scratch.buf = bytearray(max(length, 1 << 16))
        view = memoryview(buf)[:length]
        got = 0
        try:
            while got < length:
                n = os.preadv(self._f.fileno(), [view[got:]], offset + got) if hasattr(os, "preadv") else 0
                if not hasattr(os, "preadv"):
                    return self._read(offset, length)
                if n == 0:
                    break
                got += n
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read bytes {offset}..{offset + length - 1}: "
                              f"{e.strerror or e}") from None
        if got < length:
            raise FormatError(f"{self.path}: bytes {offset}..{offset + length - 1} are missing: the file shrank "
                              f"to {offset + got} bytes while open (was {self.file_size}; was it overwritten?)")
        return np.frombuffer(buf, np.uint8, length)

    def _read(self, offset: int, length: int) -> np.ndarray:
        """``length`` bytes at ``offset`` (read-only array); FormatError if the file no longer holds them."""
        return np.frombuffer(self._read_bytes(offset, length), np.uint8)

    def _read_bytes(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; FormatError if the file no longer holds them."""
        if self.closed or self._f is None:
            raise DczError(f"{self.path}: the reader is closed")
        parts, pos, left = [], offset, length
        try:
            while left > 0:
                if hasattr(os, "pread"):
                    chunk = os.pread(self._f.fileno(), min(left, 1 << 30), pos)
                else:
                    with self._lock:
                        self._f.seek(pos)
                        chunk = self._f.read(min(left, 1 << 30))
                if not chunk:
                    break
                parts.append(chunk)
                pos += len(chunk)
                left -= len(chunk)
        except OSError as e:
            raise FormatError(f"{self.path}: cannot read bytes {offset}..{offset + length - 1}: "
                              f"{e.strerror or e}") from None
        if left:
            raise FormatError(f"{self.path}: bytes {offset}..{offset + length - 1} are missing: the file shrank "
                              f"to {pos} bytes while open (was {self.file_size}; was it overwritten?)")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # ------------------------------------------------------------------ structure
    def _inflate(self, data, cap: int, factor: int, what: str) -> bytes:
        """Inflate ``data`` (a DEFLATE-stored header, metadata or graph) under ``cap`` and under the
        parse limit: parsing takes up to ``factor`` bytes of memory per byte (spec section 10)."""
        bound = max(expansion_bound(self.file_size), self._override or 0)
        parse_limit = bound // factor
        if parse_limit >= cap:
            return inflate(data, cap, what, zdict=self._zdict)
        why = (f" ({bound} // {factor}: parsing it could take {factor} x that, and the limit is {MAX_EXPANSION} x "
               f"file size + {EXPANSION_SLACK}; pass max_decoded_bytes to raise it)")
        return inflate(data, parse_limit, what, why, zdict=self._zdict)

    def _parse(self, max_decoded_bytes):
        self._override = max_decoded_bytes
        size = self.file_size
        if size == 0:
            raise FormatError(f"{self.path}: not a .dcz file (empty)")
        self._buf = self._read(0, min(size, PREAMBLE_SIZE))  # then the preamble and the stored header
        if bytes(self._buf[:8]) != MAGIC[:size]:
            raise FormatError(f"{self.path}: not a .dcz file (bad magic at byte 0)")
        if size < PREAMBLE_SIZE:
            raise FormatError(f"{self.path}: truncated: {size} bytes, less than the {PREAMBLE_SIZE}-byte preamble")
        magic, major, minor, hlen, hcrc, pcrc = PREAMBLE.unpack(bytes(self._buf[:PREAMBLE_SIZE]))
        if zlib.crc32(self._buf[:20]) != pcrc:
            raise ChecksumError(f"{self.path}: preamble checksum mismatch (bytes 0..19)")
        if major != VERSION_MAJOR:
            raise VersionError(f"{self.path}: format version {major}.{minor} is not supported (this reader reads {VERSION_MAJOR}.x)")
        self.version = (major, minor)
        # 1.4: header, metadata and graph are deflated against the preset dictionary, 1.5: against DEFLATE_DICT_15
        # (spec 2.2); a reader of an earlier minor version inflates with the one it knows (and then fails)
        self._zdict = deflate_dict(min(minor, self.MINOR))
        if hlen > MAX_HEADER_BYTES or PREAMBLE_SIZE + hlen > size:
            raise LimitError(f"{self.path}: header length {hlen} exceeds the file or the limit (byte 12)")
        self._buf = self._read(0, PREAMBLE_SIZE + hlen)
        stored = bytes(self._buf[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen])
        if zlib.crc32(stored) != hcrc:
            raise ChecksumError(f"{self.path}: header checksum mismatch (bytes {PREAMBLE_SIZE}..{PREAMBLE_SIZE + hlen - 1})")
        try:
            header_bytes = self._inflate(stored, MAX_HEADER_BYTES, JSON_PARSE_FACTOR, f"header (bytes {PREAMBLE_SIZE}..{PREAMBLE_SIZE + hlen - 1})")
            self.header_json_bytes = len(header_bytes)
            if not header_bytes.isascii():
                raise FormatError(f"{self.path}: header holds non-ASCII bytes (bytes {PREAMBLE_SIZE}..{PREAMBLE_SIZE + hlen - 1})")
            header = _parse_json(header_bytes, "header")
        except FormatError as e:  # e.g. a later minor version's way of storing it (spec 2.2)
            if minor <= self.MINOR or type(e) is not FormatError:
                raise
            raise VersionError(f"{self.path}: {e} -- the file is version {major}.{minor} and this reader reads what "
                               f"{VERSION_MAJOR}.{self.MINOR} defines; a newer dcformat may read it") from None
        if not isinstance(header, dict) or not isinstance(header.get("sections"), list):
            raise FormatError("header: must be an object with a 'sections' list")
        entries = header["sections"]
        if len(entries) > MAX_SECTIONS:
            raise LimitError(f"header: {len(entries)} sections exceed the limit of {MAX_SECTIONS}")
        limit = max_decoded_bytes if max_decoded_bytes is not None else expansion_bound(size)
        if len(entries) * SECTION_COST > limit:
            raise LimitError(f"header: {len(entries)} sections, more than {limit // SECTION_COST} (the limit of "
                             f"{limit} bytes / SECTION_COST {SECTION_COST}; {MAX_EXPANSION} x file size + "
                             f"{EXPANSION_SLACK}); pass max_decoded_bytes to raise it")
        self.sections: list[Section] = []
        self.tensors: dict[str, TensorInfo] = {}
        self._tensor_sections: dict[str, Section] = {}
        once = dict.fromkeys((SECTION_METADATA, SECTION_GRAPH, SECTION_PADDING))  # kinds a file has at most one of
        end = PREAMBLE_SIZE + hlen
        decoded = 0
        # the zero padding between sections is checked after the loop, in one read per window of the file
        # (_check_gaps); when the loop finds a problem, the padding before it is checked first, so that the
        # error is the first in file order, as if each gap were checked where it is
        gaps = []  # (start, stop, section index)
        tensors, tensor_sections, sections = self.tensors, self._tensor_sections, self.sections
        minor_ok = minor <= self.MINOR
        new_section = object.__new__
        try:
            for i, e in enumerate(entries):
                if not isinstance(e, dict):
                    raise FormatError(f"section {i}: entry must be an object")
                kind, length, crc = e.get("kind"), e.get("length"), e.get("crc32")
                if (type(length) is not int or not 0 <= length <= size or type(crc) is not int
                        or not 0 <= crc <= 0xFFFFFFFF or not isinstance(kind, str)):
                    self._bad_entry(i, kind, length, crc)
                off = -(-end // ALIGNMENT) * ALIGNMENT  # sections tile the file: each starts where the rules put it
                if off + length > size:
                    raise FormatError(f"{self.path}: section {i} ({kind}): bytes {off}..{off + length - 1} run past "
                                      f"the end of the {size}-byte file (is the file truncated?)")
                if off > end:
                    gaps.append((end, off, i))
                end = off + length
                sec = new_section(Section)  # Section(kind, off, length, crc, e.get("tensor")), without its __init__
                tensor = e.get("tensor")
                sec.__dict__.update({"kind": kind, "offset": off, "length": length, "crc32": crc, "tensor": tensor})
                sections.append(sec)
                if kind == SECTION_TENSOR:
                    try:
                        info = parse_descriptor(tensor, off, length, f"section {i}", self.MINOR)
                    except TensorError as e:
                        if minor_ok:
                            raise
                        raise VersionError(f"{self.path}: {e} -- the file is version {major}.{minor} and this reader "
                                           f"reads what {VERSION_MAJOR}.{self.MINOR} defines; a newer dcformat may "
                                           "read it") from None
                    name = info.name
                    if name in tensors:
                        raise FormatError(f"section {i}: duplicate tensor name {name!r}")
                    tensors[name] = info
                    tensor_sections[name] = sec
                    decoded += info.decoded_nbytes
                elif kind in once:
                    where = f"section {i}"
                    if once[kind] is not None:
                        raise FormatError(f"{where}: a second {kind} section")
                    once[kind] = sec
                    if kind == SECTION_PADDING:
                        self._check_gaps(gaps)
                        gaps = []
                        self._check_zeros(sec, where)
                # padding and other kinds (added by later minor versions) are skipped; they are still checksummed
        except DczError:
            self._check_gaps(gaps)
            raise
        self._check_gaps(gaps)
        if end != size:
            raise FormatError(f"{self.path}: {size - end} bytes after the last section (byte {end})")
        self._meta_section, self._graph_section = once[SECTION_METADATA], once[SECTION_GRAPH]
        self.max_decoded_bytes = limit
        if decoded > limit:
            raise LimitError(
                f"{self.path}: tensors declare {decoded} decoded bytes, more than the limit of {limit} "
                f"({MAX_EXPANSION} x file size + {EXPANSION_SLACK}); pass max_decoded_bytes to raise it"
            )

    def _bad_entry(self, i: int, kind, length, crc) -> None:
        """Raise the FormatError for a section entry whose kind, length or crc32 is not what the format allows."""
        size, where = self.file_size, f"section {i}"
        if not isinstance(kind, str):
            raise FormatError(f"{where}: 'kind' must be a string")
        for key, v, hi in (("length", length, size), ("crc32", crc, 0xFFFFFFFF)):
            if type(v) is not int or not 0 <= v <= hi:
                truncated = key == "length" and type(v) is int and v > size
                raise FormatError(f"{self.path}: {where} ({kind}): '{key}' must be an integer in [0, {hi}], "
                                  f"got {v!r}" + (" (is the file truncated?)" if truncated else ""))
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_gaps(self, gaps: list) -> None:
        """The padding before sections holds zeros only: ``gaps`` are (start, stop, section index), in file
        order; neighbours (at most GAP_JOIN bytes apart, within GAP_WINDOW bytes) are read together (one read,
        then one bytes.count per gap, not a read and a numpy array per gap); a gap after a large section is
        read alone, not with the section (the whole file was read to check its padding)."""
        i, n = 0, len(gaps)
        while i < n:
            start = gaps[i][0]
            j = i + 1
            while j < n and gaps[j][1] - start <= GAP_WINDOW and gaps[j][0] - gaps[j - 1][1] <= GAP_JOIN:
                j += 1
            buf = self._read_bytes(start, gaps[j - 1][1] - start)
            for a, b, sec in gaps[i:j]:
                if buf.count(0, a - start, b - start) != b - a:
                    raise FormatError(f"section {sec}: non-zero padding in bytes {a}..{b - 1}")
            i = j

    def _check_zeros(self, sec: Section, where: str) -> None:
        """A padding section holds zeros only (spec 5.4): nothing can hide in it."""
        for pos in range(sec.offset, sec.offset + sec.length, 1 << 24):
            chunk = self._read(pos, min(1 << 24, sec.offset + sec.length - pos))
            if chunk.any():
                first = pos + int(np.flatnonzero(chunk)[0])
                raise FormatError(f"{where} (padding): non-zero byte at {first}; padding must be all zeros")

    def _inflated(self, sec: Section, what: str, factor: int) -> bytes:
        """A DEFLATE-stored section (metadata, graph), checksummed and inflated within its limits."""
        data = self._section_bytes(sec, what)
        return self._inflate(data, expansion_bound(sec.length), factor, f"{what} (bytes {sec.offset}..{sec.offset + sec.length - 1})")

    def _section_bytes(self, sec: Section, what: str, scratch: bool = False) -> np.ndarray:
        if self.closed:
            raise DczError(f"{self.path}: the reader is closed")
        data = self._read_scratch(sec.offset, sec.length) if scratch else self._read(sec.offset, sec.length)
        if zlib.crc32(data) != sec.crc32:
            raise ChecksumError(f"{what}: checksum mismatch in section at bytes {sec.offset}..{sec.offset + sec.length - 1}")
        return data

    # ------------------------------------------------------------------ Mapping
    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> np.ndarray:
        """Checksum and decode one tensor; a new array the caller owns."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(name)
        sec = self._tensor_sections[name]
        scratch = sec.length <= SCRATCH_BYTES  # read into this thread's buffer: no fresh pages per tensor
        data = self._section_bytes(sec, f"tensor {name!r}", scratch=scratch)
        return decode_tensor(info, data)  # a new array: nothing refers to the scratch buffer afterwards

    def decode_many(self, names) -> dict[str, np.ndarray]:
        """``{name: self[name]}`` for these tensors (each checksummed and decoded as ``self[name]``
        does), reading neighbouring sections together: one positioned read per run of up to
        SCRATCH_BYTES of the file instead of one per tensor (a model of many small tensors)."""
        from .decode import decode_batch

        tsec, tensors = self._tensor_sections, self.tensors
        secs = []  # (offset, name, section), in file order
        for n in dict.fromkeys(names):
            sec = tsec.get(n)
            if sec is None:
                self._check_name(n)  # KeyError
            secs.append((sec.offset, n, sec))
        secs.sort()  # by offset, then name (empty sections may share an offset); names are unique
        out: dict[str, np.ndarray] = {}
        crc32 = zlib.crc32
        i = 0
        while i < len(secs):
            start = secs[i][0]
            j, span = i, 0
            while j < len(secs):  # sections tile the file: a run of them is one span
                sec = secs[j][2]
                if sec.offset + sec.length - start > SCRATCH_BYTES and j > i:
                    break
                span = max(span, sec.offset + sec.length - start)  # an empty section may share an offset
                j += 1
            if span > SCRATCH_BYTES:  # one large tensor: as self[name] reads it
                out[secs[i][1]] = self[secs[i][1]]
                i += 1
                continue
            buf = self._read_scratch(start, span)
            batch, starts = [], []
            for off, name, sec in secs[i:j]:
                at = off - start
                data = buf[at : at + sec.length]
                if crc32(data) != sec.crc32:
                    raise ChecksumError(f"tensor {name!r}: checksum mismatch in section at bytes "
                                        f"{sec.offset}..{sec.offset + sec.length - 1}")
                batch.append((tensors[name], data))
                starts.append(at)
            # new arrays (or views of one new buffer): nothing refers to the scratch buffer afterwards
            out.update(decode_batch(batch, (buf, starts)))
            i = j
        return out

    def _check_name(self, name) -> bool:
        if name not in self.tensors:
            raise KeyError(name)
        return True

    def info(self, name: str) -> TensorInfo:
        """The record of one tensor (encoding, stored bytes, parts ...), without decoding it."""
        return self.tensors[name]

    # ------------------------------------------------------------------ graph and metadata
    @property
    def metadata(self) -> dict:
        """The metadata section as a dict ({} when there is none)."""
        if self._meta_section is None:
            return {}
        data = self._inflated(self._meta_section, "metadata", JSON_PARSE_FACTOR)
        meta = _parse_json(data, "metadata")
        if not isinstance(meta, dict):
            raise FormatError("metadata: must be a JSON object")
        return meta

    @property
    def graph_bytes(self) -> bytes | None:
        """The serialized ONNX ModelProto of the graph section, or None (weights-only file)."""
        if self._graph_section is None:
            return None
        return self._inflated(self._graph_section, "graph", GRAPH_PARSE_FACTOR)

    @property
    def graph(self):
        """The graph as an onnx.ModelProto (initializer data not filled in), or None.

        Its references are checked: a tensor that points at data outside the file raises
        FormatError (see :func:`dcformat.graph.check_references`), and the records it
        refers to, counted once per reference (a model rebuilt from it holds that many
        bytes), obey the same expansion limit as the tensors (LimitError).
        """
        got = self._graph_refs()
        return None if got is None else got[0]

    def _graph_refs(self, holders: dict | None = None, used: set | None = None):
        """(the checked graph, its references as :func:`dcformat.graph.scan_references` lists them),
        or None: what :attr:`graph` checks, for a caller that goes on to fill the references in
        (``holders``, ``used`` as for scan_references)."""
        data = self.graph_bytes
        if data is None:
            return None
        from google.protobuf.message import DecodeError

        from .graph import graph_objects, objects_bound, scan_references
        from .onnxproto import ModelProto

        model = ModelProto()
        try:  # protobuf refuses messages nested more than 100 deep (DecodeError)
            model.ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            raise FormatError(f"graph: not a valid ONNX ModelProto ({e})") from None
        most = self.max_decoded_bytes // GRAPH_OBJECT_COST
        # the bound from the byte count makes counting needless for any graph that fits; else the walk that
        # checks the references counts too, and stops once past the limit
        refs = scan_references(model, holders, used, most if objects_bound(model, len(data)) > most else None)
        if refs is None:
            n = graph_objects(model, most)
            raise LimitError(f"graph: more than {most} objects (nodes, attributes, tensors ...: at least {n}), the "
                             f"limit of {self.max_decoded_bytes} bytes / GRAPH_OBJECT_COST {GRAPH_OBJECT_COST} "
                             f"({MAX_EXPANSION} x file size + {EXPANSION_SLACK}); pass max_decoded_bytes to raise it")
        tensors = self.tensors
        total = sum(tensors[r[1]].decoded_nbytes for r in refs if r[1] in tensors)  # once per reference
        if total > self.max_decoded_bytes:
            raise LimitError(
                f"graph: its tensors refer to {total} decoded bytes of records (once per reference), more than the "
                f"limit of {self.max_decoded_bytes} ({MAX_EXPANSION} x file size + {EXPANSION_SLACK}); pass "
                "max_decoded_bytes to raise it"
            )
        return model, refs

    def verify(self) -> None:
        """Check every section's checksum and decode every tensor; raises DczError on the first problem."""
        for i, s in enumerate(self.sections):
            what = f"tensor {s.tensor['name']!r}" if s.kind == SECTION_TENSOR else s.kind
            self._section_bytes(s, f"section {i} ({what})")
        self.metadata
        for name in self.tensors:
            self[name]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self.closed = True
        self._buf = np.zeros(0, np.uint8)
        self._scratch = threading.local()
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<DczReader {self.path!r}: {len(self.tensors)} tensors, {self.file_size} bytes>"


def open(path, *, max_decoded_bytes: int | None = None) -> DczReader:  # noqa: A001 - mirrors builtins.open
    """Open a .dcz file for reading (tensors are read and decoded when indexed).

    Anything wrong with the file's contents raises a :class:`DczError` (a ValueError), here
    or when a tensor, the metadata or the graph is read; a path that cannot be opened raises
    the usual OSError (FileNotFoundError, PermissionError ...); a directory is a DczError.
    """
    return DczReader(path, max_decoded_bytes=max_decoded_bytes)

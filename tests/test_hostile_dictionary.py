"""Hostile files of format 1.4 (spec 1, 2.2, 10, Appendix A): header, metadata and graph deflated against
the preset dictionary DEFLATE_DICT. Older readers refuse a 1.4 file at open, never misread it; bombs
that copy the dictionary are held to the same limits as any stream; a stream reaching past the
dictionary's start, or a dictionary stream in a file that does not declare 1.4, is a FormatError.
Files are built here byte by byte (preamble, stored header, sections; CRCs computed), so only the
intended rule is broken.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import FormatError, LimitError, VersionError
from dcformat.constants import DEFLATE_DICT, DICT_MINOR, MAGIC
from dcformat.reader import DczReader

sys.path.insert(0, str(Path(__file__).parent))
from staged import expect, outcome  # noqa: E402


class Reader13(DczReader):
    """A 1.3 reader: no preset dictionary."""

    MINOR = 3


def deflate(data: bytes, zdict: bytes | None = DEFLATE_DICT) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **({"zdict": zdict} if zdict else {}))
    return c.compress(data) + c.flush()


def build(sections: list[tuple[str, bytes]], minor: int = DICT_MINOR, zdict: bytes | None = DEFLATE_DICT,
          header_text: bytes | None = None) -> bytes:
    """A file of ``sections`` ((kind, stored bytes)); the header deflated against ``zdict``."""
    entries = [{"kind": k, "length": len(b), "crc32": zlib.crc32(b)} for k, b in sections]
    text = header_text or json.dumps({"sections": entries}, separators=(",", ":")).encode()
    header = deflate(text, zdict)
    head = struct.pack("<8sHHII", MAGIC, 1, minor, len(header), zlib.crc32(header))
    out = bytearray(head + struct.pack("<I", zlib.crc32(head)) + header)
    for _, b in sections:
        out += bytes(-len(out) % 8) + b
    return bytes(out)


META = json.dumps({"producer": "dcconvert (dcz 0.1.0)", "settings": {"bits": 3}}, separators=(",", ":")).encode()


def test_a_written_1_4_file_reads_back(tmp_path):
    t = [dcformat.encode("w", np.where(np.arange(400) % 7 == 0, 0.5, 0.0).astype(np.float32))]
    p = tmp_path / "a.dcz"
    dcformat.write(p, t, metadata={"producer": "x", "settings": {"bits": 3}}, dictionary=True)
    with dcformat.open(p) as r:
        assert r.version == (1, DICT_MINOR) and r.metadata == {"producer": "x", "settings": {"bits": 3}}
        r.verify()
    q = tmp_path / "b.dcz"
    dcformat.write(q, t, metadata={"producer": "x", "settings": {"bits": 3}})
    assert p.stat().st_size < q.stat().st_size  # the dictionary pays even on this tiny file
    with dcformat.open(q) as r:
        assert r.version == (1, 0)


def test_the_built_file_is_valid(tmp_path):
    assert outcome(tmp_path, build([("metadata", deflate(META))])) == ("ok", None)
    p = tmp_path / "bad.dcz"
    with dcformat.open(p) as r:
        assert r.metadata["settings"] == {"bits": 3}


def test_an_older_reader_refuses_at_open_with_a_version_error(tmp_path):
    """Spec 2.2: a 1.3 reader inflates the header without the dictionary; the stream refers into it."""
    expect(tmp_path, build([("metadata", deflate(META))]), "open", VersionError, "version 1.4", reader=Reader13)


def test_a_dictionary_stream_in_a_1_3_file_is_a_format_error(tmp_path):
    """The minor version decides: a file that says 1.3 has no dictionary, so the stream reaches too far back."""
    expect(tmp_path, build([("metadata", deflate(META))], minor=3), "open", FormatError, "too far back")


def test_a_plain_stream_in_a_1_4_file_reads_the_same(tmp_path):
    """A stream that does not use the dictionary inflates to the same bytes with or without it."""
    data = build([("metadata", deflate(META, None))], zdict=None)
    assert outcome(tmp_path, data) == ("ok", None)
    with dcformat.open(tmp_path / "bad.dcz") as r:
        assert r.metadata["producer"] == "dcconvert (dcz 0.1.0)"


def _beyond_dictionary(data: bytes) -> bytes:
    """A stream whose first match reaches past the start of DEFLATE_DICT (valid against a longer history)."""
    junk = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    stream = deflate(junk[:300] + data, junk + DEFLATE_DICT)
    with pytest.raises(zlib.error):
        zlib.decompressobj(-15, zdict=DEFLATE_DICT).decompress(stream)
    return stream


def test_header_reaching_past_the_dictionary_is_a_format_error(tmp_path):
    junk_header = _beyond_dictionary(b'{"sections":[]}')
    head = struct.pack("<8sHHII", MAGIC, 1, DICT_MINOR, len(junk_header), zlib.crc32(junk_header))
    data = head + struct.pack("<I", zlib.crc32(head)) + junk_header
    expect(tmp_path, data, "open", FormatError, "too far back")


def test_metadata_and_graph_reaching_past_the_dictionary_are_format_errors(tmp_path):
    for kind in ("metadata", "graph"):
        path = tmp_path / f"{kind}.dcz"
        path.write_bytes(build([(kind, _beyond_dictionary(META))]))
        with dcformat.open(path) as r, pytest.raises(FormatError, match="too far back"):
            r.metadata if kind == "metadata" else r.graph_bytes


def test_header_bomb_copying_the_dictionary_is_held_to_the_header_limit(tmp_path):
    """Spec 10: the header of a small file inflates to at most B / JSON_PARSE_FACTOR bytes (~0.5 MiB),
    dictionary or not; this one would be 4 MiB of copies of the dictionary's last bytes."""
    tail = DEFLATE_DICT[-258:]
    stream = deflate(tail * ((4 << 20) // 258))
    assert len(stream) < 40_000
    head = struct.pack("<8sHHII", MAGIC, 1, DICT_MINOR, len(stream), zlib.crc32(stream))
    expect(tmp_path, head + struct.pack("<I", zlib.crc32(head)) + stream, "open", LimitError, "inflates to more than")


def test_metadata_bomb_copying_the_dictionary_is_held_to_its_limit(tmp_path):
    text = b'{"x":"' + DEFLATE_DICT[-200:].hex().encode() * ((3 << 20) // 400) + b'"}'
    path = tmp_path / "m.dcz"
    path.write_bytes(build([("metadata", deflate(text))]))
    with dcformat.open(path) as r, pytest.raises(LimitError, match="inflates to more than"):
        r.metadata


def test_every_bit_flip_of_a_1_4_file_is_detected(tmp_path):
    """Spec 4: any single flipped bit of a 1.4 file is an error (at open or when read), as in every version."""
    data = build([("metadata", deflate(META))])
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        stage, err = outcome(tmp_path, bytes(bad))
        if stage == "ok":
            with dcformat.open(tmp_path / "bad.dcz") as r:
                with pytest.raises(dcformat.DczError):
                    r.metadata

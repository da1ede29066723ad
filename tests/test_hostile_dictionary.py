"""Hostile files of formats 1.4 and 1.5 (spec 1, 2.2, 10, Appendices A and B): header, metadata and graph
deflated against the preset dictionary of the file's minor version (1.4: DEFLATE_DICT, 1.5 and later:
DEFLATE_DICT_15). Older readers refuse such a file at open, never misread it (a 1.4 reader a 1.5 file
too); bombs that copy the dictionary are held to the same limits as any stream; a stream reaching past
the dictionary's start, or a dictionary stream in a file that does not declare its minor version, is a FormatError.
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
from dcformat.constants import DEFLATE_DICT, DEFLATE_DICT_15, DICT15_MINOR, DICT_MINOR, MAGIC
from dcformat.reader import DczReader

sys.path.insert(0, str(Path(__file__).parent))
from staged import expect, outcome  # noqa: E402


class Reader13(DczReader):
    """A 1.3 reader: no preset dictionary."""

    MINOR = 3


class Reader14(DczReader):
    """A 1.4 reader: DEFLATE_DICT only."""

    MINOR = 4


DICTS = [(DICT_MINOR, DEFLATE_DICT), (DICT15_MINOR, DEFLATE_DICT_15)]  # (minor version, its preset dictionary)


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


@pytest.mark.parametrize("dictionary, minor", [(DICT_MINOR, DICT_MINOR), (True, DICT15_MINOR), (DICT15_MINOR, DICT15_MINOR)])
def test_a_written_1_4_or_1_5_file_reads_back(tmp_path, dictionary, minor):
    t = [dcformat.encode("w", np.where(np.arange(400) % 7 == 0, 0.5, 0.0).astype(np.float32))]
    p = tmp_path / "a.dcz"
    dcformat.write(p, t, metadata={"producer": "x", "settings": {"bits": 3}}, dictionary=dictionary)
    with dcformat.open(p) as r:
        assert r.version == (1, minor) and r.metadata == {"producer": "x", "settings": {"bits": 3}}
        r.verify()
    q = tmp_path / "b.dcz"
    dcformat.write(q, t, metadata={"producer": "x", "settings": {"bits": 3}})
    assert p.stat().st_size < q.stat().st_size  # the dictionary pays even on this tiny file
    with dcformat.open(q) as r:
        assert r.version == (1, 0)


def test_write_refuses_an_unknown_dictionary(tmp_path):
    for bad in (3, 6, "yes", 4.0):
        with pytest.raises(dcformat.EncodeError, match="dictionary must be"):
            dcformat.write(tmp_path / "x.dcz", [], dictionary=bad)


def test_the_1_5_writer_stores_streams_deflated_against_deflate_dict_15(tmp_path):
    """Spec 1, Appendix B: the stored metadata is exactly zlib's stream against DEFLATE_DICT_15 (and inflates
    only against it), and the header of a 1.5 file inflates against DEFLATE_DICT_15, not DEFLATE_DICT."""
    meta = {"fidelity": {"schema": 2, "measured": True, "metric": "rel_l2"}, "producer": "dcconvert (dcz 0.1.0)"}
    p = tmp_path / "a.dcz"
    dcformat.write(p, [], metadata=meta, dictionary=True)
    data = p.read_bytes()
    assert struct.unpack_from("<H", data, 10)[0] == DICT15_MINOR
    with dcformat.open(p) as r:
        s = r.sections[0]
        stored = data[s.offset : s.offset + s.length]
        assert r.metadata == meta
    text = json.dumps(meta, separators=(",", ":")).encode()
    assert stored == deflate(text, DEFLATE_DICT_15) != deflate(text, DEFLATE_DICT)
    assert zlib.decompressobj(-15, zdict=DEFLATE_DICT_15).decompress(stored) == text
    try:
        wrong = zlib.decompressobj(-15, zdict=DEFLATE_DICT).decompress(stored)
    except zlib.error:
        wrong = None
    assert wrong != text


@pytest.mark.parametrize("reader", [Reader14, Reader13])
def test_an_older_reader_refuses_a_written_1_5_file_with_a_version_error(tmp_path, reader):
    """Spec 2.2: a 1.4 reader inflates a 1.5 file's header against DEFLATE_DICT, a 1.3 reader without a
    dictionary: either way the file is refused at open, never misread."""
    t = [dcformat.encode("conv1.weight", np.where(np.arange(400) % 7 == 0, 0.5, 0.0).astype(np.float32))]
    p = tmp_path / "a.dcz"
    dcformat.write(p, t, metadata={"producer": "dcconvert (dcz 0.1.0)"}, dictionary=True)
    expect(tmp_path, p.read_bytes(), "open", VersionError, "version 1.5", reader=reader)


def test_a_1_4_reader_refuses_a_built_1_5_file_with_a_version_error(tmp_path):
    expect(tmp_path, build([("metadata", deflate(META, DEFLATE_DICT_15))], minor=DICT15_MINOR, zdict=DEFLATE_DICT_15),
           "open", VersionError, "version 1.5", reader=Reader14)


def test_a_1_5_dictionary_stream_in_a_1_4_file_is_a_format_error(tmp_path):
    """The minor version picks the dictionary: a file that says 1.4 is inflated against DEFLATE_DICT."""
    expect(tmp_path, build([("metadata", deflate(META, DEFLATE_DICT_15))], zdict=DEFLATE_DICT_15), "open",
           FormatError, "header")


def test_a_1_4_dictionary_stream_in_a_1_5_file_is_a_format_error(tmp_path):
    expect(tmp_path, build([("metadata", deflate(META))], minor=DICT15_MINOR), "open", FormatError, "header")


def test_the_1_4_vectors_still_read_with_deflate_dict(tmp_path):
    """1.4 files keep DEFLATE_DICT: the golden 1.4 vector reads (graph, metadata, every tensor checked), a
    1.4-emulating reader reads it the same, and dictionary=4 writes the empty 1.4 vector byte for byte."""
    vectors = Path(__file__).resolve().parents[1] / "spec" / "vectors"
    seen = []
    for reader in (dcformat.open, Reader14):
        with reader(vectors / "dictionary.dcz") as r:
            assert r.version == (1, DICT_MINOR)
            r.verify()
            seen.append((r.metadata, bytes(r.graph_bytes), [r[n].tobytes() for n in r]))
    assert seen[0] == seen[1] and seen[0][0]["producer"].startswith("dcconvert")
    p = tmp_path / "again.dcz"
    dcformat.write(p, [], dictionary=DICT_MINOR)
    assert p.read_bytes() == (vectors / "dictionary_no_tensors.dcz").read_bytes()


@pytest.mark.parametrize("minor, zd", DICTS)
def test_the_built_file_is_valid(tmp_path, minor, zd):
    assert outcome(tmp_path, build([("metadata", deflate(META, zd))], minor=minor, zdict=zd)) == ("ok", None)
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


def _beyond_dictionary(data: bytes, zd: bytes = DEFLATE_DICT) -> bytes:
    """A stream whose first match reaches past the start of ``zd`` (valid against a longer history)."""
    junk = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    stream = deflate(junk[:300] + data, junk + zd)
    with pytest.raises(zlib.error):
        zlib.decompressobj(-15, zdict=zd).decompress(stream)
    return stream


@pytest.mark.parametrize("minor, zd", DICTS)
def test_header_reaching_past_the_dictionary_is_a_format_error(tmp_path, minor, zd):
    junk_header = _beyond_dictionary(b'{"sections":[]}', zd)
    head = struct.pack("<8sHHII", MAGIC, 1, minor, len(junk_header), zlib.crc32(junk_header))
    data = head + struct.pack("<I", zlib.crc32(head)) + junk_header
    expect(tmp_path, data, "open", FormatError, "too far back")


@pytest.mark.parametrize("minor, zd", DICTS)
def test_metadata_and_graph_reaching_past_the_dictionary_are_format_errors(tmp_path, minor, zd):
    for kind in ("metadata", "graph"):
        path = tmp_path / f"{kind}.dcz"
        path.write_bytes(build([(kind, _beyond_dictionary(META, zd))], minor=minor, zdict=zd))
        with dcformat.open(path) as r, pytest.raises(FormatError, match="too far back"):
            r.metadata if kind == "metadata" else r.graph_bytes


@pytest.mark.parametrize("minor, zd", DICTS)
def test_header_bomb_copying_the_dictionary_is_held_to_the_header_limit(tmp_path, minor, zd):
    """Spec 10: the header of a small file inflates to at most B / JSON_PARSE_FACTOR bytes (~0.5 MiB),
    dictionary or not; this one would be 4 MiB of copies of the dictionary's last bytes."""
    tail = zd[-258:]
    stream = deflate(tail * ((4 << 20) // 258), zd)
    assert len(stream) < 40_000
    head = struct.pack("<8sHHII", MAGIC, 1, minor, len(stream), zlib.crc32(stream))
    expect(tmp_path, head + struct.pack("<I", zlib.crc32(head)) + stream, "open", LimitError, "inflates to more than")


@pytest.mark.parametrize("minor, zd", DICTS)
def test_metadata_bomb_copying_the_dictionary_is_held_to_its_limit(tmp_path, minor, zd):
    text = b'{"x":"' + zd[-200:].hex().encode() * ((3 << 20) // 400) + b'"}'
    path = tmp_path / "m.dcz"
    path.write_bytes(build([("metadata", deflate(text, zd))], minor=minor, zdict=zd))
    with dcformat.open(path) as r, pytest.raises(LimitError, match="inflates to more than"):
        r.metadata


@pytest.mark.parametrize("minor, zd", DICTS)
def test_every_bit_flip_of_a_1_4_or_1_5_file_is_detected(tmp_path, minor, zd):
    """Spec 4: any single flipped bit of a 1.4 or 1.5 file is an error (at open or when read), as in every version."""
    data = build([("metadata", deflate(META, zd))], minor=minor, zdict=zd)
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        stage, err = outcome(tmp_path, bytes(bad))
        if stage == "ok":
            with dcformat.open(tmp_path / "bad.dcz") as r:
                with pytest.raises(dcformat.DczError):
                    r.metadata

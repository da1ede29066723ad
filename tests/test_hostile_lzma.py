"""Hostile lzma tensors (format 1.3, spec 6.1 item 12, 7.6, 11): bad descriptors, damaged, short, long,
trailing and overreaching LZMA2 streams, bombs. Each must raise the DczError subclass the spec names, at
the stage it names, and never allocate more than the tensor's declared bytes. Files are valid ones from
dcformat.write, edited with tests/attacks/make_attacks.py's Dcz surgery (lengths and CRCs recomputed,
so only the intended rule is broken).
"""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import LimitError, TensorError
from dcformat import records as dcz_records
from dcformat.constants import LZMA_MAX_BYTES

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
import make_attacks as ma  # noqa: E402

from staged import expect, outcome  # noqa: E402

N = 3000


def table() -> np.ndarray:
    """Repeating float32 values: the kind of tensor lzma is for."""
    return np.tile(np.linspace(-1, 1, 50, dtype=np.float32), N // 50)


def lz(data: bytes, dict_size: int | None = None) -> bytes:
    """A raw LZMA2 stream of ``data`` (with the dictionary size the spec makes readers use)."""
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": dict_size or max(4096, len(data))}]
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("lzma") / "z.dcz"
    a = table()
    dcformat.write(path, [dcformat.encode_lzma("z", a), dcformat.encode_lzma("b", np.arange(N) % 3 == 0),
                          dcformat.encode_raw("r", np.arange(5, dtype=np.int32))])
    data = path.read_bytes()
    with dcformat.open(path) as r:  # the sample is valid and a 1.3 file
        assert r.version == (1, 3)
        assert r["z"].tobytes() == a.tobytes()
    return data


def with_data(sample: bytes, data: bytes, name="z", **desc) -> bytes:
    d = ma.Dcz.parse(sample)
    d.set_parts(name, data=data)
    if not desc:
        return d.build()

    def tamper(h):
        for s in h["sections"]:
            if s.get("tensor", {}).get("name") == name:
                s["tensor"].update(desc)

    return d.build(tamper=tamper)


# ---------------------------------------------------------------- descriptor (at open, 6.1 item 12)
def test_empty_data_rejected_at_open(sample, tmp_path):
    expect(tmp_path, with_data(sample, b""), "open", TensorError, "data is empty")


def test_more_than_lzma_max_bytes_rejected_at_open(sample, tmp_path):
    n = LZMA_MAX_BYTES // 4 + 1
    data = with_data(sample, lz(b""), shape=[n], nonzeros=0)
    expect(tmp_path, data, "open", TensorError, "more than LZMA_MAX_BYTES")


def test_a_1_1_reader_refuses_the_encoding(sample, tmp_path, monkeypatch):
    """Spec 2.2: an older reader (no lzma) refuses the tensor as an unknown encoding, never misreads it."""
    monkeypatch.setattr(dcz_records, "ENCODINGS", ("raw", "codebook-dense", "codebook-sparse", "float-planes"))
    expect(tmp_path, sample, "open", TensorError, "unknown encoding 'lzma'")


# ---------------------------------------------------------------- the stream (when read, 11 row 3)
def test_garbage_is_not_a_stream(sample, tmp_path):
    expect(tmp_path, with_data(sample, bytes(range(7, 250))), "read", TensorError, "not a valid LZMA2 stream", "z")


def test_truncated_stream(sample, tmp_path):
    good = ma.Dcz.parse(sample).parts("z")["data"]
    for cut in (1, len(good) // 2):
        got = outcome(tmp_path, with_data(sample, good[:-cut]), "z")
        assert got[0] == "read" and type(got[1]) is TensorError, got
        assert "ends before its end marker" in str(got[1]) or "decodes to" in str(got[1]) or "not a valid" in str(got[1])


def test_bytes_after_the_end_marker(sample, tmp_path):
    good = ma.Dcz.parse(sample).parts("z")["data"]
    expect(tmp_path, with_data(sample, good + b"\x00"), "read", TensorError, "1 bytes after the end", "z")


def test_stream_of_fewer_bytes(sample, tmp_path):
    short = lz(table().tobytes()[:-4])
    expect(tmp_path, with_data(sample, short), "read", TensorError, f"decodes to {4 * N - 4} bytes", "z")


def test_stream_of_more_bytes_stops_at_the_declared_size(sample, tmp_path):
    """A stream longer than the tensor is refused after at most the declared bytes (max_length)."""
    long = lz(table().tobytes() * 2)
    expect(tmp_path, with_data(sample, long), "read", TensorError, "decodes to more than", "z")


def test_bomb_within_a_small_file(sample, tmp_path):
    """64 MiB of zeros is ~10 kB of LZMA2, but the tensor declares 12 kB: decoding stops there; declaring
    the 64 MiB is refused at open by the expansion bound (the file is far too small for it)."""
    bomb = lz(bytes(64 << 20))
    expect(tmp_path, with_data(sample, bomb), "read", TensorError, "decodes to more than", "z")
    data = with_data(sample, bomb, shape=[(64 << 20) // 4], nonzeros=0)
    expect(tmp_path, data, "open", LimitError, "more than the limit")


def test_match_before_the_start_is_invalid(sample, tmp_path):
    """A stream made with a 64 KiB history, cut to start mid-way, refers before its first byte."""
    body = table().tobytes()
    full = lz(body * 8, dict_size=1 << 20)
    expect(tmp_path, with_data(sample, full[:1] + full[40:]), "read", TensorError, "", "z")


def test_nonzeros_checked_after_decoding(sample, tmp_path):
    d = ma.Dcz.parse(sample)

    def tamper(h):
        for s in h["sections"]:
            if s.get("tensor", {}).get("name") == "z":
                s["tensor"]["nonzeros"] -= 1

    expect(tmp_path, d.build(tamper=tamper), "read", TensorError, "non-zero elements", "z")


def test_bool_bytes_checked_after_decoding(sample, tmp_path):
    bad = (np.arange(N) % 3 == 0).astype(np.uint8)
    bad[7] = 2
    expect(tmp_path, with_data(sample, lz(bad.tobytes()), name="b", nonzeros=int(np.count_nonzero(bad))),
           "read", TensorError, "bool data holds a byte other than 0 or 1", "b")


def test_encoder_refuses_bool_bytes():
    with pytest.raises(dcformat.EncodeError, match="bool data"):
        dcformat.encode_lzma("b", np.array([0, 1, 2], np.uint8).view(bool))


def test_other_tensors_still_read(sample, tmp_path):
    """A bad lzma tensor fails alone: the others of the file still read."""
    path = tmp_path / "one_bad.dcz"
    path.write_bytes(with_data(sample, bytes(range(7, 250))))
    with dcformat.open(path) as r:
        assert r["r"].tolist() == [0, 1, 2, 3, 4]
        assert r["b"].tolist() == (np.arange(N) % 3 == 0).tolist()
        with pytest.raises(TensorError):
            r["z"]

"""The exception family: every problem with a file is a DczError (a ValueError); a missing
file is an OSError, as documented in dcformat.open."""

from __future__ import annotations

import inspect
import pickle
import re

import numpy as np
import pytest

import dcformat
from dcformat import errors

SUBCLASSES = [
    dcformat.FormatError,
    dcformat.VersionError,
    dcformat.ChecksumError,
    dcformat.LimitError,
    dcformat.TensorError,
    dcformat.HuffmanError,
    dcformat.EncodeError,
]


def test_dczerror_is_a_valueerror():
    assert issubclass(dcformat.DczError, ValueError)
    assert not issubclass(dcformat.DczError, OSError)


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_subclasses_derive_from_dczerror(cls):
    assert issubclass(cls, dcformat.DczError)
    assert issubclass(cls, ValueError)
    assert cls.__doc__, f"{cls.__name__} has no docstring"


def test_hierarchy_details():
    assert issubclass(dcformat.VersionError, dcformat.FormatError)
    assert issubclass(dcformat.HuffmanError, dcformat.TensorError)


def test_every_exception_in_the_errors_module_is_a_dczerror():
    found = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, BaseException)]
    assert set(found) == {dcformat.DczError, *SUBCLASSES}
    for cls in found:
        assert cls.__module__ == "dcformat.errors"
        assert cls.__name__ in dcformat.__all__


@pytest.mark.parametrize("cls", [dcformat.DczError, *SUBCLASSES], ids=lambda c: c.__name__)
def test_errors_pickle(cls):
    """Errors survive pickling (multiprocessing workers re-raise them in the parent)."""
    e = cls("tensor 'w': something at byte 64")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e)


# ---------------------------------------------------------------------------- opening things that are not .dcz files


def test_missing_file_is_filenotfounderror(tmp_path):
    path = tmp_path / "does-not-exist.dcz"
    with pytest.raises(FileNotFoundError) as ei:
        dcformat.open(path)
    assert isinstance(ei.value, OSError)
    assert not isinstance(ei.value, dcformat.DczError)
    assert str(path) in str(ei.value)
    with pytest.raises(FileNotFoundError):
        dcformat.open(str(path))


def test_missing_file_behaviour_is_documented():
    doc = dcformat.open.__doc__ or ""
    assert "FileNotFoundError" in doc and "OSError" in doc and "DczError" in doc


def test_directory_is_a_dczerror(tmp_path):
    with pytest.raises(dcformat.FormatError, match="directory") as ei:
        dcformat.open(tmp_path)
    assert isinstance(ei.value, dcformat.DczError)


def test_empty_file_is_a_formaterror(tmp_path):
    path = tmp_path / "empty.dcz"
    path.write_bytes(b"")
    with pytest.raises(dcformat.FormatError, match="not a .dcz file"):
        dcformat.open(path)
    with pytest.raises(ValueError):  # catchable as a ValueError too
        dcformat.open(path)


@pytest.mark.parametrize(
    "content",
    [b"\x89", b"\x89DCZ\r\n\x1a\n", b"\x89DCZ\r\n\x1a\n" + bytes(15), b"PK\x03\x04" + bytes(60), b"{}\n" * 20,
     b"\x89PNG\r\n\x1a\n" + bytes(40)],
    ids=["1-byte", "magic-only", "23-bytes", "zip", "text", "png"],
)
def test_short_or_foreign_files_are_formaterrors(tmp_path, content):
    path = tmp_path / "foreign.dcz"
    path.write_bytes(content)
    with pytest.raises(dcformat.FormatError):
        dcformat.open(path)


def test_valid_file_opens_from_str_and_pathlike(tmp_path):
    path = tmp_path / "ok.dcz"
    dcformat.write(path, [dcformat.encode("w", np.ones(3, np.float32))])
    for p in (path, str(path)):
        with dcformat.open(p) as r:
            np.testing.assert_array_equal(r["w"], np.ones(3, np.float32))


def test_unknown_tensor_name_is_a_keyerror(tmp_path):
    """Asking for a name that is not in the file is a Mapping lookup, not bad input."""
    path = tmp_path / "ok.dcz"
    dcformat.write(path, [dcformat.encode("w", np.ones(3, np.float32))])
    with dcformat.open(path) as r:
        with pytest.raises(KeyError):
            r["nope"]
        assert "nope" not in r


# ---------------------------------------------------------------------------- encoder arguments


@pytest.mark.parametrize(
    "call",
    [
        lambda: dcformat.encode(5, np.ones(3)),
        lambda: dcformat.encode("w", np.array(["a", "b"])),
        lambda: dcformat.encode("w", np.arange(10, dtype=np.int32), encoding="codebook-dense"),
        lambda: dcformat.encode_codebook("w", [0.0, 1.0], [0, 2]),
        lambda: dcformat.encode_codebook("w", [0.0, 1.0], [0, 1], dtype="int32"),
        lambda: dcformat.encode_codebook("w", [0.0, 1.0], [0, 1], encoding="zstd"),
        lambda: dcformat.encode_codebook("w", [0.0, 1.0], [0, 1], gap_bits=9),
        lambda: dcformat.encode_codebook("w", [0.0, 1.0], [0, 1], lane_size=100),
        lambda: dcformat.encode_codebook("w", [0.0, 1.0], [0, 1, 1], shape=(2, 2)),
    ],
    ids=["name-not-str", "unsupported-dtype", "codebook-for-ints", "index-out-of-range", "int-dtype",
         "unknown-encoding", "gap-bits", "lane-size", "shape-mismatch"],
)
def test_encoder_argument_errors_are_encodeerrors(call):
    with pytest.raises(dcformat.EncodeError):
        call()


def test_writer_argument_errors_are_encodeerrors(tmp_path):
    t = dcformat.encode("w", np.ones(3, np.float32))
    with pytest.raises(dcformat.EncodeError, match="duplicate"):
        dcformat.write(tmp_path / "a.dcz", [t, t])
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(tmp_path / "b.dcz", [np.ones(3)])
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(tmp_path / "c.dcz", [t], metadata={"x": float("nan")})
    with pytest.raises(dcformat.EncodeError):
        dcformat.write(tmp_path / "d.dcz", [t], graph=42)
    assert not list(tmp_path.iterdir()), "a failed write must leave no file behind"


def test_truncated_file_says_so(tmp_path):
    src = tmp_path / "m.dcz"
    dcformat.write(src, [dcformat.encode(f"w{i}", np.arange(500, dtype=np.float32) + i) for i in range(3)])
    data = src.read_bytes()
    cut = tmp_path / "cut.dcz"
    for n, needle in ((10, "truncated: 10 bytes"), (len(data) - 100, "is the file truncated?"),
                      (len(data) // 2, "is the file truncated?")):
        cut.write_bytes(data[:n])
        with pytest.raises(dcformat.FormatError, match=re.escape(needle)) as e:
            dcformat.open(cut)
        assert str(cut) in str(e.value)

"""Where a damaged file fails: at open or when a tensor is read, and with which DczError.

Shared by the hostile-record tests of each encoding (tests/test_hostile_planes.py, _scales.py, _lzma.py).
"""

from __future__ import annotations

import dcformat
from dcformat import DczError


def outcome(tmp_path, data: bytes, name: str | None = None, reader=dcformat.open):
    """(stage, error) of opening the file and reading tensor ``name`` (all tensors if None)."""
    path = tmp_path / "bad.dcz"
    path.write_bytes(data)
    try:
        r = reader(path)
    except DczError as e:
        return "open", e
    with r:
        try:
            for n in [name] if name else list(r):
                r[n]
        except DczError as e:
            return "read", e
    return "ok", None


def expect(tmp_path, data, stage, error, match, name=None, reader=dcformat.open):
    """The file fails at ``stage`` ("open", "read" or "ok") with ``error``, whose text holds ``match``."""
    got_stage, err = outcome(tmp_path, data, name, reader)
    assert (got_stage, type(err)) == (stage, error), (got_stage, repr(err))
    assert match in str(err), str(err)

"""The one exception family of dcformat.

Every problem with a file, or with arguments given to an encoder, raises a subclass of
:class:`DczError`, which derives from :class:`ValueError`. Messages name the section or
tensor and the byte offset where the problem was found.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal styling some libraries put in their messages


def first_line(e: BaseException) -> str:
    """The first line of another library's exception message (without terminal styling), or its
    class name: what a one-line error quotes."""
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


class DczError(ValueError):
    """Base class of every error dcformat raises on bad input."""


class FormatError(DczError):
    """The file is not a .dcz file, or its container structure is invalid."""


class VersionError(FormatError):
    """The file's major version is not one this reader understands."""


class ChecksumError(DczError):
    """A stored CRC32 does not match the bytes it covers."""


class LimitError(DczError):
    """A declared size exceeds a limit of the format or of the file's own size."""


class TensorError(DczError):
    """A tensor record or its encoded data is invalid."""


class HuffmanError(TensorError):
    """A Huffman stream is malformed (bad code lengths, lanes or bits)."""


class EncodeError(DczError):
    """Arguments given to an encoder or writer are invalid."""


def at(offset: int | None) -> str:
    return "" if offset is None else f" at byte {offset}"

"""Errors of the converters (all ValueErrors, so the CLI reports them as one line)."""

from dcformat import DczError


class ConvertError(DczError):
    """An input that cannot be converted; the message says what it is and which flag would help."""

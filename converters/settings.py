"""Per-layer settings: a global value and/or glob patterns, e.g. ``--sparsity 'fc*=0.92,conv*=0.6'``."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field


class SettingError(ValueError):
    """A setting that cannot be parsed, is out of range, or names no layer."""


@dataclass
class LayerSetting:
    """``default`` applies where no pattern matches; patterns are tried in the order given."""

    option: str
    default: object = None
    patterns: list[tuple[str, object]] = field(default_factory=list)
    used: set = field(default_factory=set)

    @classmethod
    def parse(cls, option: str, text: str | None, convert, default=None) -> "LayerSetting":
        s = cls(option, default)
        if text is None or str(text).strip() == "":
            return s
        for item in str(text).split(","):
            item = item.strip()
            if not item:
                raise SettingError(f"{option}: an empty item in {text!r} (two commas in a row, or one at an end)")
            pat, sep, val = item.rpartition("=")
            if not val.strip():
                raise SettingError(f"{option}: {item!r} has no value (give VALUE or PATTERN=VALUE)")
            try:
                value = convert(val.strip())
            except (ValueError, TypeError) as e:
                msg = str(e)
                if msg.startswith("could not convert") or msg.startswith("invalid literal"):
                    msg = f"{val.strip()!r} is not a number"
                raise SettingError(f"{option}: {item!r}: {msg}") from None
            if sep:
                if not pat.strip():
                    raise SettingError(f"{option}: empty layer pattern in {item!r}")
                s.patterns.append((pat.strip(), value))
            else:
                s.default = value
        return s

    def get(self, name: str, fallback=None):
        for pat, value in self.patterns:
            if fnmatch.fnmatchcase(name, pat):
                self.used.add(pat)
                return value
        return self.default if self.default is not None else fallback

    def unmatched(self) -> list[str]:
        return [p for p, _ in self.patterns if p not in self.used]

    def describe(self):
        """JSON-able form for the file's metadata."""
        if not self.patterns:
            return self.default
        return {"default": self.default, **{p: v for p, v in self.patterns}}


def fraction(text: str) -> float:
    v = float(text)
    if not 0 <= v < 1:
        raise ValueError(f"{text} is not in [0, 1)")
    return v


def nonneg(text: str) -> float:
    v = float(text)
    if not v >= 0:
        raise ValueError(f"{text} is not a number >= 0")
    return v


def bits(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    if not 1 <= v <= 8:
        raise ValueError(f"{v} bits is outside 1..8")
    return v


MAX_EXAMPLE_ELEMENTS = 1 << 28  # an example input for tracing: 1 GiB of float32 at most


def shape(text: str, example: str = "1,3,224,224") -> tuple[int, ...]:
    """An input shape, ``1,3,224,224`` or ``1x3x224x224``: positive integers, at most
    MAX_EXAMPLE_ELEMENTS elements in all."""
    try:
        dims = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        raise SettingError(f"{text!r} is not a shape like {example}") from None
    if not dims or any(d <= 0 for d in dims):
        raise SettingError(f"{text!r} is not a shape like {example}")
    if math.prod(dims) > MAX_EXAMPLE_ELEMENTS:
        raise SettingError(f"{text!r} is {math.prod(dims):,} elements, more than the {MAX_EXAMPLE_ELEMENTS:,} an input "
                           "shape may have here (give the batch as 1)")
    return dims

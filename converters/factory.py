"""``package.module:function`` specs (``--model``, ``--data-factory``): the one place that imports them.

Importing a module runs its code, so a spec is imported only when the user passed ``--trust-code``,
except the factories shipped with dcz itself (``converters.pipeline:*``), which are part of the
installed package like the converter's own code. ``dcconvert --model`` and ``dcz pipeline --model``
/ ``--data-factory`` follow the same rule (spec/SECURITY.md).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from dcformat.errors import first_line

from .errors import ConvertError

TRUST_FLAG = "--trust-code"
BUILTIN_MODULES = ("converters.pipeline",)  # dcz's own factories: no flag needed


def cwd_importable() -> None:
    """As `python -m` would: a module beside the user's files can be imported (--model, and the
    classes of a pickled model loaded with --trust-code)."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def is_builtin(spec: str) -> bool:
    return spec.partition(":")[0] in BUILTIN_MODULES


def _split(spec: str, option: str) -> tuple[str, str]:
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise click.BadParameter(f"takes package.module:function, got {spec!r}", param_hint=option)
    return mod, attr


def check_trusted(spec: str, trust_code: bool, option: str = "--model") -> None:
    """click.BadParameter when ``spec`` is not package.module:function; a ConvertError (one line,
    naming the flag) unless it may be imported."""
    _split(spec, option)
    if not trust_code and not is_builtin(spec):
        raise ConvertError(f"{option} {spec} imports and runs Python code ({spec.partition(':')[0]}); "
                           f"if you trust it, pass {TRUST_FLAG} as well")


def load(spec: str, *, trust_code: bool, option: str = "--model"):
    """The callable named by ``spec`` (``package.module:attr``): click.BadParameter when the spec is
    malformed; ConvertError when it is untrusted, cannot be imported or does not name a callable."""
    mod, attr = _split(spec, option)
    check_trusted(spec, trust_code, option)
    cwd_importable()
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or whatever the module raises
        raise ConvertError(f"{option} {spec}: {first_line(e)}") from None
    if not callable(fn):
        raise ConvertError(f"{option} {spec}: {attr} is not callable")
    return fn


def load_state_dict(module, state_dict, path, what: str = "the model") -> None:
    """``module.load_state_dict(state_dict)``; a one-line ConvertError saying which keys are missing,
    unexpected or of another shape (torch's own message spans several lines under a bare heading)."""
    try:
        module.load_state_dict(state_dict)
    except Exception as e:  # noqa: BLE001 - RuntimeError from torch, or whatever a custom module raises
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:] if len(lines) > 1 else lines) or type(e).__name__
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise ConvertError(f"{path}: the state_dict does not fit {what}: {detail}") from None

"""Shared command-line plumbing: one-line errors, exit codes 2 (usage) and 1 (failure)."""

from __future__ import annotations

import os
import sys

import click

from .errors import DczError


def _escape(msg: str) -> str:
    """One line, no control characters (names from files must not drive the terminal)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg).replace("\n", " "))


def fail(msg: str, code: int = 1) -> "NoReturn":  # noqa: F821
    click.echo(f"error: {_escape(msg)}", err=True)
    sys.exit(code)


def run(command: click.Command, argv=None, prog_name: str | None = None) -> None:
    """Run a click command; every failure ends as one ``error: ...`` line on stderr."""
    try:
        rv = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        fail("aborted", 1)
    except click.UsageError as e:
        fail(e.format_message(), 2)
    except click.ClickException as e:
        fail(e.format_message(), e.exit_code or 1)
    except DczError as e:
        fail(str(e), 1)
    except MemoryError:
        fail("out of memory", 1)
    except OSError as e:
        fail(f"{e.strerror or e}{': ' + os.fsdecode(e.filename) if e.filename else ''}", 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)

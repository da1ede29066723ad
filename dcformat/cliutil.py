"""Shared command-line plumbing: one-line errors, exit codes 2 (usage) and 1 (failure)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import click

from .errors import DczError


def _escape(msg: str) -> str:
    """One line, no control characters (names from files must not drive the terminal)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg).replace("\n", " "))


def times_smaller(ratio: float | None, than: str = "the input") -> str:
    """'12.3x smaller than X', '1.2x larger than X' for a ratio under 1, 'about the size of X (0.98x)'."""
    if not ratio:
        return "-"
    if round(ratio, 1) == 1 or round(1 / ratio, 1) == 1:
        return f"about the size of {than} ({ratio:.2f}x)"
    return f"{ratio:.1f}x smaller than {than}" if ratio > 1 else f"{1 / ratio:.1f}x larger than {than}"


def check_input(path, what: str = "a model file") -> None:
    """Refuse (exit 1) an input that is missing or a directory, one line saying which."""
    if os.path.isdir(path):
        raise click.ClickException(f"{path}: is a directory, not {what}")
    if not os.path.isfile(path):
        raise click.ClickException(f"{path}: no such file")


def check_output(path, what: str = "") -> None:
    """Refuse (exit 1) an output path that cannot take a file written beside it and renamed into place."""
    outdir = os.path.dirname(os.path.abspath(path))
    label = f"{what} {path}" if what else path
    if not os.path.isdir(outdir):
        raise click.ClickException(f"cannot write {label}: directory {outdir} does not exist")
    if not os.access(outdir, os.W_OK):
        raise click.ClickException(f"cannot write {label}: directory {outdir} is not writable")
    if os.path.isdir(path):
        raise click.ClickException(f"cannot write {label}: it is a directory")
    if os.path.exists(path) and not os.path.isfile(path):  # a device such as /dev/null would be replaced
        raise click.ClickException(f"cannot write {label}: it exists and is not a regular file")


def _same(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


def check_distinct(outputs: dict[str, str], inputs: dict[str, str]) -> None:
    """Usage error (exit 2) if an output would replace an input or another output: {label: path} each."""
    seen = dict(inputs)
    for label, path in outputs.items():
        for other, p in seen.items():
            if _same(path, p):
                raise click.UsageError(f"{label} {path} would overwrite {other}")
        seen[label] = path


@contextlib.contextmanager
def naming(path):
    """A DczError raised inside names ``path`` (a checksum error in a tensor says which file)."""
    try:
        yield
    except DczError as e:
        if os.fspath(path) in str(e):
            raise
        try:
            named = type(e)(f"{os.fspath(path)}: {e}")
        except Exception:  # noqa: BLE001 - a subclass with another signature
            named = DczError(f"{os.fspath(path)}: {e}")
        raise named from None


def fail(msg: str, code: int = 1) -> "NoReturn":  # noqa: F821
    click.echo(f"error: {_escape(msg)}", err=True)
    sys.exit(code)


def _pipe_closed() -> "NoReturn":  # noqa: F821
    """The reader of our stdout went away (``dcinspect --csv | head -1``): stop quietly, with the
    status of a process ended by SIGPIPE (128 + 13), as other command-line tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    except (OSError, ValueError):
        pass
    sys.exit(141)


def run(command: click.Command, argv=None, prog_name: str | None = None) -> None:
    """Run a click command; every failure ends as one ``error: ...`` line on stderr.

    Exit status: 0 done, 1 failure, 2 usage error, 130 interrupted (Ctrl-C), 141 stdout closed."""
    if argv is None and hasattr(signal, "SIGPIPE"):  # a real command line (not a test calling in)
        try:  # `dcinspect --csv | head -1`: end quietly as SIGPIPE ends other tools (click would exit 1)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        except ValueError:  # not the main thread
            pass
    try:
        rv = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
        sys.stdout.flush()
    except BrokenPipeError:
        _pipe_closed()
    except click.exceptions.Abort as e:  # click turns Ctrl-C (and EOF at a prompt) into Abort
        if isinstance(e.__cause__ or e.__context__, KeyboardInterrupt):
            fail("interrupted", 130)
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

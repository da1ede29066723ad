"""Atomic output files: written to a temporary file beside the target, renamed into place.

Where the system allows it (Linux, most local file systems) the temporary file is created
unnamed (``O_TMPFILE``): a process killed while writing leaves nothing behind, and only the
finished file is given a name (a hidden one, for the instant before the rename). Elsewhere
it is a named ``.NAME.PID-XXXX<suffix>`` file, removed on any error; such files left by a
process that no longer runs (killed with SIGKILL, a power cut) are removed by the next
write to the same target.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, and is someone else's
        return True
    return True


def _clean_stale(directory: str, base: str, suffix: str) -> None:
    """Remove temporaries of ``base`` whose writing process has exited (names carry the writer's pid)."""
    for old in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(base)}.*-*{glob.escape(suffix)}")):
        pid = os.path.basename(old)[len(base) + 2 :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(old)


def _unnamed(directory: str):
    """An fd of an unnamed file in ``directory``, or None where O_TMPFILE is not supported."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o600)
    except OSError:  # EOPNOTSUPP, EISDIR on old kernels, ENOENT ...
        return None


def _link(fd: int, name: str) -> None:
    """Name an O_TMPFILE file: linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N. (os.link calls plain link(),
    which does not follow the /proc symlink, unless a dir_fd is given.)"""
    d = os.open(os.path.dirname(name), os.O_RDONLY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, src_dir_fd=d, follow_symlinks=True)
    finally:
        os.close(d)


@contextlib.contextmanager
def atomic_output(path, suffix: str = ".tmp"):
    """Yield a binary file; on success it replaces ``path`` whole, on any failure nothing appears."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _clean_stale(directory, base, suffix)
    fd = _unnamed(directory)
    tmp = None
    if fd is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.{os.getpid()}-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~umask)
            else:
                os.chmod(tmp, 0o666 & ~umask)
            if tmp is None:  # give the finished file a name, then the target's
                tmp = os.path.join(directory, f".{base}.{os.getpid()}-{os.urandom(4).hex()}{suffix}")
                _link(f.fileno(), tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise

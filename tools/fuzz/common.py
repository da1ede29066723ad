"""Shared plumbing of the dcz fuzz harnesses (tools/fuzz/fuzz_*.py).

A harness is a function ``test_one_input(data: bytes)`` that writes ``data`` to a file and
drives one part of dcformat over it. The only exception allowed out of dcformat is a
:class:`dcformat.DczError`; anything else (IndexError, KeyError, MemoryError, a numba
error, RecursionError ...) escapes ``test_one_input`` and is a crash.

Checksums: almost every mutated file fails a CRC, and an attacker can always compute
correct CRCs. So each input is read twice when needed: once as it is, and -- if that
ran into a :class:`dcformat.ChecksumError` -- once more with the reader's CRC comparisons
switched off (:func:`checksums_bypassed`), so that the checks behind the checksums get
fuzzed too. A crash in the second run is real: fixing the CRCs of that file reproduces it.

Works without atheris (``python tools/fuzz/fuzz_reader.py --replay FILES`` or ``--random N
CORPUS``) so the regression tests run everywhere; with atheris it instruments dcformat
(not the numba kernels) and hands control to libFuzzer.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# One numba thread per fuzzer: several fuzzers share the cores, and thread start-up per
# kernel call would dominate the tiny inputs. Must be set before numba is imported.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

try:
    import atheris
except ImportError:  # the regression tests run without it
    atheris = None


def instrumented(enabled: bool = True):
    """Context manager: instrument dcformat's Python modules (not the numba kernels) as they are imported.

    Harnesses pass ``__name__ == "__main__"``: imported by a test, nothing is instrumented.
    """
    if atheris is None or not enabled:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=["dcformat"], exclude=["dcformat.kernels"])


# ---------------------------------------------------------------- checksum bypass
class _AnyCrc(int):
    """A CRC that compares equal to every stored value."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = int.__hash__


class _LenientZlib:
    @staticmethod
    def crc32(data, value=0):
        return _AnyCrc(zlib.crc32(data, value))


@contextlib.contextmanager
def checksums_bypassed():
    """Make dcformat.reader accept every stored CRC (fuzzing only; restored on exit)."""
    import dcformat.reader as reader_module

    old = reader_module.zlib
    reader_module.zlib = _LenientZlib()
    try:
        yield
    finally:
        reader_module.zlib = old


# ---------------------------------------------------------------- running one input
class Run:
    """Calls steps of a harness, swallowing DczError and noting whether a checksum failed."""

    def __init__(self):
        self.checksum_failed = False

    def __call__(self, fn, *args, **kwargs):
        from dcformat import ChecksumError, DczError

        try:
            return fn(*args, **kwargs)
        except ChecksumError:
            self.checksum_failed = True
        except DczError:
            pass
        return None


class Workspace:
    """One scratch file per process (in /dev/shm when there is one), rewritten for every input."""

    def __init__(self, suffix: str = ".dcz"):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        for old in Path(base).glob("dczfuzz-*") if os.path.isdir("/proc/self") else ():  # libFuzzer's exit()
            pid = old.name.split("-", 1)[1]  # skips Python's atexit: remove what dead fuzzers left
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(old, ignore_errors=True)
        self.dir = os.path.join(base, f"dczfuzz-{os.getpid()}")
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "input" + suffix)

    def write(self, data: bytes) -> str:
        with open(self.path, "wb") as f:
            f.write(data)
        return self.path

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


_WORKSPACE: Workspace | None = None


def workspace() -> Workspace:
    global _WORKSPACE
    if _WORKSPACE is None:
        import atexit

        _WORKSPACE = Workspace()
        atexit.register(_WORKSPACE.cleanup)  # libFuzzer exits through exit() after -runs / -max_total_time
    return _WORKSPACE


ARTIFACT_PREFIX: str | None = None  # where a crashing input is saved: PREFIX + "pycrash-<sha1>" (set when fuzzing)


def run_both_modes(data: bytes, exercise) -> None:
    """exercise(path, run) on ``data``; again with checksums bypassed if a CRC failed the first time."""
    path = workspace().write(data)
    try:
        run = Run()
        exercise(path, run)
        if run.checksum_failed:
            with checksums_bypassed():
                exercise(path, Run())
    except BaseException:
        if ARTIFACT_PREFIX is not None:  # libFuzzer writes one too, but not when the process dies hard
            import hashlib

            out = Path(f"{ARTIFACT_PREFIX}pycrash-{hashlib.sha1(data).hexdigest()}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        raise


# ---------------------------------------------------------------- oracles
def all_tensor_protos(msg, depth: int = 0):
    """Every onnx TensorProto anywhere inside a protobuf message (generic reflection walk)."""
    if msg.DESCRIPTOR.full_name == "onnx.TensorProto":
        yield msg
    for fd, value in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
        if repeated:
            if hasattr(value, "items"):  # a map field
                continue
            for v in value:
                yield from all_tensor_protos(v, depth + 1)
        else:
            yield from all_tensor_protos(value, depth + 1)


# ---------------------------------------------------------------- entry point
def _seed_files(paths):
    for p in paths:
        p = Path(p)
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.is_file())
        elif p.is_file():
            yield p


def main(test_one_input, argv=None):
    """Fuzz with atheris (libFuzzer flags and corpus directories as arguments), or without it:

    --replay FILE|DIR ...      run each file once (a crash raises)
    --random N [--seed S] DIR  N inputs made by the structure-aware mutator from the files in DIR
    """
    import dczmut

    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] == "--replay":
        n = 0
        for f in _seed_files(argv[2:]):
            test_one_input(f.read_bytes())
            n += 1
        print(f"replayed {n} inputs: no crash")
        return
    if len(argv) > 1 and argv[1] == "--random":
        runs = int(argv[2])
        rest = argv[3:]
        seed = 0
        if rest[:1] == ["--seed"]:
            seed, rest = int(rest[1]), rest[2:]
        seeds = [f.read_bytes() for f in _seed_files(rest)]
        rng = random.Random(seed)
        for i in range(runs):
            data = dczmut.mutate_with(rng, rng.choice(seeds), 4096, seeds)
            try:
                test_one_input(data)
            except BaseException:
                crash = HERE / "crashes" / f"crash-random-{seed}-{i}"
                crash.parent.mkdir(exist_ok=True)
                crash.write_bytes(data)
                print(f"crash on input {i}; written to {crash}", file=sys.stderr)
                raise
        print(f"{runs} random inputs: no crash")
        return
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install atheris (or use --replay / --random)")
    global ARTIFACT_PREFIX
    ARTIFACT_PREFIX = next((a.split("=", 1)[1] for a in argv if a.startswith("-artifact_prefix=")), "./")
    atheris.Setup(argv, test_one_input, custom_mutator=dczmut.custom_mutator)
    atheris.Fuzz()

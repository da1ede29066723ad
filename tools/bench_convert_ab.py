#!/usr/bin/env python3
"""dcconvert's wall time on the same inputs from two checkouts, in alternation, and whether they wrote the
same bytes: what a change that only speeds the converter up must show (same file, less time).

Each run is a fresh process (``python -c 'from converters.cli import main; main()' MODEL -o OUT ARGS``)
with ``PYTHONPATH`` set to one checkout, so imports are part of the time, as for a user. The two
checkouts alternate --repeat times (a busy machine slows both alike); printed per model: each side's
best and median seconds, new / base, and "same bytes" or "DIFFERENT bytes" (md5 of the .dcz).

Models are ``MODEL[=CALIB.npz]`` pairs: the calibration file is passed as ``--calibration`` (for
the real models, tools/bench_real_models.py --out DIR writes NAME.calib.npz there). The model files keep
their names in the .dcz metadata, so both sides read the same path.

    git worktree add /tmp/base <commit>
    .venv/bin/python tools/bench_convert_ab.py --base /tmp/base \\
        det.onnx=/tmp/r/det.calib.npz cls.onnx=/tmp/r/cls.calib.npz --repeat 2
    .venv/bin/python tools/bench_convert_ab.py --base /tmp/base model.onnx --args "--sparsity 0.5 --bits 5"
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = "import sys; from converters.cli import main; sys.exit(main())"


def convert(root: str, model: str, calib: str | None, extra: list[str], out: str) -> tuple[float, str]:
    """(wall seconds, md5 of the file) of one dcconvert run with ``root`` first on the path."""
    cmd = [sys.executable, "-c", CHILD, model, "-o", out, "-q", *extra]
    if calib:
        cmd += ["--calibration", calib]
    env = {**os.environ, "PYTHONPATH": root}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"dcconvert from {root} failed on {model}: {(r.stderr or r.stdout).strip()}")
    with open(out, "rb") as f:
        return dt, hashlib.md5(f.read()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="MODEL[=CALIB]")
    ap.add_argument("--base", required=True, help="the other checkout (e.g. a git worktree of the last landing)")
    ap.add_argument("--new", default=ROOT, help="this checkout (default: the one holding this script)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per side and model, alternating")
    ap.add_argument("--args", default="", help="more dcconvert flags, as one string")
    a = ap.parse_args(argv)
    extra = shlex.split(a.args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.models:
            model, _, calib = spec.partition("=")
            model, calib = os.path.abspath(model), (os.path.abspath(calib) if calib else None)
            times = {"base": [], "new": []}
            digests = {"base": set(), "new": set()}
            for _ in range(a.repeat):
                for side, root in (("base", a.base), ("new", a.new)):
                    dt, md5 = convert(os.path.abspath(root), model, calib, extra, os.path.join(tmp, f"{side}.dcz"))
                    times[side].append(dt)
                    digests[side].add(md5)
                    print(f"  {os.path.basename(model)} {side}: {dt:.1f} s", file=sys.stderr, flush=True)
            same = len(digests["base"] | digests["new"]) == 1
            rows.append((os.path.basename(model), times, same))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; base {a.base}, new {a.new}")
    print("| model | base s (best / median) | new s (best / median) | new / base (best) | output |")
    print("|---|---:|---:|---:|---|")
    for name, t, same in rows:
        b, n = t["base"], t["new"]
        print(f"| {name} | {min(b):.1f} / {statistics.median(b):.1f} | {min(n):.1f} / {statistics.median(n):.1f} | "
              f"{min(n) / min(b):.2f} | {'same bytes' if same else 'DIFFERENT bytes'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Start-up time of the command-line tools, as ratios against baselines measured in the same run.

Each figure is the median wall time of --repeat fresh Python processes (imports included):

* ``TOOL --help`` and ``TOOL --version`` for dcinspect, dcdecode, dcrun, dcconvert, dcz against
  ``python -c "import click"`` (target for dcinspect --help: <= 2x);
* ``dcrun model.dcz`` (import, load, one run on random inputs) against a fresh process that loads
  the same model's .onnx into ONNX Runtime and runs it once on the same input shape
  (target: <= 1.5x); an MLP of --params parameters, pruned and quantized by dcconvert; the two
  run alternately, and the median and the best of each are printed;
* what the dcrun start-up is made of: the import time of numpy, onnxruntime, onnx, ml_dtypes,
  numba (each alone, in a fresh process).

    .venv/bin/python tools/bench_startup.py                  # 8.4M-parameter MLP
    .venv/bin/python tools/bench_startup.py --params 40      # about 40M parameters
    .venv/bin/python tools/bench_startup.py --json out.json
    .venv/bin/python tools/bench_startup.py --root ../main  # another checkout (before/after)
    .venv/bin/python tools/bench_startup.py --breakdown --model-dir /tmp/bench  # stages; models kept

Run from the repository root (it puts the checkout on PYTHONPATH of the child processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
# Child processes load compiled bytecode, as an installed package's do (pip compiles it): with
# PYTHONDONTWRITEBYTECODE set (as in some shells and CI images) every process would compile the
# checkout's ~20 modules again, ~70-80 ms of each dcrun here, which no installed dcz pays. The
# bytecode goes to a temporary folder (PYTHONPYCACHEPREFIX), written by each figure's warm-up run.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
CWD = [ROOT]  # `python -c` puts the working directory first on sys.path: run in the checkout measured
TOOLS = {"dcinspect": "dcformat.cli:inspect_main", "dcdecode": "dcformat.cli:decode_main",
         "dcrun": "dcformat.cli:run_main", "dcconvert": "converters.cli:main", "dcz": "converters.demo:main"}


def entry(spec: str, *args: str) -> list[str]:
    """The command a console script runs: import the function, call it (as pip's wrapper does)."""
    mod, fn = spec.split(":")
    return [sys.executable, "-c", f"import sys; from {mod} import {fn}; sys.exit({fn}())", *args]


def wall(cmd: list[str], repeat: int, allow_fail: bool = False) -> float | None:
    """Median seconds of ``repeat`` fresh processes (after one unmeasured warm-up: disk cache, numba cache);
    None for a command that fails where ``allow_fail`` (an option an older checkout lacks)."""
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=ENV, cwd=CWD[0], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            if allow_fail:
                return None
            raise SystemExit(f"{' '.join(cmd[-3:])} failed: {p.stderr.decode()[-500:]}")
        if i:
            times.append(dt)
    return statistics.median(times)


def paired(cmd_a: list[str], cmd_b: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of ``repeat`` fresh processes of each command, run alternately (a, b, a, b, ...: a change in
    the machine's load falls on both), after one unmeasured warm-up of each."""
    ta, tb = [], []
    for i in range(repeat + 1):
        for cmd, times in ((cmd_a, ta), (cmd_b, tb)):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=ENV, cwd=CWD[0], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(cmd[-3:])} failed: {p.stderr.decode()[-500:]}")
            if i:
                times.append(dt)
    return ta, tb


def build_model(d: str, params_m: float) -> tuple[str, str, int]:
    """An MLP of about ``params_m`` million parameters: model.onnx, and model.dcz by dcconvert, pruned 90% and
    shared at 5 bits (explicit settings: its random weights would make the error budget keep most of them exact)."""
    import onnx

    sys.path.insert(0, os.path.join(ROOT, "tests"))  # the numpy MLP the tests build models with
    from numpy_mlp import MLP

    width = 256
    while True:  # [1024, w, w, 10]
        if 1024 * width + width * width + width * 10 >= params_m * 1e6:
            break
        width += 256
    net = MLP([1024, width, width, 10], seed=0)
    onnx_path, dcz_path = os.path.join(d, "model.onnx"), os.path.join(d, "model.dcz")
    onnx.save(net.to_onnx(), onnx_path)
    subprocess.run(entry(TOOLS["dcconvert"], onnx_path, "-o", dcz_path, "-q", "--sparsity", "0.9",
                         "--bits", "5"), env=ENV, cwd=CWD[0], check=True)
    return onnx_path, dcz_path, sum(w.size for w in net.W) + sum(b.size for b in net.b)


ORT_RUN = ("import sys, numpy as np, onnxruntime as ort\n"
           "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
           "i = s.get_inputs()[0]\n"
           "x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape])\n"
           "s.run(None, {i.name: x.astype(np.float32)})\n")


# --breakdown: a fresh `dcrun model.dcz` with timers around its stages (the functions are wrapped, not
# changed; a stage a checkout lacks is skipped, so an older checkout can be measured with --root)
BREAKDOWN = r"""
import sys, time, functools
T0 = time.perf_counter()
spans = {}

inside = []  # the stages under way
READ = "read + checksum sections"  # counted inside prepare only (the graph's read is its own stage's)
OPEN = "open the .dcz, parse its graph (protobuf import)"
OPEN_IN_PREPARE = "of which inside prepare"  # dcrun opens and parses once, partly inside runtime.prepare

def timed(label, f):
    @functools.wraps(f)
    def g(*a, **k):
        if label in inside or (label == READ and ("prepare" not in inside or OPEN in inside)):  # the caller's stage
            return f(*a, **k)
        inside.append(label)
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            dt = time.perf_counter() - t
            spans[label] = spans.get(label, 0.0) + dt
            if label == OPEN and "prepare" in inside:
                spans[OPEN_IN_PREPARE] = spans.get(OPEN_IN_PREPARE, 0.0) + dt
            inside.pop()
    return g

def patch(obj, name, label):
    if hasattr(obj, name):
        setattr(obj, name, timed(label, getattr(obj, name)))

def imported(label, fn):
    t = time.perf_counter()
    fn()
    spans[label] = time.perf_counter() - t

imported("import click + dcformat.cli", lambda: __import__("dcformat.cli"))
import dcformat.cli as cli
imported("import numpy", getattr(cli, "_import_numpy_without_hugepages", lambda: __import__("numpy")))
imported("import onnxruntime", lambda: __import__("onnxruntime"))
imported("import dcformat runtime, reader, decoders", lambda: [__import__(m) for m in (
    "dcformat.runtime", "dcformat.reader", "dcformat.decode", "dcformat.npdecode", "dcformat.inputs")])
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_inference_collection as oic
from dcformat import decode, inputs, npdecode, reader, runtime
patch(cli, "_model_graph", OPEN)
patch(reader, "open", OPEN)  # dcrun's own open of the .dcz (runtime.prepare's, of a path, is prepare's)
patch(reader.DczReader, "_graph_refs", OPEN)  # the graph's parse and reference check, inside prepare too
patch(reader.DczReader, "_read_scratch", READ)
patch(reader.DczReader, "_section_bytes", READ)
patch(npdecode, "decode_streams", "Huffman decode (numpy lanes)")
for n in ("sparse", "dense", "planes"):
    patch(npdecode, n, "scatter / assemble the dense arrays")
patch(decode, "decode_tensor", "decode by the numba kernels (import included)")
patch(runtime, "prepare", "prepare")
patch(oic.InferenceSession, "__init__", "ORT session creation")
for n in ("declared_inputs", "synthetic_inputs", "sample_feeds", "check_inputs", "size_candidates"):
    patch(inputs, n, "input building")
patch(oic.Session, "run", "the run")
t = time.perf_counter()
try:
    cli.run_main([sys.argv[1]])
except SystemExit:
    pass
spans["dcrun command, all"] = time.perf_counter() - t
spans["in-process total"] = time.perf_counter() - T0
print(repr(spans), file=sys.stderr)
"""

ORDER = ["import click + dcformat.cli", "import numpy", "import onnxruntime", "import dcformat runtime, reader, decoders",
         "open the .dcz, parse its graph (protobuf import)", "read + checksum sections", "Huffman decode (numpy lanes)",
         "decode by the numba kernels (import included)", "scatter / assemble the dense arrays",
         "building the ONNX model (rest of prepare)", "ORT session creation", "input building", "the run",
         "printing and the rest"]


def breakdown(dcz_path: str, repeat: int) -> dict:
    """Where the time of a fresh `dcrun model.dcz` goes, in ms: each stage's best of ``repeat`` processes,
    and the interpreter's start (``python -c pass``)."""
    import ast

    runs = []
    for i in range(repeat + 1):
        p = subprocess.run([sys.executable, "-c", BREAKDOWN, dcz_path], env=ENV, cwd=CWD[0], capture_output=True,
                           text=True)
        if p.returncode != 0:
            raise SystemExit(f"breakdown failed: {p.stderr[-500:]}")
        sp = ast.literal_eval(p.stderr.strip().splitlines()[-1])
        inner = sum(sp.get(k, 0.0) for k in ("read + checksum sections", "Huffman decode (numpy lanes)",
                                              "decode by the numba kernels (import included)",
                                              "scatter / assemble the dense arrays"))
        inside_prepare = sp.get("of which inside prepare", 0.0)  # counted as opening, not as prepare
        sp["building the ONNX model (rest of prepare)"] = sp.get("prepare", 0.0) - inner - inside_prepare
        sp["printing and the rest"] = sp["dcrun command, all"] + inside_prepare - sum(
            sp.get(k, 0.0) for k in ("open the .dcz, parse its graph (protobuf import)", "prepare",
                                     "ORT session creation", "input building", "the run"))
        if i:
            runs.append(sp)
    start = wall([sys.executable, "-c", "pass"], repeat)
    out = {"interpreter start (python -c pass)": start * 1e3}
    for k in ORDER + ["in-process total"]:
        out[k] = min(r.get(k, 0.0) for r in runs) * 1e3
    return out


def tool_figures(repeat: int, res: dict) -> None:
    """--help and --version of each tool against ``python -c "import click"``; the imports dcrun may need."""
    click_s = wall([sys.executable, "-c", "import click"], repeat)
    res["import click"] = click_s
    print(f"baseline: python -c 'import click'  {click_s * 1e3:7.1f} ms")
    for tool, spec in TOOLS.items():
        for flag in ("--help", "--version"):
            s = wall(entry(spec, flag), repeat, allow_fail=True)
            res[f"{tool} {flag}"] = s
            print(f"{tool:9} {flag:9}  " + ("    (fails: no such option)" if s is None else
                                            f"{s * 1e3:7.1f} ms  {s / click_s:5.2f}x import click"))
    res["ratio dcinspect --help / import click"] = res["dcinspect --help"] / click_s
    for mod in ("numpy", "onnxruntime", "onnx", "ml_dtypes", "numba"):
        s = wall([sys.executable, "-c", f"import {mod}"], repeat)
        res[f"import {mod}"] = s
        print(f"import {mod:12}        {s * 1e3:7.1f} ms")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per figure (median)")
    ap.add_argument("--params", type=float, default=8, help="millions of parameters of the dcrun model")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--root", help="measure this checkout instead of the one holding this script "
                                   "(e.g. the main branch, for a before/after)")
    ap.add_argument("--breakdown", action="store_true", help="also time the stages of a fresh dcrun (best of "
                    "--repeat processes each)")
    ap.add_argument("--dcrun-only", action="store_true", help="skip the --help/--version and import figures")
    ap.add_argument("--model-dir", help="keep the converted models here and reuse them (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.root:
        ENV["PYTHONPATH"] = os.path.abspath(args.root)
        CWD[0] = os.path.abspath(args.root)
    res = {"python": sys.version.split()[0], "repeat": args.repeat}
    pyc = tempfile.TemporaryDirectory(prefix="bench_startup_pyc")
    ENV["PYTHONPYCACHEPREFIX"] = pyc.name
    res["load average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    if not args.dcrun_only:
        tool_figures(args.repeat, res)

    with tempfile.TemporaryDirectory() as tmp:
        d = tmp
        if args.model_dir:
            d = os.path.join(os.path.abspath(args.model_dir), f"mlp{args.params:g}")
            os.makedirs(d, exist_ok=True)
        if args.model_dir and os.path.exists(os.path.join(d, "model.dcz")):
            onnx_path, dcz_path = os.path.join(d, "model.onnx"), os.path.join(d, "model.dcz")
            import onnx

            params = sum(int(np.prod(t.dims)) for t in onnx.load(onnx_path).graph.initializer)
        else:
            onnx_path, dcz_path, params = build_model(d, args.params)
        res["params"] = params
        res["onnx_bytes"], res["dcz_bytes"] = os.path.getsize(onnx_path), os.path.getsize(dcz_path)
        ort_t, dcrun_t = paired([sys.executable, "-c", ORT_RUN, onnx_path], entry(TOOLS["dcrun"], dcz_path),
                                args.repeat)
        ort_s, dcrun_s = statistics.median(ort_t), statistics.median(dcrun_t)
        res.update({"ort load+run (fresh process)": ort_s, "dcrun load+run (fresh process)": dcrun_s,
                    "ratio dcrun / ort": dcrun_s / ort_s, "ort best": min(ort_t), "dcrun best": min(dcrun_t),
                    "ratio dcrun / ort, best of each": min(dcrun_t) / min(ort_t)})
        print(f"model: MLP, {params:,} parameters, .onnx {res['onnx_bytes']:,} bytes, .dcz {res['dcz_bytes']:,} bytes")
        print(f"ORT   load + one run of model.onnx  {ort_s * 1e3:7.1f} ms  (best {min(ort_t) * 1e3:.1f})")
        print(f"dcrun model.dcz                     {dcrun_s * 1e3:7.1f} ms  (best {min(dcrun_t) * 1e3:.1f})  "
              f"{dcrun_s / ort_s:5.2f}x ORT (best of each: {min(dcrun_t) / min(ort_t):.2f}x)")
        if args.breakdown:
            res["breakdown ms"] = b = breakdown(dcz_path, args.repeat)
            print("fresh dcrun model.dcz, where the time goes (best of each stage):")
            for k, v in b.items():
                print(f"  {k:50} {v:7.1f} ms")

    if not args.dcrun_only:
        print(f"ratios: dcinspect --help / import click = {res['ratio dcinspect --help / import click']:.2f} "
              "(target <= 2); ", end="")
    print(f"dcrun / ORT = {res['ratio dcrun / ort']:.2f}, best of each {res['ratio dcrun / ort, best of each']:.2f} "
          "(target <= 1.5)")
    if res["load average"] is not None:
        print(f"load average (1 min) at the start: {res['load average']:.2f} on {os.cpu_count()} cores "
              "(others' work slows the figures: rerun when quiet, compare ratios of one run)")
    pyc.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()

"""dcconvert speed and memory on a 25M-parameter CNN (random weights), plus how time grows with size.

Builds the model as ONNX with onnx.helper (no PyTorch needed), converts it with the default
pruning and weight sharing (``dcconvert model.onnx -o model.dcz -q``) in a fresh
subprocess per size, and reports for each:

* wall time of the conversion (inside the child, imports excluded) and of the whole
  subprocess (imports included);
* peak memory: the child's ru_maxrss minus its RSS after the imports, in MB and as a
  multiple of the fp32 model size (4 bytes x parameters).

Targets for the 25M model on a 2-core machine: <= 60 s, peak <= 3x the fp32 model size.

    .venv/bin/python tools/bench_convert.py                 # 25M, plus 3M/6M/12M for the growth
    .venv/bin/python tools/bench_convert.py --scales 1      # only the 25M model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, resource, sys, time
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
def rss():
    return status("VmRSS")
import converters.cli, converters.sources, converters.compress, dcformat, onnx, numpy  # everything the run imports
base = rss()
base_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter()
try:
    converters.cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("BENCH " + json.dumps({"code": code, "seconds": dt, "rss_after_imports": base, "peak_before": base_peak,
                               "peak": peak, "hwm": status("VmHWM")}), flush=True)
"""


def build_cnn(path: str, scale: float = 1.0, seed: int = 0) -> int:
    """A CNN for 3x32x32 inputs: 3 convs + 3 FCs (4096-4096-1536-1000 at scale 1, about 25M parameters);
    ``scale`` multiplies the first hidden width (parameters ~ 1.9M + 23.1M x scale). Returns the parameters."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    h1, h2, out = int(round(4096 * scale)), 1536, 1000
    inits, nodes = [], []

    def param(name, shape, fan_in):
        a = rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(np.sqrt(2.0 / fan_in))
        inits.append(numpy_helper.from_array(a, name))
        return name

    x, c_in = "input", 3
    for i, c in enumerate((64, 128, 256)):
        w = param(f"conv{i + 1}.weight", (c, c_in, 3, 3), c_in * 9)
        b = param(f"conv{i + 1}.bias", (c,), c)
        nodes += [helper.make_node("Conv", [x, w, b], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
                  helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2])]
        x, c_in = f"p{i}", c
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    x, width = "flat", 256 * 4 * 4  # 32 -> 16 -> 8 -> 4 after three pools
    for i, n_out in enumerate((h1, h2, out)):
        w = param(f"fc{i + 1}.weight", (n_out, width), width)
        b = param(f"fc{i + 1}.bias", (n_out,), n_out)
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"g{i}"], transB=1))
        x = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"a{i}"]))
            x = f"a{i}"
        width = n_out
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return sum(int(np.prod(t.dims)) for t in inits)


def run(model: str, out: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", CHILD, model, "-o", out, "-q", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH ")]
    if p.returncode or not line:
        sys.exit(f"conversion failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    r = json.loads(line[-1][6:])
    if r["code"]:
        sys.exit(f"dcconvert exited {r['code']}: {p.stderr.strip()[-2000:]}")
    r["process_seconds"] = wall
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="0.125,0.25,0.5,1", help="model sizes: factors of the first FC width (1: 25M parameters)")
    ap.add_argument("--dir", help="keep the models here (default: a temporary directory)")
    ap.add_argument("--time-target", type=float, default=60.0)
    ap.add_argument("--mem-target", type=float, default=3.0, help="peak memory target, x the fp32 model size")
    ap.add_argument("--build", nargs=2, metavar=("PATH", "SCALE"), help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args(argv)
    if args.build:
        print(build_cnn(args.build[0], float(args.build[1])))
        return 0
    scales = sorted(float(s) for s in args.scales.split(","))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; dcconvert options: {' '.join(extra) or '(defaults)'}")
    header = f"{'params':>12} {'fp32 MB':>8} {'onnx MB':>8} {'dcz MB':>7} {'ratio':>6} {'convert s':>9} {'process s':>9} " \
             f"{'peak MB':>8} {'x fp32':>6} {'s/Mparam':>8}"
    print(header)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        d = args.dir or tmp
        os.makedirs(d, exist_ok=True)
        for s in scales:
            model = os.path.join(d, f"cnn_{s:g}.onnx")
            out = os.path.join(d, f"cnn_{s:g}.dcz")
            # built in a child: a child's ru_maxrss starts at its parent's RSS, so the parent stays small
            params = int(subprocess.run([sys.executable, __file__, "--build", model, str(s)], check=True,
                                        capture_output=True, text=True).stdout)
            r = run(model, out, extra)
            fp32 = 4 * params
            peak = r["peak"] - r["rss_after_imports"]
            if r["peak_before"] > r["rss_after_imports"] * 1.5:
                print(f"warning: the child's ru_maxrss started at {r['peak_before'] / 1e6:.0f} MB", file=sys.stderr)
            row = dict(scale=s, params=params, fp32_bytes=fp32, onnx_bytes=os.path.getsize(model),
                       dcz_bytes=os.path.getsize(out), seconds=r["seconds"], process_seconds=r["process_seconds"],
                       peak_bytes=peak, peak_x_fp32=peak / fp32, vm_hwm_bytes=r["hwm"] - r["rss_after_imports"])
            results.append(row)
            print(f"{params:>12,} {fp32 / 1e6:>8.1f} {row['onnx_bytes'] / 1e6:>8.1f} {row['dcz_bytes'] / 1e6:>7.2f} "
                  f"{row['onnx_bytes'] / row['dcz_bytes']:>6.1f} {r['seconds']:>9.2f} {r['process_seconds']:>9.2f} "
                  f"{peak / 1e6:>8.1f} {peak / fp32:>6.2f} {r['seconds'] / params * 1e6:>8.3f}", flush=True)
    if len(results) > 1:  # least-squares line through the points: time = a + b x params
        p = np.array([r["params"] for r in results], float)
        t = np.array([r["seconds"] for r in results])
        b, a = np.polyfit(p, t, 1)
        resid = np.max(np.abs(a + b * p - t) / t)
        print(f"growth: time = {a:.2f} s + {b * 1e6:.3f} s/Mparam (largest deviation from the line {resid:.0%})")
    big = results[-1]
    ok_t = big["seconds"] <= args.time_target
    ok_m = big["peak_x_fp32"] <= args.mem_target
    print(f"{big['params']:,} parameters: {big['seconds']:.1f} s (target <= {args.time_target:g} s: "
          f"{'met' if ok_t else 'MISSED'}), peak {big['peak_bytes'] / 1e6:.0f} MB = {big['peak_x_fp32']:.2f}x fp32 "
          f"(target <= {args.mem_target:g}x: {'met' if ok_m else 'MISSED'})")
    print("JSON " + json.dumps(results))
    return 0 if ok_t and ok_m else 1


if __name__ == "__main__":
    sys.exit(main())

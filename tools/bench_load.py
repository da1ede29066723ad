#!/usr/bin/env python3
"""Load time, inference latency and memory of a .dcz model against its plain .onnx, in one run.

Builds a CNN+FC model (26M parameters; ``--quick``: 2.4M), prunes it (~90% of the fc
weights, ~60% of the conv weights) and quantizes it with k-means (5 bits fc, 8 bits conv)
using the numpy helpers in converters/, then saves

  (a) model.onnx: the uncompressed fp32 ONNX model holding the SAME quantized weights,
  (b) model.dcz:  the Deep Compression file (codebook-sparse / codebook-dense records).

and measures:

* session creation, warm: onnxruntime.InferenceSession(model.onnx) vs
  dcformat.InferenceSession(model.dcz) (and compact mode), best of --repeat in this
  process after one warm-up; target dcz/onnx <= 1.5;
* session creation, cold: each in a fresh Python process, imports included (median of 3);
* where the .dcz load time goes: decode of every tensor, graph parse, prepare (decode +
  graph), ONNX Runtime session init;
* inference latency (batch 1 and 64) of the full-mode session vs the .onnx session (the
  same graph and weights, so ~equal) and of compact mode;
* memory: process RSS increase when a session is created (and after a first run, and the
  peak), each in a fresh process: .onnx, .dcz full, .dcz compact; compact/full ratio.

    .venv/bin/python tools/bench_load.py            # 26M parameters
    .venv/bin/python tools/bench_load.py --quick    # 2.4M parameters
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import dcformat  # noqa: E402
from converters.prune import magnitude_mask  # noqa: E402
from converters.quantize import quantize  # noqa: E402
from dcformat import runtime  # noqa: E402
from dcformat.graph import strip_weights  # noqa: E402

CPU = ["CPUExecutionProvider"]
# (conv channels, fc widths): input 3x32x32, conv3x3+relu blocks with 2x2 max pools -> 4x4 maps
FULL = ((64, 128, 256, 256), (4096, 2048))
QUICK = ((16, 32, 64, 64), (1536, 512))
CONV_SPARSITY, CONV_BITS = 0.6, 8
FC_SPARSITY, FC_BITS = 0.9, 5


# ------------------------------------------------------------------------------------------ the model
def build(channels, fcs, seed=0):
    """(onnx model with the quantized weights, .dcz records, parameter count)."""
    rng = np.random.default_rng(seed)
    nodes, inits, records = [], [], []
    params = 0

    def layer(name, shape, fan_in, sparsity, bits, encoding):
        nonlocal params
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
        w *= magnitude_mask(w, sparsity)
        cb, idx = quantize(w, bits)
        cb = cb.astype(np.float32)
        q = cb[idx]
        b = (rng.standard_normal(shape[0]) * 0.01).astype(np.float32)
        inits.extend([numpy_helper.from_array(q, name + ".weight"), numpy_helper.from_array(b, name + ".bias")])
        records.extend([dcformat.encode_codebook(name + ".weight", cb, idx, encoding=encoding),
                        dcformat.encode_raw(name + ".bias", b)])
        params += q.size + b.size

    x, cin, hw = "x", 3, 32
    pool_after = {0, 1, 3}
    for i, c in enumerate(channels):
        name = f"conv{i + 1}"
        layer(name, (c, cin, 3, 3), cin * 9, CONV_SPARSITY, CONV_BITS, "codebook-dense")
        nodes += [helper.make_node("Conv", [x, name + ".weight", name + ".bias"], [name], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1], name=name),
                  helper.make_node("Relu", [name], [name + ".relu"])]
        x, cin = name + ".relu", c
        if i in pool_after:
            nodes.append(helper.make_node("MaxPool", [x], [name + ".pool"], kernel_shape=[2, 2], strides=[2, 2]))
            x, hw = name + ".pool", hw // 2
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, fin = "flat", cin * hw * hw
    widths = list(fcs) + [10]
    for i, fout in enumerate(widths):
        name = f"fc{i + 1}"
        last = i == len(widths) - 1
        layer(name, (fout, fin), fin, FC_SPARSITY if not last else 0.5, FC_BITS, "codebook-sparse")
        out = "logits" if last else name
        nodes.append(helper.make_node("Gemm", [x, name + ".weight", name + ".bias"], [out], transB=1, name=name))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [name + ".relu"]))
            out = name + ".relu"
        x, fin = out, fout
    graph = helper.make_graph(nodes, "cnn_fc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), records, params


# ------------------------------------------------------------------------------------------ measuring
def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


CHILD_LOAD = r"""
import json, sys, time
t0 = time.perf_counter()
kind, path, warm = sys.argv[1], sys.argv[2], sys.argv[3]
t_warm = 0.0
if kind == "onnx":
    import onnxruntime as ort
    t1 = time.perf_counter()
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
else:
    import dcformat
    t1 = time.perf_counter()
    if warm != "-":  # load numba's compiled kernels first (decode a tiny file), timed apart
        dcformat.load_weights(warm)
        t_warm = time.perf_counter() - t1
        t1 = time.perf_counter()
    s = dcformat.InferenceSession(path, compact=kind == "compact")
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0 - t_warm, "kernels": t_warm, "create": t2 - t1}))
"""

CHILD_MEM = r"""
import gc, json, sys
import numpy as np
import onnxruntime as ort
import dcformat  # imported for every kind, so that only the session is measured

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    try:
        import psutil
        out["VmRSS"] = psutil.Process().memory_info().rss
    except ImportError:
        pass
    return out

kind, path, warm = sys.argv[1], sys.argv[2], sys.argv[3]
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
gc.collect()
s_import = status()
dcformat.load_weights(warm)  # numba's kernels: loaded once per process, whatever the model
gc.collect()
s0 = status()
if kind == "onnx":
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
else:
    s = dcformat.InferenceSession(path, compact=kind == "compact")
gc.collect()
s1 = status()
s.run(None, {"x": x})
s2 = status()
print(json.dumps({"kernels": s0["VmRSS"] - s_import["VmRSS"], "session": s1["VmRSS"] - s0["VmRSS"],
                  "after_run": s2["VmRSS"] - s0["VmRSS"], "peak": max(0, s2["VmHWM"] - s0["VmRSS"])}))
"""


def child(code, *args):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"child failed ({args}):\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1]), wall


def latency(sess, feeds, n):
    for _ in range(3):
        sess.run(None, feeds)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mib(n):
    return f"{n / 2**20:,.1f} MiB"


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 2.4M-parameter model instead of 26M")
    ap.add_argument("--repeat", type=int, default=5, help="warm session creations per file (best is kept)")
    ap.add_argument("--cold", type=int, default=3, help="fresh-process loads per file (median is kept)")
    ap.add_argument("--runs", type=int, default=50, help="inference runs per latency figure (median is kept)")
    ap.add_argument("--dir", help="keep the files here instead of a temporary directory")
    ap.add_argument("--reuse", action="store_true", help="with --dir: use the files already there")
    args = ap.parse_args(argv)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
          f"{platform.platform()}")
    import numba

    print(f"versions: python {platform.python_version()}, numpy {np.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, numba {numba.__version__}, dcformat {dcformat.__version__}")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + " (timings are noisy when other processes compete for the CPUs)")

    tmp = None if args.dir else tempfile.TemporaryDirectory()
    d = args.dir or tmp.name
    os.makedirs(d, exist_ok=True)
    p_onnx, p_dcz = os.path.join(d, "model.onnx"), os.path.join(d, "model.dcz")

    t = time.perf_counter()
    if args.reuse and os.path.exists(p_onnx) and os.path.exists(p_dcz):
        params = sum(int(np.prod(v.shape)) for v in dcformat.load_weights(p_dcz).values())
    else:
        model, records, params = build(*(QUICK if args.quick else FULL))
        onnx.save(model, p_onnx)
        graph, _ = strip_weights(model)
        dcformat.write(p_dcz, records, graph=graph, metadata={"producer": "tools/bench_load.py"})
        del model, records, graph
    t_build = time.perf_counter() - t
    p_warm = os.path.join(d, "warmup.dcz")  # one tiny tensor per codebook encoding: loads numba's kernels
    rng = np.random.default_rng(2)
    dcformat.write(p_warm, [dcformat.encode_codebook(f"t{i}", [0.0, 0.5, -0.5], rng.integers(0, 3, 64), encoding=e)
                            for i, e in enumerate(("codebook-dense", "codebook-sparse"))])
    s_onnx, s_dcz = os.path.getsize(p_onnx), os.path.getsize(p_dcz)
    print(f"model: CNN+FC, {params:,} parameters (conv {CONV_SPARSITY:.0%} pruned {CONV_BITS}-bit, "
          f"fc {FC_SPARSITY:.0%} pruned {FC_BITS}-bit; built in {t_build:.1f} s)")
    print(f"size: model.onnx {s_onnx:,} B, model.dcz {s_dcz:,} B, onnx/dcz {s_onnx / s_dcz:.1f}x")

    # exactness first: the timings below are only worth reading if the models agree
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)}
    ref = ort.InferenceSession(p_onnx, providers=CPU).run(None, feeds)[0]
    full = dcformat.InferenceSession(p_dcz).run(None, feeds)[0]
    comp = dcformat.InferenceSession(p_dcz, compact=True).run(None, feeds)[0]
    print(f"check: full == onnx exactly: {np.array_equal(full, ref)}; compact max abs diff "
          f"{float(np.abs(comp - ref).max()):.2e}, top-1 agreement {np.mean(comp.argmax(1) == ref.argmax(1)):.0%}")

    # session creation, warm
    load = {
        "onnx": lambda: ort.InferenceSession(p_onnx, providers=CPU),
        "dcz": lambda: dcformat.InferenceSession(p_dcz),
        "dcz compact": lambda: dcformat.InferenceSession(p_dcz, compact=True),
    }
    warm = {}
    for k, fn in load.items():
        fn()  # warm-up: page cache, numba's cached kernels, ORT's one-time init
        warm[k] = best(fn, args.repeat)
    print(f"load warm (best of {args.repeat}): onnx {warm['onnx'] * 1e3:.1f} ms, dcz {warm['dcz'] * 1e3:.1f} ms, "
          f"dcz compact {warm['dcz compact'] * 1e3:.1f} ms")
    print(f"load ratio warm: dcz/onnx {warm['dcz'] / warm['onnx']:.2f} (target <= 1.5), "
          f"compact/onnx {warm['dcz compact'] / warm['onnx']:.2f}")

    # where the .dcz time goes
    with dcformat.open(p_dcz) as r:
        t_decode = best(lambda: [r[k] for k in r], args.repeat)
        t_graph = best(lambda: r.graph, args.repeat)
    t_open = best(lambda: dcformat.open(p_dcz).close(), args.repeat)
    t_prep = best(lambda: runtime.prepare(p_dcz), args.repeat)
    t_prep_c = best(lambda: runtime.prepare(p_dcz, compact=True), args.repeat)
    print(f"dcz load breakdown (best of {args.repeat}): open+checks {t_open * 1e3:.1f} ms, decode all tensors "
          f"{t_decode * 1e3:.1f} ms, graph parse {t_graph * 1e3:.1f} ms, prepare {t_prep * 1e3:.1f} ms "
          f"(compact {t_prep_c * 1e3:.1f} ms), ORT session init ~{(warm['dcz'] - t_prep) * 1e3:.1f} ms "
          f"(compact ~{(warm['dcz compact'] - t_prep_c) * 1e3:.1f} ms)")

    # session creation, cold: fresh processes, imports included
    cold = {}
    for k, warm_first in (("onnx", False), ("dcz", False), ("compact", False), ("dcz", True), ("compact", True)):
        runs = [child(CHILD_LOAD, k, p_onnx if k == "onnx" else p_dcz, p_warm if warm_first else "-")
                for _ in range(args.cold)]
        cold[k, warm_first] = c = {key: statistics.median(r[key] for r, _ in runs) for key in ("import", "kernels", "create")}
        c["total"] = statistics.median(r["import"] + r["kernels"] + r["create"] for r, _ in runs)
        c["wall"] = statistics.median(w for _, w in runs)
        label = k + (" (numba kernels loaded first, timed apart)" if warm_first else "")
        print(f"load cold {label}, median of {args.cold} fresh processes: import {c['import'] * 1e3:.0f} ms"
              + (f" + kernels {c['kernels'] * 1e3:.0f} ms" if warm_first else "")
              + f" + session {c['create'] * 1e3:.0f} ms = {c['total'] * 1e3:.0f} ms; process wall {c['wall'] * 1e3:.0f} ms")
    o, z = cold["onnx", False], cold["dcz", False]
    print(f"load ratio cold: dcz/onnx {z['total'] / o['total']:.2f} (import + session), session only "
          f"{z['create'] / o['create']:.2f}, process wall {z['wall'] / o['wall']:.2f}; with numba's kernels already "
          f"loaded: session only {cold['dcz', True]['create'] / o['create']:.2f}")

    # inference latency
    sess = {"onnx": ort.InferenceSession(p_onnx, providers=CPU), "dcz": dcformat.InferenceSession(p_dcz),
            "compact": dcformat.InferenceSession(p_dcz, compact=True)}
    for batch in (1, 64):
        f = {"x": np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)}
        lat = {}
        for _ in range(2):  # interleaved rounds, the best kept
            for k, s in sess.items():
                n = args.runs if k != "compact" else max(5, args.runs // 5)  # compact rebuilds every weight per run
                lat[k] = min(lat.get(k, float("inf")), latency(s, f, n))
        print(f"inference batch {batch} (median of {args.runs}; compact {max(5, args.runs // 5)}): onnx {lat['onnx'] * 1e3:.3f} ms, dcz full "
              f"{lat['dcz'] * 1e3:.3f} ms ({lat['dcz'] / lat['onnx']:.2f}x), compact {lat['compact'] * 1e3:.3f} ms "
              f"({lat['compact'] / lat['onnx']:.2f}x)")
    del sess

    # memory, fresh processes
    mem = {k: child(CHILD_MEM, k, p_onnx if k == "onnx" else p_dcz, p_warm)[0] for k in ("onnx", "dcz", "compact")}
    print(f"memory: numba's compiled kernels add {mib(mem['dcz']['kernels'])} once per process (first .dcz decoded); "
          f"not counted below")
    for k, m in mem.items():
        print(f"memory {k}: RSS +{mib(m['session'])} after session creation, +{mib(m['after_run'])} after a "
              f"first run, peak +{mib(m['peak'])}")
    print(f"memory ratio compact/full: {mem['compact']['session'] / mem['dcz']['session']:.2f} (session), "
          f"{mem['compact']['after_run'] / mem['dcz']['after_run']:.2f} (after a run); "
          f"dcz full/onnx {mem['dcz']['session'] / mem['onnx']['session']:.2f}")
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Load time of real pretrained models: dcformat.InferenceSession(model.dcz) against
onnxruntime.InferenceSession(model.onnx), in one process, best of --repeat, the two
measured in alternation so that a busy machine slows both alike.

The models come from PyPI packages (downloaded with ``pip download --no-deps`` into
--cache, never in CI): PP-OCRv4 detector and recognizer and the PP-OCR direction
classifier (rapidocr-onnxruntime), Silero VAD (silero-vad), Magika's content-type
classifier (magika). Each is converted three ways: ``--lossless`` (the graph as given), ``--lossless
--graph-opt basic`` (the same weights after ONNX Runtime's basic graph optimisations, done once at conversion:
converters/graphopt.py) and ``--sparsity 0.5 --bits 6`` (codebook-coded weights, decoded at load time; the
graph optimised as dcconvert's default does for lossy conversions).

dcformat decodes with numba's kernels or, until a process has spent about what starting numba
costs (dcformat/decode.py: NUMBA_START_S), with the numpy decoder (no numba start; slower per
symbol). So each model is measured three ways, each column best of --repeat against ORT in
alternation: *numba* and *numpy* (DCZ_DECODER forced, in this process: numba is started once, before
the first measurement), and *default*: a fresh child process per model, the decoder as the default
picks it there (what the first loads of a new process get; a process that keeps loading models turns
to numba after about NUMBA_START_S of numpy decoding). The worst ratio of each column is printed.

    .venv/bin/python tools/bench_load_real.py                 # all models
    .venv/bin/python tools/bench_load_real.py model.onnx ...  # your own files
    .venv/bin/python tools/bench_load_real.py --keep /tmp/dcz                  # keep the .dcz files, reuse them
    .venv/bin/python tools/bench_load_real.py --keep /tmp/dcz --root ../base   # the same files, another checkout
    .venv/bin/python tools/bench_load_real.py --decoder numba                  # one column only
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PACKAGES = {  # package -> ONNX files inside its wheel
    "rapidocr-onnxruntime==1.4.4": ["ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx",
                                    "ch_ppocr_mobile_v2.0_cls_infer.onnx"],
    "silero-vad==6.2.3": ["silero_vad.onnx"],
    "magika==1.0.3": ["model.onnx"],
}
VARIANTS = {"lossless": ["--lossless"], "lossless-opt": ["--lossless", "--graph-opt", "basic"],
            "codebook": ["--sparsity", "0.5", "--bits", "6"]}


def fetch(cache: str) -> list[str]:
    """The ONNX files of PACKAGES, extracted from their wheels into ``cache`` (downloaded once)."""
    os.makedirs(cache, exist_ok=True)
    paths = []
    for pkg, files in PACKAGES.items():
        name = pkg.split("==")[0]
        wheels = glob.glob(os.path.join(cache, name.replace("-", "_") + "-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", cache, pkg], check=True)
            wheels = glob.glob(os.path.join(cache, name.replace("-", "_") + "-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            for member in z.namelist():
                base = os.path.basename(member)
                if base in files:
                    out = os.path.join(cache, f"{name}-{base}")
                    if not os.path.exists(out):
                        with z.open(member) as src, open(out, "wb") as dst:
                            dst.write(src.read())
                    paths.append(out)
    return paths


CLOCK = [time.perf_counter]


def best_pair(a, b, repeat: int) -> tuple[float, float]:
    """min over ``repeat`` alternating runs of a() and b(), after one warm-up of each."""
    a(), b()
    clock = CLOCK[0]
    ta, tb = [], []
    for _ in range(repeat):
        t = clock()
        a()
        ta.append(clock() - t)
        t = clock()
        b()
        tb.append(clock() - t)
    return min(ta), min(tb)


DECODERS = ("numba", "numpy", "default")

CHILD = r"""
import json, os, sys, time
sys.path[:0] = json.loads(sys.argv[1])
os.environ.pop("DCZ_DECODER", None)
import onnxruntime as ort
import dcformat
sys.path.insert(0, os.path.join(sys.argv[2], "tools"))
import bench_load_real as b
if sys.argv[5] == "cpu":
    b.CLOCK[0] = time.process_time
so = ort.SessionOptions()
so.log_severity_level = 3
cpu = ["CPUExecutionProvider"]
onnx_path, dcz = sys.argv[3], sys.argv[4]
t_ort, t_dcz = b.best_pair(lambda: ort.InferenceSession(onnx_path, sess_options=so, providers=cpu),
                           lambda: dcformat.InferenceSession(dcz, providers=cpu), int(sys.argv[6]))
print(json.dumps([t_ort, t_dcz, "dcformat.kernels" in sys.modules]))
"""


def measure(decoder: str, onnx_path: str, dcz: str, args, so, ort, dcformat) -> tuple[float, float, str]:
    """(ORT seconds, dcformat seconds, decoder that ran) for one model, best of args.repeat alternating."""
    cpu = ["CPUExecutionProvider"]
    if decoder == "default":
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps([x for x in sys.path if x]), ROOT, onnx_path, dcz,
                            args.clock, str(args.repeat)], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"child failed: {p.stderr.strip()}")
        t_ort, t_dcz, numba = json.loads(p.stdout.strip().splitlines()[-1])
        return t_ort, t_dcz, "numba" if numba else "numpy"
    os.environ["DCZ_DECODER"] = decoder
    try:
        t_ort, t_dcz = best_pair(lambda: ort.InferenceSession(onnx_path, sess_options=so, providers=cpu),
                                 lambda: dcformat.InferenceSession(dcz, providers=cpu), args.repeat)
    finally:
        os.environ.pop("DCZ_DECODER", None)
    return t_ort, t_dcz, decoder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="ONNX files (default: the PyPI models)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/dcz-bench"), help="where wheels and models go")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--keep", metavar="DIR", help="keep the converted .dcz files here and reuse those already there "
                                                  "(a rerun measures without converting again)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (all its threads), steadier than wall time on a busy machine")
    ap.add_argument("--root", help="import dcformat from this checkout instead (a before/after on the same files)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), action="append", help="only these variants (repeatable)")
    ap.add_argument("--decoder", choices=DECODERS, action="append",
                    help="only these columns (repeatable; default: all three, see above)")
    args = ap.parse_args(argv)
    if args.clock == "cpu":
        CLOCK[0] = time.process_time
    if args.root:
        sys.path.insert(0, os.path.abspath(args.root))

    import onnxruntime as ort

    import dcformat

    print(f"dcformat from {os.path.dirname(os.path.dirname(os.path.abspath(dcformat.__file__)))}")
    models = args.models or fetch(args.cache)
    cpu = ["CPUExecutionProvider"]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        for path in models:
            opt = os.path.join(work, f"{os.path.basename(path)}.ort-basic.onnx")  # the other baseline: ORT's own
            if not os.path.exists(opt):  # offline optimisation (SessionOptions.optimized_model_filepath)
                o = ort.SessionOptions()
                o.log_severity_level = 3
                o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
                o.optimized_model_filepath = opt
                ort.InferenceSession(path, sess_options=o, providers=cpu)
            t_o, t_b = best_pair(lambda: ort.InferenceSession(path, sess_options=so, providers=cpu),
                                 lambda: ort.InferenceSession(opt, sess_options=so, providers=cpu), args.repeat)
            print(f"{os.path.basename(path):48s} ORT on the .onnx {t_o * 1e3:6.1f} ms, on ORT's own basic-optimised "
                  f"copy of it {t_b * 1e3:6.1f} ms ({t_b / t_o:.2f}x)", flush=True)
            for variant, flags in VARIANTS.items():
                if args.variant and variant not in args.variant:
                    continue
                out = os.path.join(work, f"{os.path.basename(path)}.{variant}.dcz")
                if not (args.keep and os.path.exists(out)):
                    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dcconvert"), path, "-o", out,
                                        "-q", "--force", *flags], stderr=subprocess.PIPE, text=True)
                    if p.returncode:  # the fidelity warnings of explicit --sparsity/--bits are not shown
                        raise SystemExit(f"dcconvert {path} failed: {p.stderr.strip()}")
                cols = {}
                for decoder in args.decoder or DECODERS:
                    cols[decoder] = measure(decoder, path, out, args, so, ort, dcformat)
                rows.append((os.path.basename(path), variant, os.path.getsize(path), os.path.getsize(out), cols))
                print(f"{rows[-1][0]:48s} {variant:12s} onnx {rows[-1][2]:>10,} B  dcz {rows[-1][3]:>10,} B  "
                      + "  ".join(f"{d}: ORT {t_o * 1e3:6.1f} dcz {t_d * 1e3:6.1f} ms ({ran}) {t_d / t_o:.2f}x"
                                  for d, (t_o, t_d, ran) in cols.items()), flush=True)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for decoder in args.decoder or DECODERS:
        worst = max(r[4][decoder][1] / r[4][decoder][0] for r in rows)
        where = ("fresh child process per model, decoder as the default picks it" if decoder == "default"
                 else f"DCZ_DECODER={decoder}, same process")
        print(f"worst load ratio (dcz / ORT, best of {args.repeat}, {args.clock} time), {decoder} ({where}): {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

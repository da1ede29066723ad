#!/usr/bin/env python3
"""Load time of real pretrained models: dcformat.InferenceSession(model.dcz) against
onnxruntime.InferenceSession(model.onnx), in one process, best of --repeat, the two
measured in alternation so that a busy machine slows both alike.

The models come from PyPI packages (downloaded with ``pip download --no-deps`` into
--cache, never in CI): PP-OCRv4 detector and recognizer and the PP-OCR direction
classifier (rapidocr-onnxruntime), Silero VAD (silero-vad), Magika's content-type
classifier (magika). Each is converted twice: ``--lossless`` and ``--sparsity 0.5 --bits 6``
(codebook-coded weights, decoded at load time).

    .venv/bin/python tools/bench_load_real.py                 # all models
    .venv/bin/python tools/bench_load_real.py model.onnx ...  # your own files
    .venv/bin/python tools/bench_load_real.py --keep /tmp/dcz                  # keep the .dcz files, reuse them
    .venv/bin/python tools/bench_load_real.py --keep /tmp/dcz --root ../base   # the same files, another checkout
"""

from __future__ import annotations

import argparse
import glob
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
VARIANTS = {"lossless": ["--lossless"], "codebook": ["--sparsity", "0.5", "--bits", "6"]}


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
            for variant, flags in VARIANTS.items():
                if args.variant and variant not in args.variant:
                    continue
                out = os.path.join(work, f"{os.path.basename(path)}.{variant}.dcz")
                if not (args.keep and os.path.exists(out)):
                    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "dcconvert"), path, "-o", out,
                                        "-q", "--force", *flags], stderr=subprocess.PIPE, text=True)
                    if p.returncode:  # the fidelity warnings of explicit --sparsity/--bits are not shown
                        raise SystemExit(f"dcconvert {path} failed: {p.stderr.strip()}")
                t_ort, t_dcz = best_pair(lambda: ort.InferenceSession(path, sess_options=so, providers=cpu),
                                         lambda: dcformat.InferenceSession(out, providers=cpu), args.repeat)
                rows.append((os.path.basename(path), variant, os.path.getsize(path), os.path.getsize(out), t_ort, t_dcz))
                r = rows[-1]
                print(f"{r[0]:48s} {r[1]:9s} onnx {r[2]:>10,} B  dcz {r[3]:>10,} B   ORT {r[4] * 1e3:7.1f} ms   "
                      f"dcz {r[5] * 1e3:7.1f} ms   ratio {r[5] / r[4]:.2f}", flush=True)
    worst = max(r[5] / r[4] for r in rows)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"worst load ratio (dcz / ORT, same process, best of {args.repeat}, {args.clock} time): {worst:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Sequential (error-propagation-aware) fitting against fitting each layer to the float model's inputs.

For every layer dcconvert's error compensation covers (a usable H from the calibration set), the
same plan -- every such layer with one scale per output channel at B bits, --sparsity pruned -- is
built two ways: each layer alone against the float model's inputs X (converters.perchannel.share
with the layer's H, what dcconvert did before converters/sequential.py), and sequentially
(converters.sequential.Sequential: in topological order, each layer fitted to the float outputs
from the inputs X_hat the already-compressed layers before it give). Printed: the whole model's
relative L2 output error (dcformat.fidelity, worst output) on the held-out inputs and on the
calibration inputs, the seconds each took (wall, same run) and the runs of the model over the
calibration set the sequential pass made (one per layer). PP-OCR models: rendered text pages / lines as tools/bench_real_models.py
makes them (16 for calibration, 8 others held out).

    PYTHONPATH=$PWD .venv/bin/python tools/bench_sequential.py                     # det, rec, cls at 8,6,5 bits
    PYTHONPATH=$PWD .venv/bin/python tools/bench_sequential.py --only cls --bits 4 --sparsity 0.25
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

FILES = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
         "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}


def build(w, lay, bits, sparsity):
    from converters import perchannel

    axis = perchannel.layer_axis(lay, w.ndim)
    cb, idx, s = perchannel.share(w, axis, sparsity, bits, layer=lay)
    return perchannel.decode(cb, idx, s, axis, w.dtype)


def main(argv=None) -> int:
    from bench_real_models import ocr_sets

    from converters import budget, calibrate, hessian, sources
    from converters.sequential import Sequential
    from dcformat import fidelity

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="det,rec,cls")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/dcz-bench"))
    ap.add_argument("--bits", default="8,6,5")
    ap.add_argument("--sparsity", type=float, default=0.0)
    ap.add_argument("--samples", type=int, default=16, help="calibration samples (rendered)")
    a = ap.parse_args(argv)
    bits = [int(b) for b in a.bits.split(",")]
    print("| model | bits | layers | weights | held-out: per layer | held-out: sequential | calibration: per layer "
          "| calibration: sequential | s per layer | s sequential | runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in a.only.split(","):
        path = os.path.join(a.cache, f"rapidocr-onnxruntime-{FILES[key]}")
        src = sources.load(path)
        decl, _, _ = calibrate.calibration(src.graph, None, 1)
        calib, held = ocr_sets(key, a.samples, 100), ocr_sets(key, 8, 500)
        found, _ = hessian.for_model(src.graph, src.weights, calib, decl, src.roles, 512)
        names = sorted(found)
        runner = budget.Runner(src.graph, src.weights, names)
        base_h, base_c = runner.run(held, decl, src.weights), runner.run(calib, decl, src.weights)
        seq = Sequential(src.graph, src.weights, calib, decl, found, names)
        for b in bits:
            t0 = time.perf_counter()
            plain = {n: build(src.weights[n], found[n], b, a.sparsity) for n in names}
            t1 = time.perf_counter()
            runs0 = seq.runs
            seq._last = []  # a fresh pass (the float inputs stay cached, as within one dcconvert)
            got = seq.apply({n: b for n in names}, lambda n, w, lay, bb: build(w, lay, bb, a.sparsity), {})
            t2 = time.perf_counter()
            sq = {n: r[0] for n, r in got.items()}
            err = lambda base, data, rec: fidelity.compare(base, runner.run(data, decl, src.weights, rec))["max_rel_l2"]  # noqa: E731
            print(f"| {key} | {b} | {len(names)} | {sum(src.weights[n].size for n in names):,} | "
                  f"{err(base_h, held, plain):.4g} | {err(base_h, held, sq):.4g} | {err(base_c, calib, plain):.4g} | "
                  f"{err(base_c, calib, sq):.4g} | {t1 - t0:.0f} | {t2 - t1:.0f} | {seq.runs - runs0} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Per-channel scales against one codebook per tensor, and the choice of scale, on real models.

For every Conv/Gemm/MatMul weight that dcconvert's error compensation covers (calibration inputs:
synthetic ones from the graph, as dcconvert makes them), prints the median over layers of the
layer's relative output error ||X (W - Q)^T||^2 / ||X W^T||^2 for: one codebook per tensor
(converters.oneshot.share), and per-channel scales (converters.perchannel.share) with the scale
of each channel its max |w| ("maxabs"), 3x its RMS ("rms") or max |w| refitted by least squares
against H after the indices are chosen ("lsq"); then the whole model's relative L2 output error
(dcformat.fidelity, worst output) with every such layer replaced at once, on held-out synthetic
inputs (another seed; PP-OCR models: rendered text pages and lines as tools/bench_real_models.py
makes them, 16 for calibration and 8 held out) -- all error-compensated, no pruning unless --sparsity.

    PYTHONPATH=$PWD .venv/bin/python tools/bench_perchannel.py                 # PP-OCRv4 det, 3-6 bits
    PYTHONPATH=$PWD .venv/bin/python tools/bench_perchannel.py model.onnx --bits 4,5
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

DEFAULT = ["ch_PP-OCRv4_det_infer.onnx"]
VARIANTS = ("tensor", "maxabs", "rms", "lsq")


def rel_error(w, q, lay) -> float:
    """Relative squared output error ||X (W - Q)^T||^2 / ||X W^T||^2 of the layer, from its H."""
    from converters.budget import local_error

    return local_error(w, q, lay) ** 2


def build(w, lay, variant, sparsity, bits):
    from converters import oneshot, perchannel

    if variant == "tensor":
        cb, idx = oneshot.share(w, lay, sparsity, bits)
        return cb.astype(np.float32)[idx].astype(w.dtype)
    axis = perchannel.layer_axis(lay, w.ndim)
    cb, idx, s = perchannel.share(w, axis, sparsity, bits, layer=lay, method=variant)
    return perchannel.decode(cb, idx, s, axis, w.dtype)


def main(argv=None) -> int:
    from bench_load_real import fetch

    from converters import budget, calibrate, hessian, sources
    from dcformat import fidelity

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/dcz-bench"))
    ap.add_argument("--sparsity", type=float, default=0.0)
    ap.add_argument("--bits", default="3,4,5,6")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples (synthetic)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--synthetic", action="store_true", help="synthetic inputs for PP-OCR too (default: rendered text)")
    args = ap.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    variants = args.variants.split(",")
    models = args.models or [p for p in fetch(args.cache) if os.path.basename(p).split("-", 2)[-1] in DEFAULT]
    for path in models:
        src = sources.load(path)
        kind = next((k for k in ("det", "rec", "cls") if f"_{k}_" in os.path.basename(path)), None)
        decl, calib, _ = calibrate.calibration(src.graph, None, args.samples)
        _, held, _ = calibrate.calibration(src.graph, None, 8, seed=1)
        if kind and not args.synthetic:  # PP-OCR: rendered text, as tools/bench_real_models.py calibrates
            from bench_real_models import ocr_sets

            calib, held = ocr_sets(kind, args.samples, 100), ocr_sets(kind, 8, 500)
        found, _ = hessian.for_model(src.graph, src.weights, calib, decl, src.roles, 512)
        names = sorted(found)
        runner = budget.Runner(src.graph, src.weights, names)
        base = runner.run(held, decl, src.weights)
        print(f"{os.path.basename(path)}: {len(names)} layers, {sum(src.weights[n].size for n in names):,} weights, "
              f"{args.sparsity:.0%} pruned; relative output error (median over layers, per layer) and the whole model's "
              "(held-out, every layer replaced)")
        print("| bits | " + " | ".join(f"{v} layer median" for v in variants) + " | "
              + " | ".join(f"{v} model" for v in variants) + " | seconds |")
        print("|---:|" + "---:|" * (2 * len(variants) + 1))
        for b in bits:
            med, model, t0 = {}, {}, time.perf_counter()
            for v in variants:
                errs, recon = [], {}
                for n in names:
                    w = src.weights[n]
                    recon[n] = build(w, found[n], v, args.sparsity, b)
                    errs.append(rel_error(w, recon[n], found[n]))
                med[v] = float(np.median(errs))
                model[v] = fidelity.compare(base, runner.run(held, decl, src.weights, recon))["max_rel_l2"]
            print(f"| {b} | " + " | ".join(f"{med[v]:.4g}" for v in variants) + " | "
                  + " | ".join(f"{model[v]:.4g}" for v in variants) + f" | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

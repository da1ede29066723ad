#!/usr/bin/env python3
"""Error-compensated one-shot sharing against plain magnitude pruning + k-means, on real models.

For every Conv/Gemm/MatMul weight of each model, with the inputs each layer sees on the
calibration set (synthetic inputs from the graph unless --calibration), prints the layer's
relative output error ||X (W - Q)^T||^2 / ||X W^T||^2 for the plain and the compensated
settings (median over layers), then converts the model with dcconvert's defaults with and
without ``--compensate`` and prints bytes and measured fidelity side by side.

Models: PP-OCR's direction classifier and detector (from rapidocr-onnxruntime's wheel,
downloaded with ``pip download --no-deps`` into --cache, as tools/bench_load_real.py does),
or any ONNX files given.

    .venv/bin/python tools/bench_oneshot.py                    # PP-OCR cls + det
    .venv/bin/python tools/bench_oneshot.py model.onnx --bits 4 --sparsity 0.5
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
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

DEFAULT = ["ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_det_infer.onnx"]


def layer_errors(path: str, sparsity: float, bits: int, samples: int) -> tuple[float, float, int, float]:
    """(median plain error, median compensated error, layers, seconds of compensation)."""
    from converters import calibrate, hessian, oneshot, sources
    from converters.budget import local_error
    from converters.prune import magnitude_mask
    from converters.quantize import quantize

    src = sources.load(path)
    decl, calib, _ = calibrate.calibration(src.graph, None, samples)
    found, _ = hessian.for_model(src.graph, src.weights, calib, decl, src.roles, 512)
    plain, comp, took = [], [], 0.0
    for name, lay in found.items():
        w = src.weights[name]
        keep = magnitude_mask(w, sparsity) & (w != 0) if sparsity else w != 0
        cb, idx = quantize(np.where(keep, w, 0).astype(w.dtype), bits)
        t = time.perf_counter()
        cb2, idx2 = oneshot.share(w, lay, sparsity, bits)
        took += time.perf_counter() - t
        plain.append(local_error(w, cb[idx], lay) ** 2)  # relative squared output error, from H
        comp.append(local_error(w, cb2[idx2], lay) ** 2)
    return float(np.median(plain)), float(np.median(comp)), len(found), took


def convert(path: str, flag: str, out: str) -> dict:
    exe = os.path.join(os.path.dirname(sys.executable), "dcconvert")
    t = time.perf_counter()
    p = subprocess.run([exe, path, "-o", out, "--json", flag], capture_output=True, text=True, check=True)
    rep = json.loads(p.stdout)
    rep["wall"] = time.perf_counter() - t
    return rep


def main(argv=None) -> int:
    from bench_load_real import fetch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/dcz-bench"))
    ap.add_argument("--sparsity", type=float, default=0.0)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4, help="calibration samples for the per-layer comparison")
    ap.add_argument("--layers-only", action="store_true", help="only the per-layer comparison (no conversions)")
    args = ap.parse_args(argv)
    models = args.models or [p for p in fetch(args.cache) if os.path.basename(p).split("-", 2)[-1] in DEFAULT]
    print(f"per layer, {args.sparsity:.0%} pruned and {args.bits} bits: median relative output error over the layers")
    for path in models:
        e0, e1, n, took = layer_errors(path, args.sparsity, args.bits, args.samples)
        print(f"  {os.path.basename(path):52s} {n:3d} layers  plain {e0:.4g}  compensated {e1:.4g}  "
              f"({e0 / max(e1, 1e-30):.1f}x lower; {took:.1f} s)")
    if args.layers_only:
        return 0
    print("dcconvert defaults (error budget 0.01, 16 synthetic samples): --no-compensate against --compensate")
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            row = []
            for flag in ("--no-compensate", "--compensate"):
                rep = convert(path, flag, os.path.join(tmp, "m.dcz"))
                f = rep["fidelity"]
                row.append(f"{flag:16s} {rep['dcz_bytes']:>10,} B  error {f['max_rel_l2']:.4f}  "
                           f"min cosine {f['min_cosine']:.5f}  {rep['wall']:.0f} s")
            print(f"  {os.path.basename(path)} ({os.path.getsize(path):,} B):")
            for r in row:
                print(f"    {r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

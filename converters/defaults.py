"""dcconvert's default settings and the option parsers click needs when the commands are defined.

numpy-free (standard library only), so ``dcconvert --help`` and ``dcz --help`` do not import numpy:
the modules that use these values (compress, ecvq, quantize, calibrate) re-export them from here.
"""

from __future__ import annotations

import math

# Used when --sparsity/--bits (or another pruning flag) are given without --max-error for the layers
# they leave unset; with no such flag dcconvert searches per-layer settings within the error budget.
DEFAULT_BITS = {"conv": 8, "fc": 5, "embedding": 8}  # as in the paper (embedding tables: 8)
DEFAULT_SPARSITY = {"conv": 0.3, "fc": 0.5, "embedding": 0.0}
DEFAULT_MIN_SIZE = 512

# converters.calibrate
DEFAULT_MAX_ERROR = 0.05  # 5% relative L2 output error: the loosest budget that kept every task of the five real
# models of tools/bench_real_models.py (OCR text, VAD decisions, Magika labels on held-out files); 0.1 changed a
# Magika label (BENCHMARKS.md, issue 13)
# the model error --max-error bounds (dcformat.fidelity.METRICS has the definitions; names here so that
# --help needs no numpy)
METRIC_NAMES = ("rel_l2", "decision")
DEFAULT_METRIC = "rel_l2"
WARN_COSINE = 0.999  # explicit settings: a worst-sample cosine below this (or error over the budget) warns

# converters.quantize
INITS = ("linear", "density", "forgy", "kmeans++")

# converters.graphopt
GRAPH_OPT_MODES = ("auto", "basic", "none")  # --graph-opt: auto = basic unless --lossless

# converters.ecvq
DEFAULT_STRENGTH = 0.5  # conservative: a bit is worth half the plain k-means error per weight
MAX_STRENGTH = 1e6


def parse_strength(text) -> float:
    """The ECVQ strength from an option's text: a number in [0, MAX_STRENGTH]; ValueError (one line) otherwise."""
    try:
        v = float(str(text).strip())
    except ValueError:
        raise ValueError(f"ECVQ strength must be a number >= 0 (0: plain k-means), got {text!r}") from None
    if not math.isfinite(v) or not 0 <= v <= MAX_STRENGTH:
        raise ValueError(f"ECVQ strength must be in [0, {MAX_STRENGTH:g}] (0: plain k-means), got {text!r}")
    return v

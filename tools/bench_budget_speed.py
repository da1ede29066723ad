"""Speed of the error-budget search and of k-means++ initialisation (issue 12's speed targets).

1. A 25M-parameter BERT-style encoder (token + position embeddings, 7 transformer layers of
   hidden size 384, built with onnx.helper, random weights) converted by `dcconvert` with its
   defaults (budget search, 16 synthetic calibration samples of 32 tokens). Target: <= 180 s on
   the project's 2-core machine. Printed: wall seconds and the share spent in the search.
2. k-means++ initialisation at 8 bits (256 centres) on a 12M-element embedding-like tensor: the
   previous O(bins x k^2) loop (kept here as the reference) against converters.quantize's, same
   seed, checked to give the same centres; printed as a ratio measured in the same run.

    PYTHONPATH=$PWD .venv/bin/python tools/bench_budget_speed.py [--skip-model] [--skip-kmeans]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def encoder(path, vocab=32768, hidden=384, layers=7, ffn=1536, seed=0) -> int:
    """A BERT-like encoder as ONNX; returns its parameter count."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape, scale):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def c(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    w("tok.weight", (vocab, hidden), 0.05)
    w("pos.weight", (512, hidden), 0.05)
    w("type.weight", (2, hidden), 0.05)
    c("ln.g", np.ones(hidden, np.float32))
    c("ln.b", np.zeros(hidden, np.float32))
    c("scale", np.array(1 / math.sqrt(hidden), np.float32))
    c("zero", np.array([0], np.int64))
    c("one", np.array([1], np.int64))
    c("perm_axes", np.array([1], np.int64))
    nodes += [
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seqlen"], axis=0),
        helper.make_node("Range", ["zero_s", "seqlen_s", "one_s"], ["positions"]),
        helper.make_node("Gather", ["tok.weight", "input_ids"], ["e_tok"]),
        helper.make_node("Gather", ["pos.weight", "positions"], ["e_pos"]),
        helper.make_node("Gather", ["type.weight", "token_type_ids"], ["e_type"]),
        helper.make_node("Add", ["e_tok", "e_pos"], ["e1"]),
        helper.make_node("Add", ["e1", "e_type"], ["e2"]),
        helper.make_node("LayerNormalization", ["e2", "ln.g", "ln.b"], ["h0"], axis=-1),
        helper.make_node("Squeeze", ["seqlen"], ["seqlen_s"]),
    ]
    c("zero_s", np.array(0, np.int64))
    c("one_s", np.array(1, np.int64))
    h = "h0"
    for i in range(layers):
        p = f"l{i}."
        for m in ("q", "k", "v", "o"):
            w(p + m, (hidden, hidden), 1 / math.sqrt(hidden))
        w(p + "up", (hidden, ffn), 1 / math.sqrt(hidden))
        w(p + "down", (ffn, hidden), 1 / math.sqrt(ffn))
        nodes += [
            helper.make_node("MatMul", [h, p + "q"], [p + "Q"]),
            helper.make_node("MatMul", [h, p + "k"], [p + "K"]),
            helper.make_node("MatMul", [h, p + "v"], [p + "V"]),
            helper.make_node("Transpose", [p + "K"], [p + "Kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [p + "Q", p + "Kt"], [p + "S0"]),
            helper.make_node("Mul", [p + "S0", "scale"], [p + "S"]),
            helper.make_node("Softmax", [p + "S"], [p + "A"], axis=-1),
            helper.make_node("MatMul", [p + "A", p + "V"], [p + "C"]),
            helper.make_node("MatMul", [p + "C", p + "o"], [p + "O"]),
            helper.make_node("Add", [h, p + "O"], [p + "r1"]),
            helper.make_node("LayerNormalization", [p + "r1", "ln.g", "ln.b"], [p + "n1"], axis=-1),
            helper.make_node("MatMul", [p + "n1", p + "up"], [p + "U"]),
            helper.make_node("Relu", [p + "U"], [p + "G"]),
            helper.make_node("MatMul", [p + "G", p + "down"], [p + "D"]),
            helper.make_node("Add", [p + "n1", p + "D"], [p + "r2"]),
            helper.make_node("LayerNormalization", [p + "r2", "ln.g", "ln.b"], [p + "out"], axis=-1),
        ]
        h = p + "out"
    nodes.append(helper.make_node("ReduceMean", [h, "perm_axes"], ["embedding"], keepdims=0))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "token_type_ids")]
    g = helper.make_graph(nodes, "encoder", ins,
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), os.fspath(path))
    return sum(int(np.prod(t.dims)) for t in inits)


def old_kmeanspp(h, k, rng):
    """converters.quantize._init('kmeans++') before issue 12: a full pass over all chosen centres per pick."""
    cdf = np.cumsum(h.count) / h.count.sum()
    c = [h.centers[min(np.searchsorted(cdf, rng.random()), h.centers.size - 1)]]
    for _ in range(k - 1):
        d2 = np.min((h.centers[:, None] - np.array(c)[None, :]) ** 2, axis=1) * h.count
        if d2.sum() <= 0:
            break
        c.append(h.centers[min(np.searchsorted(np.cumsum(d2) / d2.sum(), rng.random()), h.centers.size - 1)])
    return np.sort(np.array(c))


def bench_kmeans():
    from converters.quantize import Histogram, _init, quantize

    w = (np.random.default_rng(0).standard_normal(12_000_000) * 0.05).astype(np.float32)
    h = Histogram(w)
    t = time.perf_counter()
    old = old_kmeanspp(h, 256, np.random.default_rng(0))
    t_old = time.perf_counter() - t
    t = time.perf_counter()
    new = _init(h, 256, "kmeans++", np.random.default_rng(0))
    t_new = time.perf_counter() - t
    assert np.array_equal(old, new), "the vectorised init must pick the same centres"
    t = time.perf_counter()
    quantize(w, 8, init="kmeans++")
    t_q = time.perf_counter() - t
    print(f"kmeans++ init, 8 bits, 12M elements: before {t_old:.2f} s, after {t_new:.3f} s ({t_old / t_new:.0f}x faster), "
          f"same centres; whole quantize(8 bits, kmeans++) {t_q:.2f} s")


def bench_model():
    import json

    d = tempfile.mkdtemp(prefix="dcz-speed-")
    src = os.path.join(d, "encoder.onnx")
    n = encoder(src)
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "import sys; from converters.cli import main; main(sys.argv[1:])", src,
                        "-o", os.path.join(d, "encoder.dcz"), "--json"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode:
        sys.exit(r.stderr)
    rep = json.loads(r.stdout)
    s = rep.get("search", {})
    f = rep["fidelity"]
    print(f"{n:,}-parameter encoder, 16 synthetic samples: dcconvert (defaults) {wall:.1f} s wall "
          f"(search {s.get('seconds', 0):.1f} s, {s.get('trials')} trial runs; target <= 180 s); "
          f"{rep['source']['bytes']:,} -> {rep['dcz_bytes']:,} bytes; error {f['max_rel_l2']:.3g} "
          f"(budget {f['budget']}); {sum(x['action'] == 'pruned+shared' for x in rep['layers'])} of "
          f"{len(rep['layers'])} tensors shared")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-kmeans", action="store_true")
    a = ap.parse_args(argv)
    if not a.skip_kmeans:
        bench_kmeans()
    if not a.skip_model:
        bench_model()


if __name__ == "__main__":
    main()

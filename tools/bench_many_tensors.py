#!/usr/bin/env python3
"""Scaling with the number of tensors: open + verify, to_onnx and compact-mode prepare.

A model of N layers, each a 1024-element codebook weight (compacted in compact mode) and a
one-element bias (kept dense), is written for N = --layers and twice and four times that;
each operation is timed (best of --repeat) and printed with the ratio to the previous N.
Linear work doubles (ratio ~2); a quadratic step shows as ratios growing towards 4 (compact
prepare removed compacted initializers one by one, each removal comparing its way past the
biases kept before it: 0.82 / 2.35 / 6.88 s for 2,000 / 4,000 / 8,000 layers, 2.9x per
doubling; now 0.66 / 1.21 / 2.48 s, ~2x).

    .venv/bin/python tools/bench_many_tensors.py                 # 2,000 / 4,000 / 8,000 layers
    .venv/bin/python tools/bench_many_tensors.py --layers 500    # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dcformat  # noqa: E402
from dcformat.graph import strip_weights  # noqa: E402
from dcformat.runtime import prepare  # noqa: E402
from bench_load import best  # noqa: E402  (tools/ is on the path when run as a script)


def build(n: int, path: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    codebook = np.linspace(-1, 1, 16).astype(np.float32)
    inits, nodes = [], []
    for i in range(n):
        inits.append(numpy_helper.from_array(codebook[rng.integers(0, 16, 1024)], f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(1).astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("Add", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"z{i}"]))
        nodes.append(helper.make_node("Add", [f"z{i}", f"b{i}"], [f"y{i}"]))
    graph = helper.make_graph(nodes, "layers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
                              [helper.make_tensor_value_info(f"y{n - 1}", TensorProto.FLOAT, [1024])], inits)
    stripped, arrays = strip_weights(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()], graph=stripped)


def verify(path: str) -> None:
    with dcformat.open(path) as r:
        r.verify()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2000, help="smallest number of layers (then x2, x4)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    ops = {
        "open + verify": verify,
        "to_onnx": dcformat.to_onnx,
        "prepare (compact)": lambda p: prepare(p, compact=True),
    }
    sizes = [args.layers, 2 * args.layers, 4 * args.layers]
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for n in sizes:
            paths[n] = os.path.join(d, f"layers{n}.dcz")
            build(n, paths[n])
        print(f"{'operation':20} " + " ".join(f"{f'{n:,} layers':>22}" for n in sizes))
        for name, fn in ops.items():
            fn(paths[sizes[0]])  # warm-up: kernels, imports
            row, prev = [], None
            for n in sizes:
                t = best(lambda: fn(paths[n]), args.repeat)
                row.append(f"{t:8.3f} s" + (f" ({t / prev:4.2f}x)" if prev else " " * 8))
                prev = t
            print(f"{name:20} " + " ".join(f"{c:>22}" for c in row))
    print("(x): time against the previous column's; linear work doubles")
    return 0


if __name__ == "__main__":
    sys.exit(main())

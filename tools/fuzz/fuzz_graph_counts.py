#!/usr/bin/env python3
"""Random graphs against the count limits (FORMAT.md section 10): empty nodes, attributes, node inputs,
subgraphs, functions and training graphs, in files of random sizes.

    python tools/fuzz/fuzz_graph_counts.py 60        # seconds

For each graph: written unchecked (as a hostile file would be), reading its graph must either give a
LimitError or a model whose objects times GRAPH_OBJECT_COST fit the bound, and take at most ~1 s per MB
of file (plus a fixed 0.2 s); written by dcformat.write (checked), it must open and read with the
default bound (the writer pads). Prints the counts and the slowest read, in seconds per MB.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import helper

import dcformat
from dcformat.constants import GRAPH_OBJECT_COST, expansion_bound
from dcformat.graph import graph_objects


def random_model(rng: random.Random) -> onnx.ModelProto:
    def graph(depth):
        nodes = []
        for _ in range(rng.choice([0, 1, 10, 1000, 20000, 60000])):
            nodes.append(onnx.NodeProto())
        if nodes and rng.random() < 0.5:
            n = nodes[0]
            n.input.extend([""] * rng.choice([0, 100, 30000]))
            for _ in range(rng.choice([0, 100, 20000])):
                n.attribute.add()
            if depth < 3 and rng.random() < 0.5:
                a = n.attribute.add()
                a.name, a.type = "body", onnx.AttributeProto.GRAPH
                a.g.CopyFrom(graph(depth + 1))
        g = onnx.GraphProto(name="g")
        g.node.extend(nodes)
        return g

    m = helper.make_model(graph(0), opset_imports=[helper.make_opsetid("", 17)])
    for _ in range(rng.choice([0, 0, 1000, 20000])):
        m.training_info.add()
    for _ in range(rng.choice([0, 0, 2])):
        f = m.functions.add()
        f.name, f.domain = "f", "x"
        f.node.extend([onnx.NodeProto()] * rng.choice([10, 30000]))
    return m


def main() -> None:
    total = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    deadline = time.monotonic() + total
    stats = {"trials": 0, "refused": 0, "read": 0, "written_and_read": 0}
    worst = 0.0
    with tempfile.TemporaryDirectory() as d:
        while time.monotonic() < deadline:
            m = random_model(rng)
            gbytes = m.SerializeToString()
            filler = rng.choice([0, 1 << 10, 1 << 16, 1 << 20])
            path = os.path.join(d, "g.dcz")
            tensors = [dcformat.encode_raw("filler", np.frombuffer(rng.randbytes(filler), np.uint8))] if filler else []
            dcformat.write(path, tensors, graph=gbytes, checked=False)
            size = os.path.getsize(path)
            t0 = time.perf_counter()
            try:
                with dcformat.open(path) as r:
                    model = r.graph
                assert graph_objects(model) * GRAPH_OBJECT_COST <= expansion_bound(size)
                stats["read"] += 1
            except dcformat.LimitError:
                stats["refused"] += 1
            except dcformat.DczError:
                stats["refused"] += 1
            dt = time.perf_counter() - t0
            worst = max(worst, (dt - 0.2) / max(size / 1e6, 1e-3))
            assert dt <= 0.2 + size / 1e6 * 1.0 + 1.0, (dt, size)  # ~1 s per MB (+ slack for a loaded machine)
            dcformat.write(path, tensors, graph=gbytes)  # checked: padded so that readers accept it
            with dcformat.open(path) as r:
                r.graph
            stats["written_and_read"] += 1
            stats["trials"] += 1
    print({**stats, "worst_seconds_per_MB_beyond_0.2s": round(worst, 3)})


if __name__ == "__main__":
    main()

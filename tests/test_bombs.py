"""Bounded resources: crafted bombs never make dcformat allocate more than the expansion bound
(MAX_EXPANSION x file size + EXPANSION_SLACK, spec/FORMAT.md section 10), and work grows
linearly with the file.

Each measurement runs in a fresh Python process after a warm-up that loads the decode kernels
and parses a graph, so that only the operation itself is counted: tracemalloc sees Python's
and numpy's allocations, the kernel's peak RSS (VmHWM, reset through /proc/self/clear_refs
before the operation) everything else, protobuf's arenas included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat.constants import EXPANSION_SLACK, MAX_EXPANSION

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
import make_attacks as ma  # noqa: E402

MiB = 1 << 20
TO_ONNX_FACTOR = 3  # to_onnx holds the decoded arrays, the bytes it copies and the model's own copy

PROBE = r'''
import ctypes, gc, json, os, sys, time, tracemalloc
import numpy as np
import dcformat

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0

def reset_peak():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def op(kind, path, kw):
    if kind == "noop":
        pass
    elif kind == "open":
        dcformat.open(path, **kw).close()
    elif kind == "decode":
        with dcformat.open(path, **kw) as r:
            for name in r:
                r[name]
    elif kind == "verify":
        with dcformat.open(path, **kw) as r:
            r.verify()
    elif kind == "graph":
        with dcformat.open(path, **kw) as r:
            r.graph
    elif kind == "to_onnx":
        with dcformat.open(path, **kw) as r:
            dcformat.to_onnx(r)
    else:
        raise ValueError(kind)

jobs = json.loads(sys.argv[1])
for path in json.loads(sys.argv[2]):  # warm-up: kernels, onnx, to_onnx
    with dcformat.open(path) as r:
        r.verify()
        r.graph
    dcformat.to_onnx(path)
out = []
for job in jobs:
    res = {"name": job["name"], "op": job["op"]}
    best = None
    for _ in range(job.get("repeat", 1)):  # time: best of a few runs, without tracemalloc
        t0 = time.perf_counter()
        try:
            op(job["op"], job["path"], job.get("kw", {}))
            res["error"] = None
        except dcformat.DczError as e:
            res["error"] = type(e).__name__
            res["message"] = str(e)[:300]
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    res["seconds"] = best
    res["peak_reset"] = reset_peak()
    rss0 = status("VmRSS:")
    tracemalloc.start()
    try:
        op(job["op"], job["path"], job.get("kw", {}))
    except dcformat.DczError:
        pass
    res["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    res["rss_peak"] = status("VmHWM:") - rss0 if res["peak_reset"] else None
    out.append(res)
print(json.dumps(out))
'''


def probe(jobs: list[dict], warm: list[Path]) -> dict[tuple[str, str], dict]:
    for j in jobs:
        j["path"] = str(j["path"])
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(jobs), json.dumps([str(w) for w in warm])],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return {(r["name"], r["op"]): r for r in json.loads(p.stdout.strip().splitlines()[-1])}


def bound(path: Path) -> int:
    return MAX_EXPANSION * path.stat().st_size + EXPANSION_SLACK


def _graph_file(path: Path, graph: bytes, tensors=()) -> Path:
    d = ma.Dcz.of_sections([("graph", graph, None)] + list(tensors))
    path.write_bytes(d.build())
    return path


def _nested_ifs(depth: int) -> bytes:
    """ModelProto.graph -> If node -> then_branch GraphProto -> If node ... ``depth`` deep, hand-encoded
    (onnx.helper itself cannot build it: protobuf refuses to nest messages more than 100 deep)."""
    g = ma._field(1, b"")  # an empty node at the bottom
    for _ in range(depth):
        # AttributeProto: name(1) "then_branch", g(6) the graph, type(20) GRAPH (5) | NodeProto: op_type(4), attribute(5)
        attr = ma._field(1, b"then_branch") + ma._field(6, g) + bytes([0xA0, 0x01, 5])
        g = ma._field(1, ma._field(4, b"If") + ma._field(5, attr))
    return ma._field(7, g)


def _many_nodes(n: int) -> bytes:
    """A graph of ``n`` Identity nodes, each with a name, an input, an output and one INT attribute."""
    node = lambda i: ma._field(1, b"x") + ma._field(2, b"y") + ma._field(3, b"n%d" % i) + ma._field(4, b"Identity") + \
        ma._field(5, ma._field(1, b"a") + bytes([0x18, 1, 0xA0, 0x01, 2]))  # attribute a: i=1, type INT
    return ma._field(7, b"".join(ma._field(1, node(i)) for i in range(n)))


def _references(n: int, record: str, numel: int) -> bytes:
    """A graph whose ``n`` initializers all refer to one record."""
    from onnx import TensorProto, helper

    inits = []
    for i in range(n):
        t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[numel])
        inits.append(ma._external(t, "dcz", record))
    return helper.make_model(helper.make_graph([], "g", [], [], inits)).SerializeToString()


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("warm")
    return list(ma.write_samples(d).values())


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_tensor_bombs_stay_within_the_expansion_bound(tmp_path, warm):
    files = {}
    # a few hundred bytes that decode to just under the bound: allowed, and that is all it may cost
    small = tmp_path / "at_bound.dcz"
    small.write_bytes(ma.bomb_dense([1], 1 << 24).build())
    numel = (bound(small) - 2 * MiB) // 4
    d = ma.bomb_dense([numel], 1 << 24)
    graph = _references(1, "bomb", numel)
    files["at_bound"] = _graph_file(tmp_path / "at_bound.dcz", graph, [("tensor", d.payloads[0], d.entries[0]["tensor"])])
    files["over_bound"] = tmp_path / "over.dcz"
    files["over_bound"].write_bytes(ma.bomb_dense([2**33], 1 << 24).build())
    files["lanes_billions"] = tmp_path / "lanes.dcz"  # 2^25 lanes declared, 4 stored; the limit lifted
    files["lanes_billions"].write_bytes(ma.bomb_dense([2**33], ma.LANE, lanes=4).build())
    files["sparse_billions"] = tmp_path / "entries.dcz"  # 2^33 entries, the streams claim nothing
    files["sparse_billions"].write_bytes(ma.bomb_sparse([2**33], entries=2**33).build())
    lifted = {"max_decoded_bytes": 1 << 40}
    jobs = [{"name": "at_bound", "op": op, "path": files["at_bound"]} for op in ("open", "decode", "verify", "graph", "to_onnx")]
    jobs += [{"name": "over_bound", "op": "open", "path": files["over_bound"]}]
    jobs += [{"name": n, "op": op, "path": files[n], "kw": lifted} for n in ("lanes_billions", "sparse_billions")
             for op in ("decode", "verify")]
    got = probe(jobs, warm)
    for (name, op), r in got.items():
        limit = bound(files[name])
        assert r["seconds"] < 5, r
        if name == "at_bound":
            assert r["error"] is None, r
            allowed = TO_ONNX_FACTOR * limit if op == "to_onnx" else limit
        else:
            assert r["error"] in ("LimitError", "HuffmanError"), r
            allowed = 2 * MiB  # rejected before anything is allocated
        assert r["traced_peak"] <= allowed, f"{name} {op}: traced {r['traced_peak']} > {allowed}"
        if r["rss_peak"] is not None:  # None: this kernel cannot reset the peak; tracemalloc still counts
            assert r["rss_peak"] <= allowed, f"{name} {op}: peak RSS grew by {r['rss_peak']} > {allowed}"
    assert got[("at_bound", "decode")]["traced_peak"] >= 4 * numel  # the measurement sees the output array


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_graph_bombs_stay_within_the_expansion_bound(tmp_path, warm):
    files = {
        "nested_200": _graph_file(tmp_path / "nested.dcz", _nested_ifs(200)),
        "nodes_50k": _graph_file(tmp_path / "n50.dcz", _many_nodes(50_000)),
        "nodes_100k": _graph_file(tmp_path / "n100.dcz", _many_nodes(100_000)),
        "nodes_200k": _graph_file(tmp_path / "n200.dcz", _many_nodes(200_000)),
    }
    one = ma.bomb_dense([MiB // 4], 1 << 24)  # a 1 MiB record, referenced 5,000 times
    files["references_5k"] = _graph_file(tmp_path / "refs.dcz", _references(5000, "bomb", MiB // 4),
                                         [("tensor", one.payloads[0], one.entries[0]["tensor"])])
    jobs = [{"name": n, "op": op, "path": p, "repeat": 3} for n, p in files.items() for op in ("graph", "to_onnx")]
    got = probe(jobs, warm)
    for (name, op), r in got.items():
        limit = bound(files[name])
        if name == "nested_200":
            assert r["error"] == "FormatError" and "graph" in r["message"], r
        elif name == "references_5k":  # 5 GB if every reference got its copy
            assert r["error"] == "LimitError" and "once per reference" in r["message"], r
        else:
            assert r["error"] is None, r
        assert r["traced_peak"] <= limit and (r["rss_peak"] or 0) <= limit, (name, op, r, limit)
        if name in ("nested_200", "references_5k"):
            assert (r["rss_peak"] or 0) < 16 * MiB and r["seconds"] < 2, r
    for op in ("graph", "to_onnx"):  # linear: doubling the graph at most ~triples the time
        t = [got[(f"nodes_{k}k", op)]["seconds"] for k in (50, 100, 200)]
        assert t[1] <= 3 * t[0] + 0.05 and t[2] <= 3 * t[1] + 0.05, (op, t)


def test_many_sections_open_and_verify_in_linear_time(tmp_path):
    """Tiny raw tensors, the most sections per byte: doubling their number at most ~triples the time."""
    def make(n):
        path = tmp_path / f"many{n}.dcz"
        dcformat.write(path, [dcformat.encode_raw(f"t{i}", np.full(2, i, np.int32)) for i in range(n)])
        return path

    def best(path):
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            with dcformat.open(path) as r:
                r.verify()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    paths = [make(n) for n in (2000, 4000)]
    best(paths[0])
    t = [best(p) for p in paths]
    assert t[1] <= 3 * t[0] + 0.05, t

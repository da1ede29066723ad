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
import zlib
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import LimitError
from dcformat.constants import EXPANSION_SLACK, MAX_EXPANSION

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
import make_attacks as ma  # noqa: E402
from workcount import count_calls  # noqa: E402

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
    elif kind == "metadata":
        with dcformat.open(path, **kw) as r:
            r.metadata
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
    res["peak_reset"] = reset_peak()  # the kernel's count first: tracemalloc's own bookkeeping takes memory
    rss0 = status("VmRSS:")
    try:
        op(job["op"], job["path"], job.get("kw", {}))
    except dcformat.DczError:
        pass
    res["rss_peak"] = status("VmHWM:") - rss0 if res["peak_reset"] else None
    reset_peak()
    tracemalloc.start()
    try:
        op(job["op"], job["path"], job.get("kw", {}))
    except dcformat.DczError:
        pass
    res["traced_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if job.get("count_calls"):  # work, counted: Python and C function calls (deterministic, unlike time)
        calls = [0]

        def count(frame, event, arg):
            if event in ("call", "c_call"):
                calls[0] += 1

        sys.setprofile(count)
        try:
            op(job["op"], job["path"], job.get("kw", {}))
        except dcformat.DczError:
            pass
        finally:
            sys.setprofile(None)
        res["calls"] = calls[0]
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


def assemble(path: Path, sections: list[tuple[str, bytes, dict | None]]) -> Path:
    """A file of raw (kind, payload, tensor descriptor) sections, laid out by dcformat's own container
    code: a descriptor may declare anything (a bomb); graph and metadata payloads are stored as given."""
    from dcformat import container
    from dcformat.constants import PREAMBLE_SIZE

    header, placed, _ = container.layout([(k, len(p), zlib.crc32(p), d) for k, p, d in sections])
    out = bytearray(container.file_size(header, placed))
    out[:PREAMBLE_SIZE] = container.preamble(header)
    out[PREAMBLE_SIZE : PREAMBLE_SIZE + len(header)] = header
    for sec, (_, payload, _) in zip(placed, sections):
        out[sec.offset : sec.offset + len(payload)] = payload
    path.write_bytes(out)
    return path


def bomb(path: Path, d: "ma.Dcz") -> Path:
    """The one tensor section of a make_attacks bomb, as a file."""
    return assemble(path, [("tensor", d.payloads[0], d.entries[0]["tensor"])])


def _graph_file(path: Path, graph: bytes, tensors=()) -> Path:
    """A file with this graph section (bytes of a ModelProto) and these EncodedTensors, by dcformat.write
    (without the padding that would make a bomb a valid file, spec 5.4)."""
    dcformat.write(path, list(tensors), graph=graph, checked=False)
    return path


def _single_value(name: str, numel: int):
    """A codebook-dense tensor of ``numel`` x 1.5: one symbol, no payload bits, one lane."""
    return dcformat.encode_codebook(name, np.array([1.5], np.float32), np.zeros(numel, np.uint8),
                                    encoding="codebook-dense", lane_size=1 << 24)


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
    """A graph of ``n`` Identity nodes, each with a name, an input, an output and one INT attribute.
    Names are random hex, as compressible as real names roughly (a graph of identical nodes inflates
    so far that parsing it is refused: test_compressed_sections_cannot_parse_into_gigabytes)."""
    names = np.random.default_rng(n).bytes(8 * 3 * n).hex().encode()
    name = lambda i, k: names[16 * (3 * i + k) : 16 * (3 * i + k + 1)]
    node = lambda i: ma._field(1, name(i, 0)) + ma._field(2, name(i, 1)) + ma._field(3, name(i, 2)) + \
        ma._field(4, b"Identity") + ma._field(5, ma._field(1, b"a") + bytes([0x18, 1, 0xA0, 0x01, 2]))  # a: i=1, INT
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
    numel = 1 << 20
    for _ in range(3):  # the bound depends on the file's size, which barely depends on numel
        at = _graph_file(tmp_path / "at_bound.dcz", _references(1, "bomb", numel), [_single_value("bomb", numel)])
        numel = (bound(at) - 2 * MiB) // 4
    files["at_bound"] = _graph_file(tmp_path / "at_bound.dcz", _references(1, "bomb", numel), [_single_value("bomb", numel)])
    assert 4 * numel <= bound(files["at_bound"]) and files["at_bound"].stat().st_size < 4096
    files["over_bound"] = bomb(tmp_path / "over.dcz", ma.bomb_dense([2**33], 1 << 24))
    # 2^25 lanes declared, 4 stored; the limit lifted
    files["lanes_billions"] = bomb(tmp_path / "lanes.dcz", ma.bomb_dense([2**33], ma.LANE, lanes=4))
    # 2^33 entries, the streams claim nothing
    files["sparse_billions"] = bomb(tmp_path / "entries.dcz", ma.bomb_sparse([2**33], entries=2**33))
    lifted = {"max_decoded_bytes": 1 << 40}
    jobs = [{"name": "at_bound", "op": op, "path": files["at_bound"]} for op in ("open", "decode", "verify", "graph", "to_onnx")]
    jobs += [{"name": "over_bound", "op": "open", "path": files["over_bound"]}]
    jobs += [{"name": n, "op": op, "path": files[n], "kw": lifted} for n in ("lanes_billions", "sparse_billions")
             for op in ("decode", "verify")]
    got = probe(jobs, warm)
    _show(got, files)
    for (name, op), r in got.items():
        limit = bound(files[name])
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
        "nodes_10k": _graph_file(tmp_path / "n10.dcz", _many_nodes(10_000)),
        "nodes_20k": _graph_file(tmp_path / "n20.dcz", _many_nodes(20_000)),
        "nodes_40k": _graph_file(tmp_path / "n40.dcz", _many_nodes(40_000)),
    }
    # a 1 MiB record, referenced 5,000 times
    files["references_5k"] = _graph_file(tmp_path / "refs.dcz", _references(5000, "bomb", MiB // 4),
                                         [_single_value("bomb", MiB // 4)])
    jobs = [{"name": n, "op": op, "path": p, "count_calls": n.startswith("nodes_")} for n, p in files.items()
            for op in ("graph", "to_onnx")]
    got = probe(jobs, warm)
    _show(got, files)
    for (name, op), r in got.items():
        limit = bound(files[name])
        if name == "nested_200":
            assert r["error"] == "FormatError" and "graph" in r["message"], r
        elif name == "references_5k":  # 5 GB if every reference got its copy (compressed: refused to parse)
            assert r["error"] == "LimitError" and ("once per reference" in r["message"] or "parsing it" in r["message"]), r
        else:
            assert r["error"] is None, r
        assert r["traced_peak"] <= limit and (r["rss_peak"] or 0) <= limit, (name, op, r, limit)
        if name in ("nested_200", "references_5k"):
            assert (r["rss_peak"] or 0) < 16 * MiB, r
    # Linear in the graph's size, by counting work rather than timing it (a loaded machine makes
    # wall-clock ratios flaky): doubling the nodes at most ~doubles the graph bytes parsed and the
    # function calls made; the memory traced stays within the bound (above) and grows ~linearly
    # (buffers grow by doubling, hence 3x).
    sizes = {k: files[f"nodes_{k}k"].stat().st_size for k in (10, 20, 40)}
    assert 1.8 < sizes[20] / sizes[10] < 2.2 and 1.8 < sizes[40] / sizes[20] < 2.2, sizes
    for op in ("graph", "to_onnx"):
        calls = [got[(f"nodes_{k}k", op)]["calls"] for k in (10, 20, 40)]
        traced = [got[(f"nodes_{k}k", op)]["traced_peak"] for k in (10, 20, 40)]
        assert calls[1] <= 2.2 * calls[0] + 1000 and calls[2] <= 2.2 * calls[1] + 1000, (op, calls)
        assert traced[1] <= 3 * traced[0] + MiB and traced[2] <= 3 * traced[1] + MiB, (op, traced)
        print(f"{op}: calls {calls}, traced {traced}")


def _compressed_bombs(tmp_path, warm, which):
    """Small files whose header, metadata or graph hold millions of empty containers: a few KB when
    stored compressed, megabytes to parse. Such a bomb is refused (LimitError) as it inflates; a file
    whose text is just under its limit, (expansion bound) / parse factor, opens and parses, and in
    both cases what it costs stays within the bound."""
    from dcformat.constants import GRAPH_OBJECT_COST, JSON_PARSE_FACTOR

    def make(kind, n):  # n empty containers: "[]," of JSON, or empty NodeProtos (2 bytes) of a graph
        path = tmp_path / f"{kind}{n}.dcz"
        if kind == "graph":  # ModelProto.graph: n empty NodeProtos
            return _graph_file(path, ma._field(7, ma._field(1, b"") * n))
        junk = [[] for _ in range(n)]
        if kind == "metadata":
            dcformat.write(path, [], metadata={"x": junk}, checked=False)
            return path
        one = ma.bomb_dense([1], 1 << 24)  # header: unknown keys of a descriptor are ignored, but parsed
        return assemble(path, [("tensor", one.payloads[0], dict(one.entries[0]["tensor"], x=junk))])

    # a graph of empty nodes meets the object count (1 per node) long before the parse limit (2 bytes per node)
    factor, per_item = {"graph": (GRAPH_OBJECT_COST, 1), "metadata": (JSON_PARSE_FACTOR, 3), "header": (JSON_PARSE_FACTOR, 3)}, {}
    files = {}
    for kind in which:
        f, size = factor[kind]
        files[f"{kind} bomb"] = make(kind, 2_000_000)  # 4-6 MB of text
        n = 1000
        for _ in range(3):  # just under the limit: the limit depends on the file size, which barely depends on n
            n = (bound(make(kind, n)) // f - 1000) // size
        files[f"{kind} at limit"] = make(kind, n)
        assert files[f"{kind} bomb"].stat().st_size < 64 << 10
    ops = {"graph": ("graph", "to_onnx"), "metadata": ("metadata",), "header": ("open",)}
    got = probe([{"name": k, "op": op, "path": p} for k, p in files.items() for op in ops[k.split()[0]]], warm)
    _show(got, files)
    for (name, op), r in got.items():
        limit = bound(files[name])
        assert r["error"] == ("LimitError" if name.endswith("bomb") else None), r
        assert r["traced_peak"] <= limit and (r["rss_peak"] or 0) <= limit, (name, op, r, limit)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_compressed_sections_cannot_parse_into_gigabytes(tmp_path, warm):
    """Metadata and graph may be stored compressed (DEFLATE inflates up to ~1000:1), and parsing takes
    up to ~27 (JSON) or ~100 (protobuf) bytes of memory per byte parsed: what is parsed is held to the
    expansion bound (dcformat.reader.JSON_PARSE_FACTOR, GRAPH_PARSE_FACTOR), whatever the file stores.
    (Stored as they are, the same sections make large files, which are accepted.)"""
    _compressed_bombs(tmp_path, warm, ("graph", "metadata"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_compressed_header_within_the_expansion_bound(tmp_path, warm):
    """A compressed header may inflate to at most (expansion bound) / JSON_PARSE_FACTOR bytes of JSON
    (spec section 10), not MAX_HEADER_BYTES whatever the file's size: opening a 6 KB file whose header
    holds 1.5 MB of empty lists used to take ~340 MiB."""
    _compressed_bombs(tmp_path, warm, ("header",))


def _show(got, files):
    """The measurements, for ``pytest -s``."""
    for (name, op), r in got.items():
        print(f"{name:18} {op:9} {files[name].stat().st_size:>9} B file, bound {bound(files[name]) / MiB:7.1f} MiB: "
              f"{r['error'] or 'ok':13} {r['seconds']:.3f} s, traced {r['traced_peak'] / MiB:6.1f} MiB, "
              f"RSS {(r['rss_peak'] or 0) / MiB:6.1f} MiB")


def test_many_sections_open_and_verify_in_linear_time(tmp_path):
    """Tiny raw tensors, the most sections per byte: doubling their number about doubles the work (calls made)."""
    def make(n):
        path = tmp_path / f"many{n}.dcz"
        dcformat.write(path, [dcformat.encode_raw(f"t{i}", np.full(2, i, np.int32)) for i in range(n)])
        return path

    def once(path):
        with dcformat.open(path) as r:
            r.verify()

    paths = [make(n) for n in (2000, 4000)]
    once(paths[0])  # warm: kernels compiled, modules imported
    work = [count_calls(once, p)[0] for p in paths]
    assert work[1] <= 2.2 * work[0], work  # linear: twice the sections, about twice the calls


def test_graph_object_count_is_bounded(tmp_path):
    """A graph within its parse limit but holding more objects (empty nodes, empty attributes, empty
    training graphs) than (expansion bound) / GRAPH_OBJECT_COST is a LimitError when read: ONNX Runtime
    builds ~1 kB per empty node, and the checks walk every object. Counting stops at the limit."""
    from dcformat.constants import GRAPH_OBJECT_COST, GRAPH_PARSE_FACTOR
    from dcformat.graph import graph_objects

    empty_attr = ma._field(5, b"")  # NodeProto.attribute: an empty AttributeProto
    cases = {
        "nodes": ma._field(7, ma._field(1, b"") * 50_000),  # ModelProto.graph: 50k empty NodeProtos
        "attributes": ma._field(7, ma._field(1, empty_attr * 30_000)),  # one node, 30k empty attributes
        "training": ma._field(20, ma._field(1, b"")) * 20_000,  # ModelProto.training_info: empty ones
    }
    for name, graph in cases.items():
        path = _graph_file(tmp_path / f"{name}.dcz", graph)
        b = bound(path)
        assert len(graph) <= b // GRAPH_PARSE_FACTOR, name  # within the parse limit: the count refuses it
        with dcformat.open(path) as r, pytest.raises(LimitError, match="GRAPH_OBJECT_COST"):
            r.graph
        import onnx

        m = onnx.ModelProto.FromString(graph)
        assert graph_objects(m) > b // GRAPH_OBJECT_COST
        assert graph_objects(m, limit=10) <= 10 + 50_001  # early exit: at most one list past the limit
    # the same with the caller's larger bound opens
    path = tmp_path / "nodes.dcz"
    with dcformat.open(path, max_decoded_bytes=1 << 40) as r:
        assert len(r.graph.graph.node) == 50_000


def test_section_count_is_bounded(tmp_path):
    """2^16 empty tensor entries deflate to a few kB of header; each costs a check at open: more than
    (expansion bound) / SECTION_COST sections is a LimitError before any entry is checked. The writer
    pads a file with many sections so that it stays readable."""
    from dcformat.constants import SECTION_COST

    empty = dcformat.encode_raw("t", np.zeros(0, np.int8)).info.descriptor()
    n = 1 << 16
    sections = [("tensor", b"", dict(empty, name=f"t{i}")) for i in range(n)]
    # 400 kB of an unknown section kind: enough file for the header's JSON (parse limit), not for the count
    sections.append(("x-future", np.random.default_rng(0).bytes(400_000), None))
    path = assemble(tmp_path / "many.dcz", sections)
    assert path.stat().st_size * 1024 < n * SECTION_COST
    with pytest.raises(LimitError, match="SECTION_COST"):
        dcformat.open(path)
    # the writer pays for its sections with padding: 2^12 tiny tensors open with the default bound
    path = tmp_path / "written.dcz"
    dcformat.write(path, [dcformat.encode_raw(f"t{i}", np.zeros(1, np.int8)) for i in range(1 << 12)])
    with dcformat.open(path) as r:
        assert len(r) == 1 << 12 and any(s.kind == "padding" for s in r.sections)

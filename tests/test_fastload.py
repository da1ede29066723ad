"""Load-path shortcuts (issue 19 / 18): each gives what the long way gives.

- graph.objects_bound: an upper bound on graph_objects from the byte count, so the reader
  skips the walk when the bound is within the limit;
- prepare(hoist=True): a large Constant inside a subgraph becomes a main-graph external
  initializer, and ONNX Runtime computes the same outputs;
- an unused large initializer is not handed over as external data (ONNX Runtime drops it and
  then refused the session).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from dcformat import runtime
from dcformat.graph import graph_objects, hoistable, objects_bound, strip_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ objects_bound
def _bound_holds(model) -> tuple[int, int]:
    data = model.SerializeToString()
    m = onnx.ModelProto()
    m.ParseFromString(data)
    return graph_objects(m), objects_bound(m, len(data))


def test_objects_bound_is_tight_on_the_cheapest_objects():
    """Empty nodes with empty-string inputs and outputs, empty attributes and value infos: 2 bytes an
    object, the bound's own rate, and it still holds; training_info's absent graphs are counted."""
    nodes = [helper.make_node("", [""] * 3, [""] * 2) for _ in range(50)]
    for n in nodes[:10]:
        n.attribute.add()
    g = helper.make_graph(nodes, "", [], [])
    g.value_info.extend([onnx.ValueInfoProto() for _ in range(7)])
    m = helper.make_model(g)
    n, b = _bound_holds(m)
    assert n <= b
    m.training_info.extend([onnx.TrainingInfoProto() for _ in range(40)])  # 2 bytes, 3 objects each
    n, b = _bound_holds(m)
    assert n <= b and n > len(m.SerializeToString()) // 2  # the plain 2-byte rate would not hold here


def test_objects_bound_holds_on_nested_graphs_and_functions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        def graph(depth):
            nodes = []
            for _ in range(int(rng.integers(0, 6))):
                n = helper.make_node("Op", [""] * int(rng.integers(0, 3)), ["o"] * int(rng.integers(0, 3)))
                if depth and rng.random() < 0.4:
                    a = n.attribute.add()
                    a.g.CopyFrom(graph(depth - 1))
                if rng.random() < 0.3:
                    a = n.attribute.add()
                    a.t.CopyFrom(onnx.TensorProto())
                    a.sparse_tensor.CopyFrom(onnx.SparseTensorProto())
                if depth and rng.random() < 0.3:
                    a = n.attribute.add()
                    a.graphs.extend([graph(depth - 1) for _ in range(2)])
                nodes.append(n)
            return helper.make_graph(nodes, "", [], [])
        m = helper.make_model(graph(3))
        f = m.functions.add()
        f.node.extend(graph(1).node)
        f.input.extend([""] * int(rng.integers(0, 4)))
        n, b = _bound_holds(m)
        assert n <= b


def _random_nested(rng, depth):
    nodes = []
    for _ in range(int(rng.integers(0, 6))):
        n = helper.make_node("Op", [""] * int(rng.integers(0, 3)), ["o"] * int(rng.integers(0, 3)))
        if depth and rng.random() < 0.4:
            a = n.attribute.add()
            a.g.CopyFrom(_random_nested(rng, depth - 1))
        if rng.random() < 0.3:
            a = n.attribute.add()
            a.t.CopyFrom(onnx.TensorProto())
            if rng.random() < 0.5:
                a.sparse_tensor.CopyFrom(onnx.SparseTensorProto())
        if rng.random() < 0.2:
            a = n.attribute.add()
            a.tensors.extend([onnx.TensorProto() for _ in range(int(rng.integers(1, 4)))])
            a.sparse_tensors.extend([onnx.SparseTensorProto() for _ in range(int(rng.integers(0, 3)))])
        if depth and rng.random() < 0.3:
            a = n.attribute.add()
            a.graphs.extend([_random_nested(rng, depth - 1) for _ in range(2)])
        if rng.random() < 0.3:
            n.attribute.append(helper.make_attribute("axis", 1))
        nodes.append(n)
    g = helper.make_graph(nodes, "", [], [])
    g.value_info.extend([onnx.ValueInfoProto() for _ in range(int(rng.integers(0, 3)))])
    g.initializer.extend([numpy_helper.from_array(np.zeros(2, np.float32), f"i{k}") for k in range(int(rng.integers(0, 3)))])
    return g


def test_the_reference_walk_counts_what_graph_objects_counts():
    """A small file with a large graph is held to its object limit by the walk that checks its references
    (no second walk): that walk counts exactly what graph_objects counts, and stops past the limit."""
    from dcformat.graph import scan_references

    rng = np.random.default_rng(1)
    models = [helper.make_model(_random_nested(rng, 3)) for _ in range(30)]
    for path in glob.glob(os.path.join(ROOT, "spec", "vectors", "*.dcz")):
        with dcformat.open(path) as r:
            if r.graph_bytes is not None:
                models.append(r.graph)
    for m in models:
        n = graph_objects(m)
        assert scan_references(m, limit=n) is not None
        assert scan_references(m, limit=n - 1) is None
        assert [r[1] for r in scan_references(m, limit=n)] == [r[1] for r in scan_references(m)]
    m = models[0]
    m.functions.add().input.extend(["a"] * 5)  # a function's objects: counted by graph_objects itself
    n = graph_objects(m)
    assert scan_references(m, limit=n) is not None and scan_references(m, limit=n - 1) is None


def test_a_small_file_with_too_many_graph_objects_is_refused(tmp_path):
    """The reader's object limit, now checked during the reference walk, still refuses (LimitError)."""
    from dcformat.constants import GRAPH_OBJECT_COST

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    nodes = [helper.make_node("Identity", ["x"], ["x"]) for _ in range(2000)]
    g = helper.make_graph(nodes, "g", [x], [x])
    path = _write(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    with dcformat.open(path) as r:
        n = graph_objects(r.graph)
    most = n - 1
    with dcformat.open(path, max_decoded_bytes=most * GRAPH_OBJECT_COST) as r, \
            pytest.raises(dcformat.LimitError, match=f"more than {most} objects"):
        r.graph
    with dcformat.open(path, max_decoded_bytes=n * GRAPH_OBJECT_COST) as r:
        assert len(r.graph.graph.node) == 2000


def test_objects_bound_on_the_vectors():
    files = glob.glob(os.path.join(ROOT, "spec", "vectors", "*.dcz"))
    seen = 0
    for path in files:
        with dcformat.open(path) as r:
            data = r.graph_bytes
        if data is None:
            continue
        m = onnx.ModelProto()
        m.ParseFromString(data)
        assert graph_objects(m) <= objects_bound(m, len(data))
        seen += 1
    assert seen


# ------------------------------------------------------------------------------ hoisting
def _if_model(w_then: np.ndarray, w_else: np.ndarray, then_name="w_then", else_name="w_else"):
    """y = x @ (cond ? W_then : W_else), each W a Constant node inside its branch, read by a MatMul there
    (x comes from the outer scope)."""
    def branch(name, w, out):
        return helper.make_graph(
            [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(w)),
             helper.make_node("MatMul", ["x", name], [out])],
            out, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", w.shape[1]])])
    g = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch(then_name, w_then, "yt"),
                          else_branch=branch(else_name, w_else, "ye"))],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w_then.shape[0]]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w_then.shape[1]])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _branches(m):
    a = {x.name: x.g for x in m.graph.node[0].attribute}
    return a["then_branch"], a["else_branch"]


def _write(tmp_path, model, name="m.dcz"):
    graph, arrays = strip_weights(model)
    path = tmp_path / name
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()], graph=graph)
    return path


def _same_outputs(path, feeds_list):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(runtime.to_onnx(path).SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess = dcformat.InferenceSession(path)
    for feeds in feeds_list:
        for a, b in zip(ref.run(None, feeds), sess.run(None, feeds)):
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_subgraph_constants_become_external_initializers_with_the_same_outputs(tmp_path):
    rng = np.random.default_rng(1)
    wt, we = (rng.standard_normal((64, 48)).astype(np.float32) for _ in range(2))
    path = _write(tmp_path, _if_model(wt, we))
    p = runtime.prepare(path, hoist=True)
    assert sorted(p.external) == ["w_else", "w_then"]
    assert np.array_equal(p.external["w_then"], wt) and np.array_equal(p.external["w_else"], we)
    for a in p.model.graph.node[0].attribute:  # the branches hold no Constant node any more
        assert [n.op_type for n in a.g.node] == ["MatMul"]
    assert runtime.prepare(path).external == {}  # without hoist (save_onnx, to_onnx): as before
    x = rng.standard_normal((3, 64)).astype(np.float32)
    _same_outputs(path, [{"x": x, "cond": np.array(c)} for c in (True, False)])


def test_a_name_defined_twice_is_not_hoisted(tmp_path):
    """Both branches name their Constant 'w': in the main graph one name could not mean both."""
    rng = np.random.default_rng(2)
    wt, we = (rng.standard_normal((64, 48)).astype(np.float32) for _ in range(2))
    model = _if_model(wt, we, "w", "w")
    graph, arrays = strip_weights(model)
    path = tmp_path / "m.dcz"
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()], graph=graph)
    p = runtime.prepare(path, hoist=True)
    assert p.external == {}
    x = rng.standard_normal((2, 64)).astype(np.float32)
    _same_outputs(path, [{"x": x, "cond": np.array(c)} for c in (True, False)])


def _hoistable(m, wanted):
    """hoistable(m, wanted), checked against hoistable_in on the scopes the reference walk notes (prepare's way)."""
    from dcformat.graph import Holders, hoistable_in, scan_references

    holders = Holders()
    scan_references(m, holders, set())
    got = hoistable(m, wanted)
    assert hoistable_in(m, wanted, holders.scopes) == got
    return got


def test_hoistable_refuses_outside_uses_outputs_and_unused():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    m = _if_model(w, w)
    then_g, else_g = _branches(m)
    assert _hoistable(m, {"w_then": then_g, "w_else": else_g}) == {"w_then", "w_else"}
    assert _hoistable(m, {"w_then": else_g}) == set()  # used in then_g, which is not inside else_g
    else_g.node[1].input[1] = "w_then"  # else reads then's name from outside then: not hoisted
    assert _hoistable(m, {"w_then": then_g}) == set()
    m = _if_model(w, w)
    then_g, _ = _branches(m)
    then_g.output[0].name = "w_then"  # a graph output
    assert _hoistable(m, {"w_then": then_g}) == set()
    m = _if_model(w, w)
    then_g, _ = _branches(m)
    then_g.node[1].input[1] = "x"  # nothing reads it
    assert _hoistable(m, {"w_then": then_g}) == set()
    m = _if_model(w, w)
    then_g, _ = _branches(m)
    m.graph.input.append(helper.make_tensor_value_info("w_then", TensorProto.FLOAT, [8, 4]))
    assert _hoistable(m, {"w_then": then_g}) == set()


def test_hoistable_in_nested_subgraphs():
    """A Constant of an outer branch read only by a branch nested in it may move; one read by the outer branch
    from a nested branch's Constant, or made again by a nested node, may not (hoistable_in agrees)."""
    w = np.ones((8, 4), np.float32)

    def leaf(reads, out, const=None):
        nodes = [helper.make_node("Constant", [], [const], value=numpy_helper.from_array(w))] if const else []
        nodes.append(helper.make_node("MatMul", ["x", reads], [out]))
        return helper.make_graph(nodes, out, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 4])])

    def model(inner_then, inner_else, outer_reads="yi"):
        inner = helper.make_node("If", ["cond"], ["yi"], then_branch=inner_then, else_branch=inner_else)
        outer_then = helper.make_graph(
            [helper.make_node("Constant", [], ["w_outer"], value=numpy_helper.from_array(w)), inner,
             helper.make_node("Identity", [outer_reads], ["yt"])],
            "then", [], [helper.make_tensor_value_info("yt", TensorProto.FLOAT, ["N", 4])])
        g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=outer_then,
                                                else_branch=leaf("w_main", "ye"))], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w_main")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        outer = next(a.g for a in m.graph.node[0].attribute if a.name == "then_branch")
        nested = {a.name: a.g for a in outer.node[1].attribute}
        return m, outer, nested

    m, outer, nested = model(leaf("w_outer", "a"), leaf("w_inner", "b", const="w_inner"))
    assert _hoistable(m, {"w_outer": outer, "w_inner": nested["else_branch"]}) == {"w_outer", "w_inner"}
    assert _hoistable(m, {"w_outer": nested["else_branch"]}) == set()  # read where that graph is not inside
    m, outer, nested = model(leaf("w_outer", "a"), leaf("w_inner", "b", const="w_inner"), outer_reads="w_inner")
    assert _hoistable(m, {"w_inner": nested["else_branch"]}) == set()  # the outer branch reads it
    m, outer, nested = model(leaf("w_outer", "a", const="w_outer"), leaf("w_outer", "b"))
    assert _hoistable(m, {"w_outer": outer}) == set()  # made twice


def test_hoisted_silero_like_nesting_in_compact_mode(tmp_path):
    """Compact mode rebuilds the main graph's node list: the hoisted Constant nodes are gone all the same."""
    rng = np.random.default_rng(4)
    wt, we = (rng.standard_normal((64, 48)).astype(np.float32) for _ in range(2))
    model = _if_model(wt, we)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(w, "W"))
    model.graph.node.insert(0, helper.make_node("MatMul", ["x0", "W"], ["x"]))
    model.graph.input[0].name = "x0"
    graph, arrays = strip_weights(model)
    from converters.quantize import quantize

    cb, idx = quantize(arrays["W"], 4)
    path = tmp_path / "m.dcz"
    dcformat.write(path, [dcformat.encode_codebook("W", cb.astype(np.float32), idx)]
                   + [dcformat.encode(k, v) for k, v in arrays.items() if k != "W"], graph=graph)
    p = runtime.prepare(path, compact=True, hoist=True)
    assert p.compacted == ["W"] and {"w_then", "w_else"} <= set(p.external)
    sess = dcformat.InferenceSession(path, compact=True)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    full = dcformat.InferenceSession(path)
    for c in (True, False):
        a = sess.run(None, {"x0": x, "cond": np.array(c)})[0]
        b = full.run(None, {"x0": x, "cond": np.array(c)})[0]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_an_unused_large_initializer_loads(tmp_path):
    """ONNX Runtime drops an initializer nothing reads; handed over as external data it refused the model."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    big = numpy_helper.from_array(np.ones((64, 64), np.float32), "unused")
    const = helper.make_node("Constant", [], ["unused_c"], value=numpy_helper.from_array(np.ones((40, 40), np.float32)))
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"]), const], "g", [x], [y], [big])
    path = _write(tmp_path, helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    sess = dcformat.InferenceSession(path)
    assert np.array_equal(sess.run(None, {"x": np.arange(2, dtype=np.float32)})[0], np.arange(2, dtype=np.float32))
    assert runtime.prepare(path).external == {}  # both stay in the graph, as ONNX Runtime reads any initializer


# ------------------------------------------------------------------------------ open: records and padding
def _vector_files():
    return sorted(glob.glob(os.path.join(ROOT, "spec", "vectors", "*.dcz")))


def test_records_built_without_the_dataclass_init_equal_the_dataclass():
    """parse_descriptor builds TensorInfo without its __init__: the same value and fields."""
    import dataclasses

    from dcformat.records import TensorInfo

    n = 0
    for path in _vector_files():
        with dcformat.open(path) as r:
            for info in r.tensors.values():
                again = TensorInfo(**{f.name: getattr(info, f.name) for f in dataclasses.fields(TensorInfo)})
                assert again == info and again.extra == info.extra == {}
                assert {f.name: getattr(again, f.name) for f in dataclasses.fields(TensorInfo)} == \
                    {f.name: getattr(info, f.name) for f in dataclasses.fields(TensorInfo)}
                assert (again.numel, again.decoded_nbytes) == (info.numel, info.decoded_nbytes)
                n += 1
    assert n > 10


def _padding_gaps(path):
    """(start, stop, section index) of every padding gap between sections of a valid file."""
    from dcformat.constants import PREAMBLE_SIZE

    with dcformat.open(path) as r:
        hlen = int.from_bytes(open(path, "rb").read()[12:16], "little")
        end, out = PREAMBLE_SIZE + hlen, []
        for i, s in enumerate(r.sections):
            if s.offset > end:
                out.append((end, s.offset, i))
            end = s.offset + s.length
    return out


@pytest.mark.parametrize("window, join", [(None, None), (16, None), (None, 0)])
def test_non_zero_padding_is_found_in_every_gap(tmp_path, monkeypatch, window, join):
    """Padding is checked in windows: a non-zero byte anywhere in any gap is named as the per-gap check
    named it (the section after it, the gap's bytes), also with windows of a few gaps each, or one a gap."""
    from dcformat import reader as reader_mod

    if window:
        monkeypatch.setattr(reader_mod, "GAP_WINDOW", window)
    if join is not None:
        monkeypatch.setattr(reader_mod, "GAP_JOIN", join)
    path = max(_vector_files(), key=lambda p: len(_padding_gaps(p)))
    gaps = _padding_gaps(path)
    assert len(gaps) >= 3
    data = bytearray(open(path, "rb").read())
    for start, stop, sec in gaps[:: max(1, len(gaps) // 8)] + gaps[-1:]:
        for pos in (start, stop - 1):
            bad = bytearray(data)
            bad[pos] = 0x5A
            p = tmp_path / "bad.dcz"
            p.write_bytes(bytes(bad))
            with pytest.raises(dcformat.FormatError, match=rf"^section {sec}: non-zero padding in bytes {start}\.\.{stop - 1}$"):
                dcformat.open(p)


def test_opening_does_not_read_the_large_sections_to_check_the_padding(tmp_path, monkeypatch):
    """The padding after a large section is read alone: opening a file reads its header and the bytes
    around the gaps, not the tensors between them (it read the whole file, in 1 MiB windows)."""
    from dcformat.reader import DczReader

    rng = np.random.default_rng(0)
    tensors = [dcformat.encode(f"b{i}", rng.standard_normal(3).astype(np.float32)) for i in range(3)]
    w = rng.standard_normal(200_001).astype(np.float32)
    tensors.insert(1, dcformat.encode("big", w))
    path = tmp_path / "m.dcz"
    dcformat.write(path, tensors)
    read = []
    orig = DczReader._read_bytes

    def counting(self, offset, length):
        read.append(length)
        return orig(self, offset, length)

    monkeypatch.setattr(DczReader, "_read_bytes", counting)
    with dcformat.open(path) as r:
        big = r.info("big").nbytes
        assert any(r.sections[i].offset > r.sections[i - 1].offset + r.sections[i - 1].length
                   for i in range(1, len(r.sections)))  # there are gaps to check
        assert sum(read) < big // 10
        assert np.array_equal(r["big"], w) and r["b2"].shape == (3,)

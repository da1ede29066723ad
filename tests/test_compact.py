"""Fewer fixed bytes (issue 16): dcconvert's compacted graph, float16 codebooks, 1.4's and 1.5's preset dictionaries."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import dcformat
from converters import cli
from converters import compress as cmp
from converters import settings as st
from converters.compress import codebook_dtype, compact_graph
from models import cnn_model


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = {"conv1.weight": rng.standard_normal((4, 3, 3, 3)), "conv1.bias": rng.standard_normal(4),
         "conv2.weight": rng.standard_normal((6, 4, 3, 3)), "conv2.bias": rng.standard_normal(6),
         "fc.weight": rng.standard_normal((10, 6 * 8 * 8)) * 0.05, "fc.bias": rng.standard_normal(10)}
    return {k: (v * 0.3).astype(np.float32) for k, v in w.items()}


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_compact_graph_computes_the_same_in_fewer_bytes():
    m = cnn_model(_weights())
    for i, n in enumerate(m.graph.node):
        n.name, n.doc_string = f"/layers/{n.op_type}_{i}", "traced from model.py:12"
    c = compact_graph(m)
    onnx.checker.check_model(c)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(m, x), _run(c, x))
    assert [v.name for v in c.graph.input] == ["x"] and [v.name for v in c.graph.output] == ["logits"]
    assert [t.name for t in c.graph.initializer] == [t.name for t in m.graph.initializer]
    assert all(not n.name and not n.doc_string for n in c.graph.node)
    assert c.ByteSize() < m.ByteSize()
    assert m.graph.node[0].output[0] == "c1"  # the model given is not changed


def test_compact_graph_keeps_names_that_collide_and_leaves_subgraphs_alone():
    from models import constants_and_if_model

    w = np.ones((4, 3), np.float32)
    m = constants_and_if_model(w, np.ones((3, 2), np.float32), np.zeros((3, 2), np.float32))
    assert compact_graph(m) is m  # an If body may name outer values
    assert compact_graph(None) is None
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["a"], ["v"]), onnx.helper.make_node("Relu", ["v"], ["y"])],
                               "g", [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    c = compact_graph(onnx.helper.make_model(g))
    assert [list(n.input) + list(n.output) for n in c.graph.node] == [["a", "b"], ["b", "y"]]  # "a" is the input's
    assert [cmp.short_name(k) for k in (0, 25, 26, 51, 52, 53, 52 * 52)] == ["a", "z", "A", "Z", "ba", "bb", "baa"]
    assert len({cmp.short_name(k) for k in range(6000)}) == 6000


@pytest.mark.parametrize("cb, dtype, want", [
    ([0.0, 0.5, -0.125, 3.0], "float32", "float16"),
    ([0.0, 1e-6, 0.5], "float32", "float32"),  # below float16's normal range
    ([0.0, 7e4], "float32", "float32"),  # above its largest value
    ([0.5, 0.25], "float64", "float32"),
    ([0.5, 0.25], "bfloat16", "float32"),
    ([0.5, 0.25], "float16", "float16"),
])
def test_codebook_dtype(cb, dtype, want):
    assert codebook_dtype(np.array(cb), dtype) == want


def test_float16_codebooks_decode_to_the_reconstruction(tmp_path):
    """The centroids are rounded to float16 before the reconstruction the fidelity check runs: the file decodes
    to exactly that, with half the codebook bytes."""
    w = np.random.default_rng(3).laplace(0, 0.05, (64, 80)).astype(np.float32)
    w[np.abs(w) < 0.05] = 0
    s = cmp.Settings(sparsity=st.LayerSetting.parse("--sparsity", "0", st.fraction),
                     bits=st.LayerSetting.parse("--bits", "5", st.bits), min_size=0)
    enc, row, recon = cmp.compress_tensor("fc.weight", w, "fc", 0, s, keep_recon=True)
    assert enc.info.codebook_dtype == "float16" and enc.info.codebook_size <= 33  # 32 centroids and zero
    dcformat.write(tmp_path / "w.dcz", [enc])
    with dcformat.open(tmp_path / "w.dcz") as r:
        assert np.array_equal(r["fc.weight"], recon)
    assert np.abs(recon - w).max() < 0.05


def test_dcconvert_writes_a_compact_1_5_file(tmp_path):
    m = cnn_model(_weights())
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    out = tmp_path / "m.dcz"
    s = cmp.Settings(sparsity=st.LayerSetting.parse("--sparsity", "0.5", st.fraction),
                     bits=st.LayerSetting.parse("--bits", "4", st.bits), compensate=False)
    cli.convert(src, out, s, manual=True)
    with dcformat.open(out) as r:
        assert r.version == (1, 5)
        g = onnx.ModelProto()
        g.ParseFromString(r.graph_bytes)
        assert all(not n.name for n in g.graph.node) and "producer" in r.metadata
        stored = {s.kind: s.length for s in r.sections if s.kind in ("metadata", "graph")}
        texts = {"metadata": dcformat.container.dump_json(dict(sorted(r.metadata.items()))), "graph": bytes(r.graph_bytes)}
    # 1.5's dictionary (written for dcconvert's current forms) beats 1.4's on both streams of this CNN
    from dcformat.constants import DEFLATE_DICT, DEFLATE_DICT_15
    for kind, text in texts.items():
        assert stored[kind] == len(dcformat.container.deflate(text, DEFLATE_DICT_15)), kind
        assert stored[kind] < len(dcformat.container.deflate(text, DEFLATE_DICT)), kind
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = dcformat.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert got.shape == (2, 10) and np.isfinite(got).all()


def test_small_integer_constants_live_in_the_graph(tmp_path):
    """A Reshape's int64 shape (16 bytes) goes into the graph's TensorProto instead of a 50-byte record;
    float tensors (the raw biases, 16-40 bytes) stay records; the model computes the same."""
    from onnx import TensorProto, numpy_helper

    m = cnn_model(_weights())
    flat = next(n for n in m.graph.node if n.op_type == "Flatten")
    flat.op_type, flat.input[:] = "Reshape", [flat.input[0], "flat_shape"]
    del flat.attribute[:]
    m.graph.initializer.append(numpy_helper.from_array(np.array([-1, 6 * 8 * 8], np.int64), "flat_shape"))
    onnx.checker.check_model(m)
    src = tmp_path / "r.onnx"
    onnx.save(m, src)
    out = tmp_path / "r.dcz"
    s = cmp.Settings(sparsity=st.LayerSetting.parse("--sparsity", "0.5", st.fraction),
                     bits=st.LayerSetting.parse("--bits", "4", st.bits), compensate=False)
    rep = cli.convert(src, out, s, manual=True)
    row = next(r for r in rep["layers"] if r["name"] == "flat_shape")
    assert row["encoding"] == "graph" and row["bytes"] == 0
    with dcformat.open(out) as r:
        assert "flat_shape" not in r.tensors and {"conv1.bias", "fc.bias"} <= set(r.tensors)
        assert r.tensors["conv1.bias"].encoding == "raw"
        g = onnx.ModelProto.FromString(r.graph_bytes)
    t = next(t for t in g.graph.initializer if t.name == "flat_shape")
    assert t.data_location == TensorProto.DEFAULT and not t.external_data
    assert numpy_helper.to_array(t).tolist() == [-1, 6 * 8 * 8]
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = dcformat.InferenceSession(str(out)).run(None, {"x": x})[0]
    m2 = onnx.load(src)
    dec = dcformat.load_weights(out)
    for init in m2.graph.initializer:
        if init.name in dec:
            init.CopyFrom(numpy_helper.from_array(dec[init.name], init.name))
    np.testing.assert_allclose(got, _run(m2, x), rtol=1e-5, atol=1e-5)


def test_stored_fidelity_leaves_out_its_defaults_and_expands_back():
    from dcformat import fidelity

    rng = np.random.default_rng(4)
    ref = {"logits": [rng.standard_normal((1, 10)) for _ in range(8)]}
    new = {"logits": [a + 0.01 * rng.standard_normal(a.shape) for a in ref["logits"]]}
    m = fidelity.compare(ref, new)
    full = fidelity.rounded(fidelity.json_safe({
        "schema": fidelity.SCHEMA, "measured": True, "metric": "rel_l2", "metric_text": fidelity.METRICS["rel_l2"],
        "calibration": {"source": "synthetic", "synthetic": True, "seed": 0, "samples": 8}, "budget": None,
        "within_budget": None, "error": m["error"], "error_output": m["error_output"], "max_rel_l2": m["max_rel_l2"],
        "worst_output": m["worst_output"], "min_cosine": m["min_cosine"], "outputs": m["outputs"], "warning": False}))
    stored = fidelity.compact(full)
    assert fidelity.expand(stored) == full and fidelity.expand(full) == full  # a full (schema 1) record as it is
    assert set(stored) == {"schema", "measured", "metric", "calibration", "max_rel_l2", "worst_output", "outputs",
                           "warning"}
    assert set(stored["outputs"]["logits"]) == {"shape", "rel_l2", "cosine_mean", "cosine_min", "max_abs", "top1",
                                                "top1_positions"}
    o = full["outputs"]["logits"]
    assert o["rel_l2"] == float(f"{m['outputs']['logits']['rel_l2']:.4g}") and o["rel_l2"] != m["outputs"]["logits"]["rel_l2"]
    assert o["cosine_min"] == round(m["outputs"]["logits"]["cosine_min"], 6) == full["min_cosine"]
    assert fidelity.lines(stored) == fidelity.lines(full)
    # a field that differs from its default is kept: the decision metric's error on a softmax output
    soft = {"p": [np.exp(a) / np.exp(a).sum() for a in ref["logits"]]}
    m2 = fidelity.compare(soft, {"p": [np.exp(a) / np.exp(a).sum() for a in new["logits"]]}, metric="decision")
    rec = fidelity.rounded({"schema": 2, "measured": True, "metric": "decision", "calibration": {"samples": 8},
                            **{k: m2[k] for k in ("error", "error_output", "max_rel_l2", "worst_output", "min_cosine",
                                                  "outputs")}})
    st2 = fidelity.compact(rec)
    assert st2["error"] == rec["error"] != rec["max_rel_l2"] and st2["outputs"]["p"]["kind"] == "softmax"
    assert fidelity.expand(st2) == {**rec, "metric_text": fidelity.METRICS["decision"], "budget": None,
                                    "within_budget": None}

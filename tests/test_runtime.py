"""Runtime decoder: .dcz -> ONNX Runtime, exactly the converter's weights, full and compact.

The reference everywhere is an ONNX model built directly from the weights the converter
decided on (pruned + k-means quantized, i.e. ``codebook[indices]``): the decoded model must
give the SAME outputs (np.array_equal), not close ones.

One ONNX Runtime fact shapes the compact-mode checks. ORT computes a Gemm/MatMul whose
weight is a constant initializer with a pre-packed weight, and (at ORT_ENABLE_ALL) a Conv
with a constant weight in its NCHWc layout; a weight computed in the graph (compact mode's
Gather / DequantizeLinear) goes through the plain kernels, which sum in another order. So
compact == full bit for bit holds when both run through the same kernels (SAME_KERNELS
below: no pre-packing, no NCHWc), and the rebuilt weights themselves are checked bit for
bit; under ORT's defaults compact is within float rounding of full.
"""

from __future__ import annotations

import gc
import os
import re
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from models import cnn_model, constants_and_if_model
from numpy_mlp import MLP
from converters.prune import magnitude_mask
from converters.quantize import quantize
from dcformat import runtime
from dcformat.graph import strip_weights

CPU = ["CPUExecutionProvider"]
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def same_kernels() -> ort.SessionOptions:
    """Options under which ORT runs constant and computed weights through the same kernels."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.add_session_config_entry("session.disable_prepacking", "1")
    return so


def ort_run(model, feeds, so=None, disabled=None):
    """Outputs of a ModelProto or .onnx path in a plain ORT session."""
    src = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    kw = {"disabled_optimizers": disabled} if disabled else {}
    sess = ort.InferenceSession(os.fspath(src) if not isinstance(src, bytes) else src, so or ort.SessionOptions(),
                                providers=CPU, **kw)
    return sess.run(None, feeds)


def dcz_run(path, feeds, compact=False, so=None):
    return dcformat.InferenceSession(path, providers=["cpu"], sess_options=so, compact=compact).run(None, feeds)


def assert_equal_outputs(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(g, w), f"max abs diff {np.max(np.abs(g.astype(np.float64) - w))}"


def prune_quantize(w, sparsity, bits):
    w = w * magnitude_mask(w, sparsity)
    cb, idx = quantize(w, bits)
    return cb.astype(np.float32), idx


def dcz_from(model, path, encode):
    """Strip ``model``'s weights and write them with ``encode(name, array)`` (default: exact encode)."""
    graph, arrays = strip_weights(model)
    dcformat.write(path, [encode(k, v) for k, v in arrays.items()], graph=graph, metadata={"producer": "test"})
    return arrays


# ------------------------------------------------------------------------------------------ models
@dataclass
class Case:
    name: str
    path: str  # the .dcz
    model: onnx.ModelProto  # reference: the same graph with the converter's weights inline
    weights: dict  # name -> the converter's decision (codebook[indices] or the raw bias)
    feeds: list  # a few input dicts (several batch sizes)
    compacted: set  # weights compact mode must turn into uint8 indices





# name: (shape, sparsity, bits, encoding)
CNN_LAYERS = {
    "conv1.weight": ((16, 3, 3, 3), 0.6, 8, "codebook-dense"),  # 432 elements: stays dense in compact mode
    "conv2.weight": ((32, 16, 3, 3), 0.6, 8, "codebook-sparse"),
    "fc.weight": ((10, 32 * 8 * 8), 0.9, 5, "codebook-sparse"),
}
MLP_LAYERS = {  # MLP([64, 256, 128, 10])
    "fc1.weight": (0.85, 5, "codebook-sparse"),
    "fc2.weight": (0.8, 6, "codebook-dense"),
    "fc3.weight": (0.9, 4, "codebook-sparse"),
}


def _quantized_records(shapes_or_arrays, layers, rng):
    weights, records = {}, []
    for k, (sparsity, bits, enc) in layers.items():
        w = shapes_or_arrays[k]
        cb, idx = prune_quantize(w, sparsity, bits)
        weights[k] = cb[idx]
        records.append(dcformat.encode_codebook(k, cb, idx, encoding=enc))
        assert records[-1].encoding == enc
    return weights, records


@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    rng = np.random.default_rng(1)
    net = MLP([64, 256, 128, 10], seed=3)
    net.b = [(rng.standard_normal(b.shape) * 0.1).astype(np.float32) for b in net.b]
    orig = {f"fc{i + 1}.weight": w for i, w in enumerate(net.W)}
    weights, records = _quantized_records(orig, MLP_LAYERS, rng)
    for i, b in enumerate(net.b):
        weights[f"fc{i + 1}.bias"] = b
        records.append(dcformat.encode_raw(f"fc{i + 1}.bias", b))
    net.W = [weights[f"fc{i + 1}.weight"] for i in range(3)]
    model = net.to_onnx()
    path = str(tmp_path_factory.mktemp("mlp") / "mlp.dcz")
    graph, _ = strip_weights(model)
    dcformat.write(path, records, graph=graph)
    feeds = [{"input": rng.standard_normal((n, 64)).astype(np.float32)} for n in (1, 7, 64)]
    return Case("mlp", path, model, weights, feeds, set(MLP_LAYERS))


@pytest.fixture(scope="module")
def cnn_case(tmp_path_factory):
    rng = np.random.default_rng(2)
    orig = {k: (rng.standard_normal(shape) * 0.2).astype(np.float32) for k, (shape, *_r) in CNN_LAYERS.items()}
    weights, records = _quantized_records(orig, {k: v[1:] for k, v in CNN_LAYERS.items()}, rng)
    for k, (shape, *_r) in CNN_LAYERS.items():
        b = k.replace("weight", "bias")
        weights[b] = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
        records.append(dcformat.encode_raw(b, weights[b]))
    model = cnn_model(weights)
    onnx.checker.check_model(model)
    path = str(tmp_path_factory.mktemp("cnn") / "cnn.dcz")
    graph, _ = strip_weights(model)
    dcformat.write(path, records, graph=graph)
    feeds = [{"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)} for n in (1, 5)]
    return Case("cnn", path, model, weights, feeds, {"conv2.weight", "fc.weight"})


@pytest.fixture(params=["mlp", "cnn"])
def case(request):
    return request.getfixturevalue(f"{request.param}_case")


# ------------------------------------------------------------------------------------------ exactness
def test_decoded_weights_are_the_converters_bits(case):
    got = dcformat.load_weights(case.path)
    assert set(got) == set(case.weights)
    for k, w in case.weights.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape
        assert np.array_equal(got[k].view(np.uint32), w.view(np.uint32)), k


def test_session_equals_reference_model(case):
    """Full mode, ORT defaults: the decoded model IS the reference model."""
    for feeds in case.feeds:
        assert_equal_outputs(dcz_run(case.path, feeds), ort_run(case.model, feeds))


def test_compact_equals_full_and_reference_exactly(case):
    for feeds in case.feeds:
        want = ort_run(case.model, feeds, same_kernels())
        assert_equal_outputs(dcz_run(case.path, feeds, so=same_kernels()), want)
        assert_equal_outputs(dcz_run(case.path, feeds, compact=True, so=same_kernels()), want)


def test_compact_under_defaults_is_within_rounding(case):
    for feeds in case.feeds:
        full = dcz_run(case.path, feeds)[0]
        comp = dcz_run(case.path, feeds, compact=True)[0]
        np.testing.assert_allclose(comp, full, rtol=1e-5, atol=1e-5)
        assert np.array_equal(comp.argmax(1), full.argmax(1))


def test_compact_rebuilds_the_weights_bit_for_bit(case):
    """Ask the compact graph for the Gather outputs themselves: they are the converter's weights."""
    m = dcformat.to_onnx(case.path, compact=True)
    for k in sorted(case.compacted):
        m.graph.output.append(helper.make_tensor_value_info(k, TensorProto.FLOAT, list(case.weights[k].shape)))
    outs = ort_run(m, case.feeds[0], disabled=["ConstantFolding"])
    for k, got in zip(sorted(case.compacted), outs[1:]):
        assert np.array_equal(got.view(np.uint32), case.weights[k].view(np.uint32)), k


def test_compact_keeps_uint8_indices(case):
    m = dcformat.to_onnx(case.path, compact=True)
    inits = {t.name: t for t in m.graph.initializer}
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Gather") + ops.count("DequantizeLinear") == len(case.compacted)
    for k in case.compacted:
        assert k not in inits, f"{k} still stored as a float initializer"
        idx = inits[k + runtime.COMPACT_SUFFIX_INDEX]
        assert idx.data_type == TensorProto.UINT8 and list(idx.dims) == list(case.weights[k].shape)
        producer = next(n for n in m.graph.node if k in n.output)
        assert producer.op_type in ("Gather", "DequantizeLinear")
    for k in set(case.weights) - case.compacted:  # small tensors and biases stay as they were
        assert inits[k].data_type == TensorProto.FLOAT
    # what the session gets: uint8 arrays handed over as external initializers, about 4x less memory
    full, comp = runtime.prepare(case.path), runtime.prepare(case.path, compact=True)
    assert sorted(comp.compacted) == sorted(case.compacted)
    for k in case.compacted:
        assert comp.external[k + runtime.COMPACT_SUFFIX_INDEX].dtype == np.uint8
    big = sum(full.external[k].nbytes for k in case.compacted)
    small = sum(comp.external[k + runtime.COMPACT_SUFFIX_INDEX].nbytes for k in case.compacted)
    assert small * 4 == big


def test_compact_survives_ort_optimizer(case, tmp_path):
    """At ORT's default optimization level the session still holds uint8 indices, not re-folded weights."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    dcformat.InferenceSession(case.path, compact=True, sess_options=so)
    m = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    inits = {t.name: t for t in m.graph.initializer}
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Gather") + ops.count("DequantizeLinear") == len(case.compacted)
    for k in case.compacted:
        assert k not in inits
        assert inits[k + runtime.COMPACT_SUFFIX_INDEX].data_type == TensorProto.UINT8


def test_compact_session_frees_rebuilt_weights_after_a_run(case):
    """Without options of the caller's, compact mode turns ORT's CPU arena off (it would keep the
    full-size rebuilt weights after the first run); the caller's own options are left alone."""
    assert not dcformat.InferenceSession(case.path, compact=True).get_session_options().enable_cpu_mem_arena
    assert dcformat.InferenceSession(case.path).get_session_options().enable_cpu_mem_arena
    so = ort.SessionOptions()
    assert dcformat.InferenceSession(case.path, compact=True, sess_options=so).get_session_options().enable_cpu_mem_arena


def test_full_session_hands_weights_over_in_place(case):
    p = runtime.prepare(case.path)
    big = {k for k, w in case.weights.items() if w.nbytes >= runtime.EXTERNAL_MIN_BYTES}
    assert big and set(p.external) == big  # large weights are not serialized into the graph
    for k, arr in p.external.items():
        assert np.array_equal(arr.view(np.uint32), case.weights[k].view(np.uint32))
    inline = {t.name for t in p.model.graph.initializer if t.raw_data}
    assert inline == set(case.weights) - big
    assert p.model.ByteSize() < 8 * runtime.EXTERNAL_MIN_BYTES * (len(inline) + 1)


def test_session_keeps_its_weights_alive(case):
    """ORT uses the decoded arrays in place: the session must keep them alive by itself."""
    feeds = case.feeds[-1]
    want = ort_run(case.model, feeds)
    for compact in (False, True):
        sess = dcformat.InferenceSession(case.path, compact=compact)
        gc.collect()
        junk = [np.full(w.size, np.nan, np.float32) for w in case.weights.values() for _ in range(3)]
        got = sess.run(None, feeds)
        del junk
        if compact:
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        else:
            assert_equal_outputs(got, want)


def test_reader_object_and_pathlike_sources(case, tmp_path):
    import pathlib

    with dcformat.open(case.path) as r:
        m = dcformat.to_onnx(r)
        assert_equal_outputs(ort_run(m, case.feeds[0]), ort_run(case.model, case.feeds[0]))
    sess = dcformat.InferenceSession(pathlib.Path(case.path))
    assert_equal_outputs(sess.run(None, case.feeds[0]), ort_run(case.model, case.feeds[0]))


def test_sess_options_are_used_and_not_reused(case):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = dcformat.InferenceSession(case.path, sess_options=so)
    assert_equal_outputs(sess.run(None, case.feeds[0]), ort_run(case.model, case.feeds[0]))
    with pytest.raises(ValueError, match="new SessionOptions"):
        dcformat.InferenceSession(case.path, sess_options=so)


# ------------------------------------------------------------------------------------------ to_onnx / save_onnx
def test_to_onnx_full_is_the_reference(case):
    m = dcformat.to_onnx(case.path)
    onnx.checker.check_model(m)
    want = {t.name: numpy_helper.to_array(t) for t in case.model.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k].view(np.uint32), want[k].view(np.uint32))
    for feeds in case.feeds:
        assert_equal_outputs(ort_run(m, feeds), ort_run(case.model, feeds))


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("external", [False, True])
def test_save_onnx(case, tmp_path, monkeypatch, compact, external):
    out = tmp_path / "sub" / "model.onnx"
    out.parent.mkdir()
    n, data = runtime.save_onnx(case.path, out, compact=compact, external_data=external)
    assert out.stat().st_size == n
    assert sorted(os.listdir(out.parent)) == sorted(["model.onnx"] + ([data] if external else []))
    if external:
        assert re.fullmatch(r"model\.onnx\.[0-9a-f]{16}\.data", data)  # named by its digest: a new pair, not a rename
        m = onnx.load(str(out), load_external_data=False)
        ext = [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]
        assert ext
        for t in ext:
            loc = {e.key: e.value for e in t.external_data}["location"]
            assert loc == data and not os.path.isabs(loc)  # relative: the pair can be moved
        assert n < 16384  # the weights are not in the .onnx
    else:
        assert data is None
    onnx.checker.check_model(str(out))
    monkeypatch.chdir(tmp_path)  # ORT must find the data beside the model, not in the working directory
    for feeds in case.feeds:
        if compact:
            assert_equal_outputs(ort_run(out, feeds, same_kernels(), disabled=["ConstantFolding"]),
                                 ort_run(case.model, feeds, same_kernels()))
        else:
            assert_equal_outputs(ort_run(out, feeds), ort_run(case.model, feeds))
    # the pair still loads after moving both elsewhere
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in os.listdir(out.parent):
        os.replace(out.parent / f, moved / f)
    m = onnx.load(str(moved / "model.onnx"))
    assert_equal_outputs(ort_run(m, case.feeds[0], same_kernels(), disabled=["ConstantFolding"]),
                         ort_run(case.model, case.feeds[0], same_kernels()))


def test_save_onnx_is_atomic(case, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    bad = tmp_path / "bad.dcz"
    _damage_tensor(case.path, bad, next(iter(case.weights)))
    with pytest.raises(dcformat.ChecksumError):
        runtime.save_onnx(bad, out)
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["bad.dcz", "m.onnx"]  # no temporary files left


# ------------------------------------------------------------------------------------------ lossless files
def test_lossless_float_weights_give_the_original_model(tmp_path):
    """dcformat.encode on the original float weights (pruned too, with their -0.0s) is exact."""
    rng = np.random.default_rng(5)
    net = MLP([32, 200, 10], seed=5)
    net.b = [(rng.standard_normal(b.shape) * 0.1).astype(np.float32) for b in net.b]
    net.W[0] = net.W[0] * magnitude_mask(net.W[0], 0.7)  # negative weights become -0.0
    assert np.signbit(net.W[0][net.W[0] == 0]).any()
    model = net.to_onnx()
    arrays = dcz_from(model, tmp_path / "f.dcz", dcformat.encode)
    got = dcformat.load_weights(tmp_path / "f.dcz")
    for k, v in arrays.items():
        assert np.array_equal(got[k].view(np.uint32), v.view(np.uint32)), k
    for n in (1, 9):
        feeds = {"input": rng.standard_normal((n, 32)).astype(np.float32)}
        want = ort_run(model, feeds)
        assert_equal_outputs(dcz_run(tmp_path / "f.dcz", feeds), want)
        assert_equal_outputs(ort_run(dcformat.to_onnx(tmp_path / "f.dcz"), feeds), want)
        np.testing.assert_allclose(dcz_run(tmp_path / "f.dcz", feeds, compact=True)[0], want[0], rtol=1e-5, atol=1e-5)


def test_lossless_quantized_weights_give_the_original_model(tmp_path, mlp_case):
    """dcformat.encode on already-quantized weights finds the codebook by itself; still exact."""
    arrays = dcz_from(mlp_case.model, tmp_path / "q.dcz", dcformat.encode)
    with dcformat.open(tmp_path / "q.dcz") as r:
        assert all(r.info(k).encoding.startswith("codebook") for k in MLP_LAYERS)
    assert set(runtime.prepare(tmp_path / "q.dcz", compact=True).compacted) == set(MLP_LAYERS)
    for feeds in mlp_case.feeds:
        assert_equal_outputs(dcz_run(tmp_path / "q.dcz", feeds), ort_run(mlp_case.model, feeds))
        assert_equal_outputs(dcz_run(tmp_path / "q.dcz", feeds, compact=True, so=same_kernels()),
                             ort_run(mlp_case.model, feeds, same_kernels()))
    assert len(arrays) == 6


# ------------------------------------------------------------------------------------------ uniform codebook
@pytest.mark.parametrize("encoding", ["codebook-dense", "codebook-sparse"])
def test_uniform_codebook_takes_dequantize_linear(tmp_path, encoding):
    rng = np.random.default_rng(6)
    codebook = (np.arange(-8, 8) * 0.25).astype(np.float32)  # exactly (q - 8) * 0.25
    idx = rng.integers(0, 16, (48, 40))
    w = codebook[idx]
    net = MLP([40, 48, 10], seed=6)
    net.W[0] = w
    model = net.to_onnx()
    graph, arrays = strip_weights(model)
    records = [dcformat.encode_codebook("fc1.weight", codebook, idx, encoding=encoding)]
    records += [dcformat.encode(k, v) for k, v in arrays.items() if k != "fc1.weight"]
    dcformat.write(tmp_path / "u.dcz", records, graph=graph)
    m = dcformat.to_onnx(tmp_path / "u.dcz", compact=True)
    producer = next(n for n in m.graph.node if "fc1.weight" in n.output)
    assert producer.op_type == "DequantizeLinear"
    inits = {t.name: t for t in m.graph.initializer}
    assert inits[producer.input[0]].data_type == TensorProto.UINT8
    assert numpy_helper.to_array(inits[producer.input[1]]) == np.float32(0.25)
    assert "Gather" not in [n.op_type for n in m.graph.node if "fc1.weight" in n.output]
    m.graph.output.append(helper.make_tensor_value_info("fc1.weight", TensorProto.FLOAT, [48, 40]))
    feeds = {"input": rng.standard_normal((6, 40)).astype(np.float32)}
    outs = ort_run(m, feeds, disabled=["ConstantFolding"])
    assert np.array_equal(outs[1].view(np.uint32), w.view(np.uint32))
    assert_equal_outputs(dcz_run(tmp_path / "u.dcz", feeds, compact=True, so=same_kernels()),
                         ort_run(model, feeds, same_kernels()))
    assert_equal_outputs(dcz_run(tmp_path / "u.dcz", feeds), ort_run(model, feeds))


def test_non_uniform_codebook_is_not_dequantized():
    assert runtime._uniform(np.array([-1.0, 0.0, 1.0, 2.5], np.float32)) is None
    assert runtime._uniform(np.array([0.1, 0.2, 0.3], np.float32)) is None  # zero point would be -1
    assert runtime._uniform(np.array([-0.3, -0.2, -0.1, 0.0], np.float32)) is None  # 0.1 steps do not round-trip
    assert runtime._uniform(np.array([-0.5, 0.0, 0.5], np.float32)) == (np.float32(0.5), np.uint8(1))


# ------------------------------------------------------------------------------------------ Constant nodes, If subgraphs
def _constants_and_if_model(w):
    return constants_and_if_model(w, np.full((32, 2), 2.5, np.float32),
                                  np.linspace(-1, 1, 64, dtype=np.float32).reshape(32, 2))


def test_constant_nodes_and_if_subgraphs(tmp_path):
    rng = np.random.default_rng(7)
    cb, idx = prune_quantize((rng.standard_normal((64, 32)) * 0.3).astype(np.float32), 0.8, 4)
    model = _constants_and_if_model(cb[idx])
    graph, arrays = strip_weights(model)
    assert len(arrays) == 4
    records = [dcformat.encode_codebook("W", cb, idx)] + [dcformat.encode(k, v) for k, v in arrays.items() if k != "W"]
    dcformat.write(tmp_path / "c.dcz", records, graph=graph)
    assert runtime.prepare(tmp_path / "c.dcz", compact=True).compacted == ["W"]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        want = ort_run(model, feeds)
        assert_equal_outputs(dcz_run(tmp_path / "c.dcz", feeds), want)
        assert_equal_outputs(ort_run(dcformat.to_onnx(tmp_path / "c.dcz"), feeds), want)
        assert_equal_outputs(dcz_run(tmp_path / "c.dcz", feeds, compact=True, so=same_kernels()),
                             ort_run(model, feeds, same_kernels()))
        m = dcformat.to_onnx(tmp_path / "c.dcz", compact=True)
        onnx.checker.check_model(m)
        assert_equal_outputs(ort_run(m, feeds, same_kernels(), disabled=["ConstantFolding"]),
                             ort_run(model, feeds, same_kernels()))


# ------------------------------------------------------------------------------------------ weights-only files
@pytest.fixture
def weights_only(tmp_path):
    rng = np.random.default_rng(8)
    arrays = {
        "a": rng.standard_normal((30, 20)).astype(np.float32),
        "b": np.where(rng.random(5000) < 0.9, 0, rng.integers(-3, 4, 5000) * 0.5).astype(np.float32),
        "c": np.arange(10, dtype=np.int64),
        "h": rng.standard_normal(100).astype(np.float16),
    }
    path = tmp_path / "w.dcz"
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()])
    return path, arrays


def test_weights_only_file(weights_only, tmp_path):
    path, arrays = weights_only
    for call in (lambda: dcformat.InferenceSession(path), lambda: dcformat.InferenceSession(path, compact=True),
                 lambda: dcformat.to_onnx(path), lambda: runtime.save_onnx(path, tmp_path / "x.onnx")):
        with pytest.raises(dcformat.FormatError, match="weights-only"):
            call()
    assert not (tmp_path / "x.onnx").exists()
    got = dcformat.load_weights(path)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)


def test_state_dict_safetensors(weights_only, tmp_path, capsys):
    from safetensors.numpy import load_file

    from dcformat.cli import decode_main

    path, arrays = weights_only
    out = tmp_path / "w.safetensors"
    with pytest.raises(SystemExit) as e:
        decode_main([str(path), "--state-dict", str(out)])
    assert e.value.code == 0
    assert "w.safetensors" in capsys.readouterr().out
    got = load_file(str(out))
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v)
    n = runtime.save_state_dict(path, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == out.read_bytes() and n == out.stat().st_size


# ------------------------------------------------------------------------------------------ damaged and bad files
def _damage_tensor(src, dst, name):
    data = bytearray(open(src, "rb").read())
    with dcformat.open(src) as r:
        sec = r._tensor_sections[name]
        data[sec.offset + sec.length // 2] ^= 0x40
    open(dst, "wb").write(bytes(data))


@pytest.mark.parametrize("compact", [False, True])
def test_damaged_tensor_raises_checksum_error(case, tmp_path, compact):
    for name in case.weights:
        bad = tmp_path / f"bad-{name}.dcz"
        _damage_tensor(case.path, bad, name)
        with pytest.raises(dcformat.ChecksumError, match=repr(name)):
            dcformat.InferenceSession(bad, compact=compact)
        with pytest.raises(dcformat.DczError):
            dcformat.to_onnx(bad, compact=compact)


def test_unknown_op_in_graph_is_a_format_error(tmp_path, mlp_case):
    model = onnx.ModelProto.FromString(mlp_case.model.SerializeToString())
    model.graph.node[1].op_type = "NoSuchOp"
    dcz_from(model, tmp_path / "bad.dcz", dcformat.encode)
    for compact in (False, True):
        with pytest.raises(dcformat.FormatError, match="NoSuchOp|cannot load"):
            dcformat.InferenceSession(tmp_path / "bad.dcz", compact=compact)
    with dcformat.open(tmp_path / "bad.dcz") as r, pytest.raises(dcformat.FormatError, match="bad.dcz: ONNX Runtime"):
        dcformat.InferenceSession(r)


def test_graph_section_that_is_not_onnx(tmp_path):
    with pytest.raises(dcformat.EncodeError, match="graph: not a valid ONNX ModelProto"):
        dcformat.write(tmp_path / "g.dcz", [dcformat.encode("a", np.ones(3, np.float32))], graph=b"\xff\xff not protobuf")
    assert not (tmp_path / "g.dcz").exists()
    dcformat.write(tmp_path / "g.dcz", [dcformat.encode("a", np.ones(3, np.float32))], graph=b"\xff\xff not protobuf",
                   checked=False)  # written as given
    for call in (dcformat.InferenceSession, dcformat.to_onnx):
        with pytest.raises(dcformat.FormatError, match="graph"):
            call(tmp_path / "g.dcz")


def test_graph_referring_to_a_missing_or_mismatched_tensor(tmp_path, mlp_case):
    graph, arrays = strip_weights(mlp_case.model)
    recs = [dcformat.encode(k, v) for k, v in arrays.items() if k != "fc2.bias"]
    with pytest.raises(dcformat.EncodeError, match="'fc2.bias', which is not among"):
        dcformat.write(tmp_path / "m.dcz", recs, graph=graph)
    dcformat.write(tmp_path / "m.dcz", recs, graph=graph, checked=False)  # as given: readers must refuse it
    with pytest.raises(dcformat.FormatError, match="fc2.bias"):
        dcformat.InferenceSession(tmp_path / "m.dcz")
    for wrong in (np.zeros(7, np.float32), np.zeros(arrays["fc2.bias"].shape, np.float16)):  # shape, dtype
        with pytest.raises(dcformat.EncodeError, match="fc2.bias.*expects"):
            dcformat.write(tmp_path / "m.dcz", recs + [dcformat.encode("fc2.bias", wrong)], graph=graph)
    recs.append(dcformat.encode("fc2.bias", np.zeros(7, np.float32)))  # wrong shape
    dcformat.write(tmp_path / "m.dcz", recs, graph=graph, checked=False)
    for call in (dcformat.InferenceSession, dcformat.to_onnx):
        with pytest.raises(dcformat.DczError, match="fc2.bias"):
            call(tmp_path / "m.dcz")


# ------------------------------------------------------------------------------------------ providers
@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime here has CUDAExecutionProvider (tests/test_gpu.py covers it)")
def test_cuda_without_onnxruntime_gpu(mlp_case):
    for p in ("cuda", ["cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"]):
        with pytest.raises(dcformat.ProviderError, match="onnxruntime-gpu"):
            dcformat.InferenceSession(mlp_case.path, providers=p)


def test_provider_names(mlp_case):
    assert runtime.resolve_providers(None) == ["CPUExecutionProvider"]
    assert runtime.resolve_providers("CPU") == ["CPUExecutionProvider"]
    assert runtime.resolve_providers([("cpu", {})]) == [("CPUExecutionProvider", {})]
    with pytest.raises(dcformat.ProviderError, match="NoSuchExecutionProvider"):
        dcformat.InferenceSession(mlp_case.path, providers=["NoSuchExecutionProvider"])
    sess = dcformat.InferenceSession(mlp_case.path, providers="cpu")
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_initializer_that_is_also_an_input_stays_overridable(tmp_path, mlp_case):
    """Older models list initializers as graph inputs too; compact mode must not replace those."""
    model = onnx.ModelProto.FromString(mlp_case.model.SerializeToString())
    model.graph.input.append(helper.make_tensor_value_info("fc2.weight", TensorProto.FLOAT, [128, 256]))
    graph, _ = strip_weights(model)
    with dcformat.open(mlp_case.path) as r:
        records = [dcformat.encode(k, r[k]) for k in r]
    dcformat.write(tmp_path / "i.dcz", records, graph=graph)
    assert set(runtime.prepare(tmp_path / "i.dcz", compact=True).compacted) == {"fc1.weight", "fc3.weight"}
    feeds = mlp_case.feeds[1]
    want = ort_run(model, feeds, same_kernels())
    assert_equal_outputs(dcz_run(tmp_path / "i.dcz", feeds, compact=True, so=same_kernels()), want)


# ------------------------------------------------------------------------------------------ compact: Constant nodes, old opsets
def _constant_node_mlp(opset: int, rng):
    """x @ W1 (a Constant node) -> Relu -> @ W2 (an initializer); both codebook-coded."""
    from onnx import helper, numpy_helper

    w1, w2 = (rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((64, 96), (96, 32)))
    nodes = [helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(w1)),
             helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], [numpy_helper.from_array(w2, "W2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [7, 11, 17])
def test_compact_covers_constant_nodes_and_old_opsets(tmp_path, opset):
    rng = np.random.default_rng(opset)
    model = _constant_node_mlp(opset, rng)
    graph, arrays = strip_weights(model)
    records, want = [], {}
    for k, w in arrays.items():
        cb, idx = prune_quantize(w, 0.5, 4)
        want[k] = cb[idx]
        records.append(dcformat.encode_codebook(k, cb, idx))
    path = tmp_path / "m.dcz"
    dcformat.write(path, records, graph=graph)
    p = runtime.prepare(path, compact=True)
    assert sorted(p.compacted) == ["W1", "W2"] and not p.kept
    ops = [n.op_type for n in p.model.graph.node]
    assert "Constant" not in ops and ops.count("Gather") + ops.count("DequantizeLinear") == 2
    feeds = {"x": rng.standard_normal((5, 64)).astype(np.float32)}
    full = dcz_run(path, feeds)[0]
    comp = dcz_run(path, feeds, compact=True)[0]
    np.testing.assert_allclose(comp, full, rtol=1e-5, atol=1e-5)
    m = dcformat.to_onnx(path, compact=True)  # the Gather outputs are the converter's weights, bit for bit
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in ("W1", "W2")])
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for k, g in zip(("W1", "W2"), got):
        assert np.array_equal(g.view(np.uint32), want[k].view(np.uint32)), k


def test_compact_says_what_it_keeps_full_size(tmp_path, capsys):
    """A weight inside an If branch stays full size in compact mode: prepare and dcrun say why."""
    rng = np.random.default_rng(5)
    branch = lambda: rng.standard_normal((48, 2)).astype(np.float32)  # noqa: E731
    model = constants_and_if_model(rng.standard_normal((64, 48)).astype(np.float32), branch(), branch())
    big = numpy_helper.from_array(rng.standard_normal((48, 40)).astype(np.float32))
    then_g = next(a.g for a in model.graph.node[3].attribute if a.name == "then_branch")
    then_g.node.insert(0, helper.make_node("Constant", [], ["unused_big"], value=big))
    graph, arrays = strip_weights(model)
    records = []
    for k, w in arrays.items():
        if w.size >= 1024:
            cb, idx = prune_quantize(w, 0.5, 4)
            records.append(dcformat.encode_codebook(k, cb, idx))
        else:
            records.append(dcformat.encode(k, w))
    path = tmp_path / "m.dcz"
    dcformat.write(path, records, graph=graph)
    p = runtime.prepare(path, compact=True)
    assert p.compacted == ["W"]
    assert p.kept == {"unused_big": "inside a subgraph"}
    from dcformat.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main([str(path), "--compact"])
    assert e.value.code == 0
    assert "compact: 1 codebook weight(s) held as uint8 indices; 1 kept full size (1 inside a subgraph)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the garbage collector
def test_a_load_pauses_the_garbage_collector(tmp_path):
    """A session of a 400-record model is made, and its weights loaded, with the garbage collector off (it ran
    every 700 new objects: 5-6 times per load of this file or of the PP-OCR files); it is on again afterwards,
    also after a failed load, and a caller's gc.disable() is kept."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    nodes, inits = [], []
    for i in range(400):
        inits.append(numpy_helper.from_array(np.full(4, i, np.float32), f"b{i}"))
        nodes.append(helper.make_node("Add", [f"y{i - 1}" if i else "x", f"b{i}"], [f"y{i}"]))
    g = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y399", TensorProto.FLOAT, [4])], inits)
    graph, arrays = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    path = tmp_path / "many.dcz"
    dcformat.write(path, [dcformat.encode(k, v) for k, v in arrays.items()], graph=graph)
    runs, during = [], []

    def count(phase, info):
        if phase == "start":
            runs.append(info["generation"])

    from dcformat.reader import DczReader

    decode_many = DczReader.decode_many
    dcformat.InferenceSession(path)  # imports and first-use costs out of the way
    gc.collect()
    gc.callbacks.append(count)
    DczReader.decode_many = lambda self, names: during.append(gc.isenabled()) or decode_many(self, names)
    try:
        sess = dcformat.InferenceSession(path)
        weights = runtime.load_weights(path)
    finally:
        gc.callbacks.remove(count)
        DczReader.decode_many = decode_many
    # off while loading: at most one run after each load (over the objects still alive), not 5-6 during it
    assert during == [False, False] and len(runs) <= 2 and gc.isenabled() and len(weights) == 400
    assert np.array_equal(sess.run(None, {"x": np.zeros(4, np.float32)})[0], np.full(4, 399 * 400 / 2, np.float32))
    (tmp_path / "bad.dcz").write_bytes(path.read_bytes()[:-9])
    with pytest.raises(dcformat.DczError):
        dcformat.InferenceSession(tmp_path / "bad.dcz")
    assert gc.isenabled()
    gc.disable()
    try:
        runtime.prepare(path)
        assert not gc.isenabled()
    finally:
        gc.enable()

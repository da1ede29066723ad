"""Calibration inputs, measured fidelity, the error budget and the dcrun gate (issue 12).

Small models built here with onnx.helper: an MLP classifier (Gemm), and a token model
(Gather embedding table + MatMul) with input_ids / token_type_ids / attention_mask."""

from __future__ import annotations

import json
import math
import os
import pickle
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from converters.cli import main as convert_main
from converters import calibrate
from dcformat import fidelity
from dcformat import inputs as inp
from dcformat.cli import run_main
from clitools import cli as _cli, one_line_error


def mlp(path, seed=0, dims=(32, 256, 128, 10)):
    """x [N, 32] -> Gemm-Relu-Gemm-Relu-Gemm -> logits [N, 10], trained-looking (smooth) weights."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        w = (rng.standard_normal((b, a)) / math.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"),
                  numpy_helper.from_array((rng.standard_normal(b) * 0.05).astype(np.float32), f"fc{i}.bias")]
        out = "logits" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out + ("" if out == "logits" else "_")],
                                      transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out + "_"], [out]))
        prev = out
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", dims[0]])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", dims[-1]])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), os.fspath(path))


VOCAB = 300


def token_model(path, seed=0):
    """input_ids / token_type_ids index embedding tables (Gather); masked mean pooling; a MatMul head."""
    rng = np.random.default_rng(seed)
    emb = (rng.standard_normal((VOCAB, 64)) * 0.1).astype(np.float32)
    typ = (rng.standard_normal((2, 64)) * 0.1).astype(np.float32)
    head = (rng.standard_normal((64, 48)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["emb.weight", "input_ids"], ["e"]),
        helper.make_node("Gather", ["type.weight", "token_type_ids"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["et"]),
        helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mf", "axes"], ["m3"]),
        helper.make_node("Mul", ["et", "m3"], ["em"]),
        helper.make_node("ReduceMean", ["em", "one"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head.weight"], ["embedding"]),
    ]
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "token_type_ids", "attention_mask")]
    g = helper.make_graph(nodes, "tok", ids, [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 48])],
                          [numpy_helper.from_array(emb, "emb.weight"), numpy_helper.from_array(typ, "type.weight"),
                           numpy_helper.from_array(head, "head.weight"),
                           numpy_helper.from_array(np.array([2], np.int64), "axes"),
                           numpy_helper.from_array(np.array([1], np.int64), "one")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), os.fspath(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    mlp(d / "mlp.onnx")
    token_model(d / "tok.onnx")
    return d


def run_all(path, feeds_list, dcz=False):
    sess = dcformat.InferenceSession(path) if dcz else ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = {}
    for f in feeds_list:
        for o, y in zip(sess.get_outputs(), sess.run(None, f)):
            outs.setdefault(o.name, []).append(y)
    return outs


# ------------------------------------------------------------------------- synthetic inputs


def test_synthetic_inputs_deterministic_and_in_range(models):
    model = onnx.load(models / "tok.onnx")
    decl = inp.declared_inputs(model)
    rows = {d.name: d.table_rows for d in decl}
    assert rows == {"input_ids": VOCAB, "token_type_ids": 2, "attention_mask": None}
    a = inp.synthetic_inputs(decl, 8, seed=3)
    b = inp.synthetic_inputs(decl, 8, seed=3)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["input_ids"].shape == (8, inp.SEQUENCE_DIM) and a["input_ids"].dtype == np.int64
    assert 0 <= a["input_ids"].min() and a["input_ids"].max() < VOCAB
    assert len(np.unique(a["input_ids"])) > 50  # drawn over the table, not 0..9
    assert set(np.unique(a["token_type_ids"])) <= {0, 1}
    assert np.all(a["attention_mask"] == 1)
    c = inp.synthetic_inputs(decl, 8, seed=4)
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    d = inp.synthetic_inputs(decl, 2, dims={"sequence": 5})
    assert d["input_ids"].shape == (2, 5) and d["attention_mask"].shape == (2, 5)


def test_synthetic_images_and_fixed_batch():
    x = helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 3, "H", "W"])
    g = helper.make_graph([helper.make_node("Identity", ["img"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    decl = inp.declared_inputs(helper.make_model(g))
    s = inp.synthetic_inputs(decl, 3)
    assert s["img"].shape == (3, 1, 3, inp.IMAGE_DIM, inp.IMAGE_DIM)  # fixed batch 1: an extra samples axis
    assert -1 <= s["img"].min() and s["img"].max() <= 1 and s["img"].std() > 0.2
    assert inp.sample_feeds(s, decl, 1)["img"].shape == (1, 3, inp.IMAGE_DIM, inp.IMAGE_DIM)


def test_dcrun_uses_the_table_rows(models, tmp_path, capsys):
    code, out, err = _cli(convert_main, [models / "tok.onnx", "-o", tmp_path / "t.dcz", "-q", "--lossless"], capsys)
    assert code == 0, err
    code, out, err = _cli(run_main, [tmp_path / "t.dcz", "--dim", "sequence=7", "--batch", "2",
                                     "--output-dir", tmp_path / "o"], capsys)
    assert code == 0, err
    assert "input  input_ids: int64 [2, 7] (synthetic)" in out


# ------------------------------------------------------------------------- measured fidelity


def test_reported_fidelity_equals_an_independent_computation(models, tmp_path, capsys):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((12, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "m.dcz"
    code, stdout, err = _cli(convert_main, [models / "mlp.onnx", "-o", out, "--json", "--calibration", tmp_path / "x.npy",
                                            "--sparsity", "0.6", "--bits", "4"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    feeds = [{"x": x[i:i + 1]} for i in range(12)]
    ref = run_all(models / "mlp.onnx", feeds)["logits"]
    got = run_all(out, feeds, dcz=True)["logits"]
    a = np.concatenate(ref).astype(np.float64)
    b = np.concatenate(got).astype(np.float64)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    m = report["fidelity"]["outputs"]["logits"]
    assert m["samples"] == 12
    # stored (and reported) to fidelity.DIGITS = 4 significant digits, cosines to 6 decimals (schema 2)
    assert m["rel_l2"] == pytest.approx(rel, rel=1e-3)
    assert m["cosine_mean"] == pytest.approx(cos.mean(), abs=2e-6)
    assert m["cosine_min"] == pytest.approx(cos.min(), abs=2e-6)
    assert m["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-3, abs=1e-6)
    assert m["top1"] == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)), rel=1e-3)
    assert report["fidelity"]["max_rel_l2"] == m["rel_l2"] and rel > 0.01  # 60% / 4 bits is lossy here
    # stored in the file's metadata, same schema
    with dcformat.open(out) as r:
        meta = r.metadata["fidelity"]
    assert meta["schema"] == fidelity.SCHEMA and meta["measured"] is True and meta["metric"] == "rel_l2"
    assert meta["outputs"]["logits"]["rel_l2"] == pytest.approx(rel, rel=1e-3)
    assert fidelity.expand(meta) == report["fidelity"]  # the stored record is the report's without its defaults
    assert meta["calibration"]["samples"] == 12 and meta["calibration"]["synthetic"] is False
    # explicit settings that hurt: measured, with a warning on stderr
    assert "warning: the compressed model's outputs differ" in err


def test_fidelity_metrics_of_known_arrays():
    ref = {"y": [np.array([[3.0, 4.0]]), np.array([[0.0, 1.0]])]}
    new = {"y": [np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]])]}
    m = fidelity.compare(ref, new)["outputs"]["y"]
    assert m["rel_l2"] == pytest.approx(math.sqrt(2) / math.sqrt(26))
    assert m["cosine_mean"] == pytest.approx(0.5) and m["cosine_min"] == pytest.approx(0.0)
    assert m["max_abs"] == 1.0 and m["top1"] == 0.5
    bad = fidelity.compare(ref, {"y": [np.zeros((1, 3)), np.zeros((1, 3))]})["outputs"]["y"]
    assert bad["shape_mismatch"] and bad["rel_l2"] == math.inf
    assert fidelity.snr_db(np.ones(4), np.ones(4)) == math.inf
    assert fidelity.snr_db(np.array([1.0, 1.0]), np.array([1.1, 0.9])) == pytest.approx(20.0)


def test_weights_only_reports_snr(tmp_path, capsys):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({"w": rng.standard_normal((64, 64)).astype(np.float32)}, tmp_path / "w.safetensors")
    code, out, err = _cli(convert_main, [tmp_path / "w.safetensors", "-o", tmp_path / "w.dcz", "--json"], capsys)
    assert code == 0, err
    fid = json.loads(out)["fidelity"]
    assert fid["measured"] is False and "no graph" in fid["reason"]
    assert 35 < fid["tensor_snr_db"]["w"] < 60  # 8 bits, no pruning
    code, _, err = _cli(convert_main, [tmp_path / "w.safetensors", "-o", tmp_path / "w2.dcz", "--max-error", "0.01"],
                        capsys)
    assert code == 1
    one_line_error(err, "weights only")
    assert not (tmp_path / "w2.dcz").exists()


# ------------------------------------------------------------------------- the error budget


@pytest.mark.parametrize("budget", [0.02, 0.05])
def test_max_error_honoured_on_held_out_inputs(models, tmp_path, capsys, budget):
    rng = np.random.default_rng(5)
    calib, held = (rng.standard_normal((32, 32)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "c.npz", x=calib)
    out = tmp_path / "b.dcz"
    code, stdout, err = _cli(convert_main, [models / "mlp.onnx", "-o", out, "--json", "--calibration", tmp_path / "c.npz",
                                            "--max-error", budget], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["fidelity"]["max_rel_l2"] <= budget and rep["fidelity"]["within_budget"] is True
    feeds = [{"x": held[i:i + 1]} for i in range(32)]
    a = np.concatenate(run_all(models / "mlp.onnx", feeds)["logits"]).astype(np.float64)
    b = np.concatenate(run_all(out, feeds, dcz=True)["logits"]).astype(np.float64)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) <= budget
    shared = [r for r in rep["layers"] if r["action"] == "pruned+shared"]
    assert shared  # something was compressed
    if budget == 0.05:
        assert rep["dcz_bytes"] < 0.6 * rep["source"]["bytes"]


def test_default_is_the_budget_search_and_embeddings_are_candidates(models, tmp_path, capsys):
    out = tmp_path / "tok.dcz"
    code, stdout, err = _cli(convert_main, [models / "tok.onnx", "-o", out], capsys)
    assert code == 0, err
    assert "fidelity on 16 calibration samples (synthetic inputs" in stdout
    assert f"within the budget --max-error {calibrate.DEFAULT_MAX_ERROR:g}" in stdout
    code, stdout, err = _cli(convert_main, [models / "tok.onnx", "-o", out, "--json", "--max-error", "0.05"], capsys)
    rep = json.loads(stdout)
    rows = {r["name"]: r for r in rep["layers"]}
    assert rows["emb.weight"]["role"] == "embedding" and rows["emb.weight"]["action"] == "pruned+shared"
    assert rows["type.weight"]["reason"].startswith("small")
    assert rep["fidelity"]["calibration"]["inputs"]["input_ids"]["table_rows"] == VOCAB


def test_every_raw_tensor_says_why(models, tmp_path, capsys):
    code, stdout, err = _cli(convert_main, [models / "mlp.onnx", "-o", tmp_path / "m.dcz", "--max-error", "1e-6"], capsys)
    assert code == 0, err
    assert "kept raw: fc0.weight (8,192 params): error budget" in stdout
    assert "kept raw: 3 tensor(s), 394 params: small (< --min-size 512)" in stdout


# ------------------------------------------------------------------------- bad input


def _pickle_npz(path):
    with zipfile.ZipFile(path, "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("case, needle", [
    ("wrong-name", "unknown input 'image'"),
    ("wrong-shape", "has samples of shape [1, 31]"),
    ("wrong-dtype", "is float64, not tensor(float32)"),
    ("empty-file", "is empty"),
    ("pickle", "pickled"),
    ("npy-multi", None),
    ("no-samples", "no samples"),
    ("missing", "does not exist"),
])
def test_bad_calibration_files(models, tmp_path, capsys, case, needle):
    p = tmp_path / "c.npz"
    if case == "wrong-name":
        np.savez(p, image=np.zeros((4, 32), np.float32))
    elif case == "wrong-shape":
        np.savez(p, x=np.zeros((4, 31), np.float32))
    elif case == "wrong-dtype":
        np.savez(p, x=np.zeros((4, 32)))
    elif case == "empty-file":
        p.write_bytes(b"")
    elif case == "pickle":
        _pickle_npz(p)
    elif case == "no-samples":
        np.savez(p, x=np.zeros((0, 32), np.float32))
    elif case == "missing":
        p = tmp_path / "nope.npz"
    src = models / "mlp.onnx"
    if case == "npy-multi":
        src, needle = models / "tok.onnx", "one array (.npy) but the model takes 3 inputs"
        p = tmp_path / "c.npy"
        np.save(p, np.zeros((4, 8), np.int64))
    out = tmp_path / "out.dcz"
    code, _, err = _cli(convert_main, [src, "-o", out, "--calibration", p], capsys)
    assert code == 1
    one_line_error(err, "--calibration", needle)
    assert not out.exists() and os.listdir(tmp_path) == [p.name] * p.exists()


@pytest.mark.parametrize("value", ["0", "-0.1", "nan", "inf", "x"])
def test_budget_must_be_positive(models, tmp_path, capsys, value):
    code, _, err = _cli(convert_main, [models / "mlp.onnx", "-o", tmp_path / "o.dcz", "--max-error", value], capsys)
    assert code == 2
    one_line_error(err, "--max-error")
    assert not (tmp_path / "o.dcz").exists()


def test_calibration_refuses_pickles_even_inside_a_directory(models, tmp_path, capsys):
    d = tmp_path / "calib"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((2, 32), np.float32))
    with open(d / "b.npy", "wb") as f:
        pickle.dump(np.zeros((2, 32), np.float32), f)
    code, _, err = _cli(convert_main, [models / "mlp.onnx", "-o", tmp_path / "o.dcz", "--calibration", d], capsys)
    assert code == 1
    one_line_error(err, "b.npy")


def test_calibration_directory_stacks_samples(models, tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(3):
        np.save(d / f"part{i}.npy", np.full((2, 32), i, np.float32))
    decl = inp.declared_inputs(onnx.load(models / "mlp.onnx"))
    got = inp.load_calibration(d, decl)
    assert got["x"].shape == (6, 32) and got["x"][5, 0] == 2
    assert inp.load_calibration(d, decl, samples=4)["x"].shape == (4, 32)


# ------------------------------------------------------------------------- dcrun as a gate


@pytest.fixture(scope="module")
def lossy(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("gate")
    code = None
    with pytest.raises(SystemExit) as e:
        convert_main([str(models / "mlp.onnx"), "-o", str(d / "lossy.dcz"), "-q", "--sparsity", "0.5", "--bits", "5"])
    code = e.value.code
    assert code == 0
    return d / "lossy.dcz"


def test_compare_gate_exit_codes(models, lossy, capsys):
    ref = models / "mlp.onnx"
    code, out, err = _cli(run_main, [lossy, "--compare", ref], capsys)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("compare logits: rel. L2 error "))
    rel = float(line.split("rel. L2 error ")[1].split(",")[0])
    assert rel > 0.001
    code, out, err = _cli(run_main, [lossy, "--compare", ref, "--max-error", rel * 2], capsys)
    assert code == 0 and "within tolerance" in out
    code, out, err = _cli(run_main, [lossy, "--compare", ref, "--max-error", rel / 2], capsys)
    assert code == 1 and "FAIL logits: relative L2 error" in err
    code, out, err = _cli(run_main, [lossy, "--compare", ref, "--min-cosine", "0.9999999"], capsys)
    assert code == 1 and "worst-sample cosine" in err


def test_compare_gate_shapes_differ(models, tmp_path, capsys):
    mlp(tmp_path / "other.onnx", dims=(32, 64, 7))
    code, out, err = _cli(convert_main, [models / "mlp.onnx", "-o", tmp_path / "m.dcz", "-q", "--lossless"], capsys)
    code, out, err = _cli(run_main, [tmp_path / "m.dcz", "--compare", tmp_path / "other.onnx"], capsys)
    assert code == 1 and "shapes differ" in out + err


def test_compare_with_calibration_file_and_plain_onnx_bench(models, lossy, tmp_path, capsys):
    x = np.random.default_rng(2).standard_normal((5, 32)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    code, out, err = _cli(run_main, [lossy, "--compare", models / "mlp.onnx", "--calibration", tmp_path / "c.npz"], capsys)
    assert code == 0, err
    assert "on 5 samples" in out
    code, out, err = _cli(run_main, [models / "mlp.onnx", "--bench", "3"], capsys)
    assert code == 0, err
    assert "bench (cpu, plain ONNX): load" in out
    code, _, err = _cli(run_main, [lossy, "--max-error", "0.1"], capsys)
    assert code == 2 and "--compare" in err


def test_constant_node_weights_are_searched(tmp_path, capsys):
    """Weights held in main-graph Constant nodes (as Paddle2ONNX exports them) are candidates too."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((32, 64)) / 6).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")),
             helper.make_node("MatMul", ["x", "W"], ["y"])]
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    code, out, err = _cli(convert_main, [tmp_path / "c.onnx", "-o", tmp_path / "c.dcz", "--json", "--max-error", "0.05"],
                          capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert [r["action"] for r in rep["layers"]] == ["pruned+shared"]
    assert rep["fidelity"]["max_rel_l2"] <= 0.05 and rep["search"]["trials"] > 2


def test_search_runner_matches_the_plain_model(models):
    """The scan's session (weights fed as inputs) gives the original model's outputs."""
    from converters import budget, sources

    src = sources.load(models / "mlp.onnx")
    decl = inp.declared_inputs(src.graph)
    calib = inp.synthetic_inputs(decl, 4)
    r = budget.Runner(src.graph, src.weights, ["fc0.weight", "fc1.weight"])
    got = r.run(calib, decl, src.weights)["logits"]
    ref = run_all(models / "mlp.onnx", [inp.sample_feeds(calib, decl, i) for i in range(4)])["logits"]
    assert fidelity.compare({"y": ref}, {"y": got})["max_rel_l2"] < 1e-6


def test_model_that_synthetic_inputs_cannot_run(tmp_path, capsys):
    """A reshape only some sequence lengths fit: the search refuses (no safe choice without measuring) and says
    how to help; explicit settings go on with a warning that nothing was measured."""
    w = np.random.default_rng(0).standard_normal((48, 64)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x2"]), helper.make_node("MatMul", ["x2", "W"], ["y"])]
    g = helper.make_graph(nodes, "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([-1, 48], np.int64), "shape")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "r.onnx")
    out = tmp_path / "r.dcz"
    code, _, err = _cli(convert_main, [tmp_path / "r.onnx", "-o", out], capsys)
    assert code == 1 and not out.exists()
    one_line_error(err, "synthetic calibration inputs", "--calibration", "--dim")
    code, _, err = _cli(convert_main, [tmp_path / "r.onnx", "-o", out, "-q", "--bits", "8", "--sparsity", "0"], capsys)
    assert code == 0 and out.exists() and "warning: fidelity not measured" in err
    code, stdout, err = _cli(convert_main, [tmp_path / "r.onnx", "-o", out, "--dim", "L=96", "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["fidelity"]["calibration"]["inputs"]["x"]["shape"] == [16, 96]


@pytest.mark.parametrize("main", [convert_main, run_main])
@pytest.mark.parametrize("dim", ["sequence", "sequence=0", "=4", "sequence=x"])
def test_bad_dim(models, tmp_path, capsys, main, dim):
    extra = ["-o", tmp_path / "o.dcz"] if main is convert_main else []
    code, _, err = _cli(main, [models / "tok.onnx", *extra, "--dim", dim], capsys)
    assert code == 2
    one_line_error(err, "--dim")
    assert not (tmp_path / "o.dcz").exists()


def _audio_model(path):
    """y = mean(reflect-pad(x, 40)) @ W: runs only on frames longer than 40 samples."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
             helper.make_node("ReduceMean", ["p"], ["m"], axes=[1], keepdims=1),
             helper.make_node("MatMul", ["m", "W"], ["y"])]
    g = helper.make_graph(nodes, "audio", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "frame"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 600])],
                          [numpy_helper.from_array(np.array([0, 40, 0, 40], np.int64), "pads"),
                           numpy_helper.from_array(rng.standard_normal((1, 600)).astype(np.float32), "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_synthetic_sizes_are_probed_when_the_defaults_do_not_run(tmp_path, capsys):
    """A reflect Pad of 40 needs a frame longer than the 32 a symbolic sequence dim gets by default:
    dcconvert tries larger (then smaller) sizes, says which it used, and measures on those; so does dcrun."""
    path = _audio_model(tmp_path / "audio.onnx")
    code, stdout, err = _cli(convert_main, [path, "-o", tmp_path / "a.dcz", "--json"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["fidelity"]["measured"] and rep["fidelity"]["calibration"]["size_scale"] == 2
    assert any("symbolic sizes x2" in n for n in rep["source"]["notes"])
    assert rep["fidelity"]["calibration"]["inputs"]["x"]["shape"][1] == 64
    for model in (path, tmp_path / "a.dcz"):
        code, stdout, err = _cli(run_main, [model], capsys)
        assert code == 0, err
        assert "x2 the default sizes" in stdout and "input  x: float32 [1, 64] (synthetic)" in stdout
    code, _, err = _cli(run_main, [path, "--dim", "frame=8"], capsys)  # sizes the user fixed are not probed away
    assert code == 1 and "--dim NAME=VALUE" in err and err.startswith("error: ")


def test_dcinspect_shows_the_stored_fidelity_as_dcconvert_printed_it(models, tmp_path, capsys):
    """dcinspect prints the fidelity dcconvert measured and stored: the verdict and one line per output,
    the same lines dcconvert printed (not 40 lines of the JSON's fields); unset settings are left out."""
    from dcformat.cli import inspect_main

    out = tmp_path / "m.dcz"
    code, stdout, err = _cli(convert_main, [models / "mlp.onnx", "-o", out, "--bits", "5", "--sparsity", "0.5"], capsys)
    assert code == 0, err
    with dcformat.open(out) as r:
        fid = r.metadata["fidelity"]
    per_output = fidelity.lines(fid, "    ")
    assert all(line.strip() in stdout for line in per_output)  # what dcconvert printed
    code, text, _ = _cli(inspect_main, [out], capsys)
    assert code == 0
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("  fidelity (measured by dcconvert on "))
    assert f"relative L2 error {fid['max_rel_l2']:.3g} (worst output: {fid['worst_output']})" in lines[head]
    assert f"{fid['calibration']['samples']} synthetic calibration samples" in lines[head]
    assert lines[head + 1:head + 1 + len(per_output)] == per_output
    assert "metric_text" not in text and "cosine_mean" not in text  # the JSON's field names: --json shows them
    assert "threshold: -" not in text and "settings:" in text  # options left unset are not listed

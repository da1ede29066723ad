"""dcdecode and dcrun as a user types them: outputs, files, exit codes, one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import dcformat
from numpy_mlp import MLP
from converters.prune import magnitude_mask
from converters.quantize import quantize
from dcformat.cli import decode_main, run_main
from dcformat.graph import strip_weights
from clitools import cli, one_line_error

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
BIN = Path(sys.executable).parent
EXPECTS = "the model expects input: tensor(float) ['N', 64]"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A pruned + quantized MLP as .dcz, and the same weights as a plain .onnx."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    net = MLP([64, 200, 100, 10], seed=1)
    net.b = [(rng.standard_normal(b.shape) * 0.1).astype(np.float32) for b in net.b]
    records = []
    for i, (sparsity, bits) in enumerate([(0.9, 5), (0.85, 5), (0.5, 8)]):
        w = net.W[i] * magnitude_mask(net.W[i], sparsity)
        cb, idx = quantize(w, bits)
        net.W[i] = cb.astype(np.float32)[idx]
        records.append(dcformat.encode_codebook(f"fc{i + 1}.weight", cb, idx))
        records.append(dcformat.encode_raw(f"fc{i + 1}.bias", net.b[i]))
    model = net.to_onnx()
    onnx.save(model, d / "model.onnx")
    graph, _ = strip_weights(model)
    dcformat.write(d / "model.dcz", records, graph=graph)
    data = bytearray((d / "model.dcz").read_bytes())
    with dcformat.open(d / "model.dcz") as r:
        sec = r._tensor_sections["fc2.weight"]
    data[sec.offset + sec.length // 2] ^= 0x01
    (d / "damaged.dcz").write_bytes(bytes(data))
    return d


def reference(files, x):
    return ort.InferenceSession(str(files / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


# ------------------------------------------------------------------------------------------ dcrun
def test_bench_with_random_inputs(files, capsys):
    code, out, err = cli(run_main, [files / "model.dcz", "--bench", 5], capsys)
    assert code == 0 and err == ""
    assert "input  input: float32 [1, 64] (synthetic)" in out
    assert "output logits: float32 [1, 10]" in out
    assert "bench (cpu): load " in out and "5 runs p50 " in out and " p99 " in out


def test_batch_sets_dynamic_dims(files, capsys):
    code, out, _ = cli(run_main, [files / "model.dcz", "--batch", 3, "--compact"], capsys)
    assert code == 0
    assert "input  input: float32 [3, 64] (synthetic)" in out
    assert "output logits: float32 [3, 10]" in out


def test_input_file_and_output_dir(files, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = cli(run_main, [files / "model.dcz", "--input", f"input={tmp_path / 'x.npy'}",
                                  "--output-dir", tmp_path / "out"], capsys)
    assert code == 0
    assert "input  input: float32 [5, 64] (given)" in out
    y = np.load(tmp_path / "out" / "logits.npy")
    sess = dcformat.InferenceSession(files / "model.dcz")
    assert np.array_equal(y, sess.run(None, {"input": x})[0])
    assert np.array_equal(y, reference(files, x))
    assert os.listdir(tmp_path / "out") == ["logits.npy"]


def test_compare_with_the_exact_onnx(files, capsys):
    code, out, _ = cli(run_main, [files / "model.dcz", "--batch", 16, "--compare", files / "model.onnx"], capsys)
    assert code == 0
    assert "compare logits: rel. L2 error 0, cosine mean 1.000000 min 1.000000, max abs diff 0, top-1 agreement 100.0% of 16" in out


def test_compare_compact(files, capsys):
    code, out, _ = cli(run_main, [files / "model.dcz", "--compact", "--batch", 8, "--compare", files / "model.onnx"],
                       capsys)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("compare logits: rel. L2 error "))
    assert float(line.split("max abs diff ")[1].split(",")[0]) < 1e-4


@pytest.mark.parametrize("arr, needle", [
    (np.zeros((2, 63), np.float32), "input 'input' has shape [2, 63]"),
    (np.zeros((2, 64, 1), np.float32), "input 'input' has shape [2, 64, 1]"),
    (np.zeros((2, 64), np.float64), "input 'input' is float64"),
    (np.zeros((2, 64), np.int64), "input 'input' is int64"),
])
def test_wrong_input_shape_or_dtype(files, tmp_path, capsys, arr, needle):
    np.save(tmp_path / "a.npy", arr)
    code, out, err = cli(run_main, [files / "model.dcz", "--input", f"input={tmp_path / 'a.npy'}"], capsys)
    assert code == 1
    one_line_error(err, needle, EXPECTS)


def test_wrong_input_name(files, tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((2, 64), np.float32))
    code, _, err = cli(run_main, [files / "model.dcz", "--input", f"image={tmp_path / 'a.npy'}"], capsys)
    assert code == 1
    one_line_error(err, "unknown input 'image'", EXPECTS)


@pytest.mark.parametrize("argv, needle", [
    (["--bogus"], "--bogus"),
    (["--batch", "0"], "--batch"),
    (["--bench", "0"], "--bench"),
    (["--bench", "many"], "--bench"),
    (["--provider", "tpu"], "--provider"),
    (["--input", "noequals"], "NAME=file.npy"),
    (["--input", "input=/no/such/file.npy"], "cannot read"),
    (["--input", "input=a.npy", "--input", "input=b.npy"], "given twice"),
])
def test_bad_flags_exit_2(files, capsys, argv, needle):
    code, _, err = cli(run_main, [files / "model.dcz", *argv], capsys)
    assert code == 2
    one_line_error(err, needle)


def test_input_that_is_not_npy_and_missing_compare(files, tmp_path, capsys):
    (tmp_path / "x.txt").write_text("1 2 3\n")
    code, _, err = cli(run_main, [files / "model.dcz", "--input", f"input={tmp_path / 'x.txt'}"], capsys)
    assert code == 2
    one_line_error(err, "not a .npy file")
    code, out, err = cli(run_main, [files / "model.dcz", "--compare", tmp_path / "missing.onnx"], capsys)
    assert code == 2 and out == ""  # refused before the model runs
    one_line_error(err, "missing.onnx")


def test_npz_input_is_refused(files, tmp_path, capsys):
    np.savez(tmp_path / "a.npz", input=np.zeros((1, 64), np.float32))
    code, _, err = cli(run_main, [files / "model.dcz", "--input", f"input={tmp_path / 'a.npz'}"], capsys)
    assert code == 2
    one_line_error(err, ".npz")


def test_missing_and_damaged_model(files, capsys):
    code, _, err = cli(run_main, [files / "nothere.dcz"], capsys)
    assert code == 1
    one_line_error(err, "nothere.dcz")
    code, out, err = cli(run_main, [files / "damaged.dcz", "--bench", 3], capsys)
    assert code == 1 and out == ""
    one_line_error(err, "checksum", "fc2.weight")
    code, _, err = cli(run_main, [files / "damaged.dcz", "--compact"], capsys)
    assert code == 1
    one_line_error(err, "checksum")


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime here has CUDAExecutionProvider (tests/test_gpu.py covers it)")
def test_cuda_without_onnxruntime_gpu(files, capsys):
    code, out, err = cli(run_main, [files / "model.dcz", "--provider", "cuda"], capsys)
    assert code == 1 and out == ""
    one_line_error(err, "onnxruntime-gpu", "CUDAExecutionProvider")


def test_model_that_fails_when_run(tmp_path, capsys):
    """A dynamic dimension the model cannot take (7 features: no synthetic size tried is 7): ORT's run
    error becomes one line, exit 1, saying how to give the inputs."""
    net = MLP([7, 4], seed=0)
    model = net.to_onnx()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "D"
    graph, arrays = strip_weights(model)
    dcformat.write(tmp_path / "d.dcz", [dcformat.encode(k, v) for k, v in arrays.items()], graph=graph)
    code, out, err = cli(run_main, [tmp_path / "d.dcz"], capsys)
    assert code == 1
    one_line_error(err, "cannot run the model", "--dim NAME=VALUE")
    code, out, err = cli(run_main, [tmp_path / "d.dcz", "--dim", "D=7"], capsys)
    assert code == 0 and "[1, 7] (synthetic)" in out


def test_compare_with_a_different_model(files, tmp_path, capsys):
    other = MLP([32, 10]).to_onnx(input_name="pixels")
    onnx.save(other, tmp_path / "other.onnx")
    code, _, err = cli(run_main, [files / "model.dcz", "--compare", tmp_path / "other.onnx"], capsys)
    assert code == 1
    one_line_error(err, "pixels")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    code, _, err = cli(run_main, [files / "model.dcz", "--compare", tmp_path / "junk.onnx"], capsys)
    assert code == 1
    one_line_error(err, "cannot load")


# ------------------------------------------------------------------------------------------ dcdecode
def test_decode_to_onnx(files, tmp_path, capsys):
    code, out, err = cli(decode_main, [files / "model.dcz", "-o", tmp_path / "m.onnx"], capsys)
    assert code == 0 and err == ""
    assert "m.onnx" in out
    assert os.listdir(tmp_path) == ["m.onnx"]
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(got, reference(files, x))


def test_decode_compact(files, tmp_path, capsys):
    code, _, _ = cli(decode_main, [files / "model.dcz", "-o", tmp_path / "c.onnx", "--compact"], capsys)
    assert code == 0
    m = onnx.load(str(tmp_path / "c.onnx"))
    assert [n.op_type for n in m.graph.node].count("Gather") == 2  # fc3 (1,000 weights) stays dense
    assert sum(t.data_type == TensorProto.UINT8 for t in m.graph.initializer) == 2
    assert (tmp_path / "c.onnx").stat().st_size < (files / "model.onnx").stat().st_size / 3
    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, reference(files, x), rtol=1e-5, atol=1e-5)


def test_decode_external_data(files, tmp_path, capsys):
    code, out, _ = cli(decode_main, [files / "model.dcz", "-o", tmp_path / "e.onnx", "--external-data"], capsys)
    assert code == 0
    names = sorted(os.listdir(tmp_path))  # the weights file is named by its digest: e.onnx.<16 hex>.data
    assert len(names) == 2 and names[0] == "e.onnx" and re.fullmatch(r"e\.onnx\.[0-9a-f]{16}\.data", names[1])
    assert f"with weights in {names[1]}" in out
    m = onnx.load(str(tmp_path / "e.onnx"), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {names[1]}
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(got, reference(files, x))


def test_decode_needs_an_output(files, capsys):
    code, _, err = cli(decode_main, [files / "model.dcz"], capsys)
    assert code == 2
    one_line_error(err, "-o", "--state-dict")
    code, _, err = cli(decode_main, [files / "model.dcz", "--compact"], capsys)
    assert code == 2


def test_decode_failure_leaves_no_file(files, tmp_path, capsys):
    code, out, err = cli(decode_main, [files / "damaged.dcz", "-o", tmp_path / "m.onnx"], capsys)
    assert code == 1
    one_line_error(err, "checksum")
    assert os.listdir(tmp_path) == []
    (tmp_path / "keep.onnx").write_bytes(b"previous")
    code, _, _ = cli(decode_main, [files / "damaged.dcz", "-o", tmp_path / "keep.onnx", "--external-data"], capsys)
    assert code == 1
    assert (tmp_path / "keep.onnx").read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["keep.onnx"]
    code, _, err = cli(decode_main, [files / "model.dcz", "-o", tmp_path / "no" / "dir" / "m.onnx"], capsys)
    assert code == 1
    one_line_error(err)


def test_decode_never_overwrites_its_input(files, tmp_path, capsys):
    """-o, its .data file and --state-dict must each name a file other than the .dcz (and each other)."""
    dcz, data = tmp_path / "k.dcz", tmp_path / "k.data"  # k.data: the weights file of -o k (--external-data)
    for src in (dcz, data):
        src.write_bytes((files / "model.dcz").read_bytes())
    for src, argv in ((dcz, ["-o", dcz]), (dcz, ["--state-dict", dcz]), (data, ["-o", tmp_path / "k", "--external-data"]),
                      (dcz, ["-o", tmp_path / "m.onnx", "--state-dict", tmp_path / "m.onnx"])):
        code, _, err = cli(decode_main, [src, *argv], capsys)
        assert code == 2, argv
        one_line_error(err, "would overwrite")
        assert src.read_bytes() == (files / "model.dcz").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["k.data", "k.dcz"]


def test_decode_into_a_missing_directory_names_it(files, tmp_path, capsys):
    for flag in ("-o", "--state-dict"):
        code, _, err = cli(decode_main, [files / "model.dcz", flag, tmp_path / "nodir" / "x"], capsys)
        assert code == 1
        one_line_error(err, "cannot write", f"directory {tmp_path / 'nodir'} does not exist")
        assert ".tmp" not in err


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_seed_out_of_range_is_a_usage_error(files, capsys, seed):
    code, _, err = cli(run_main, [files / "model.dcz", "--seed", seed], capsys)
    assert code == 2
    one_line_error(err, "--seed")


def test_random_scalar_inputs(tmp_path, capsys):
    """Inputs of shape [] of every kind dcrun makes at random (a bool scalar once failed in ONNX Runtime)."""
    from onnx import helper

    ins = [helper.make_tensor_value_info(n, t, []) for n, t in (("b", TensorProto.BOOL), ("f", TensorProto.FLOAT),
                                                                 ("i", TensorProto.INT64))]
    nodes = [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), helper.make_node("Cast", ["i"], ["if"], to=TensorProto.FLOAT),
             helper.make_node("Sum", ["bf", "f", "if", "W"], ["y"])]
    w = helper.make_tensor("W", TensorProto.FLOAT, [], [1.5])
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [w])
    graph, arrays = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    dcformat.write(tmp_path / "s.dcz", [dcformat.encode(k, v) for k, v in arrays.items()], graph=graph)
    code, out, err = cli(run_main, [tmp_path / "s.dcz", "--output-dir", tmp_path / "out"], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "out" / "y.npy").shape == ()


def test_dcrun_parses_the_graph_once(tmp_path, capsys, monkeypatch):
    """dcrun reads a .dcz's graph once: the session and the synthetic inputs come from the same parse, the
    inputs from the graph as stored. In compact mode the session's graph makes the embedding table by a
    Gather, yet the token ids stay below the table's 4 rows (ids up to 9 would be out of range)."""
    from onnx import helper

    from dcformat.reader import DczReader

    table = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)  # 1,024 elements: compacted
    cb, idx = quantize(table, 4)
    g = helper.make_graph([helper.make_node("Gather", ["E", "ids"], ["y"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 256])],
                          [onnx.numpy_helper.from_array(cb.astype(np.float32)[idx], "E")])
    graph, _ = strip_weights(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    dcformat.write(tmp_path / "e.dcz", [dcformat.encode_codebook("E", cb, idx)], graph=graph)
    parses = []
    refs = DczReader._graph_refs
    monkeypatch.setattr(DczReader, "_graph_refs", lambda self, *a, **k: parses.append(1) or refs(self, *a, **k))
    code, out, err = cli(run_main, [tmp_path / "e.dcz", "--compact"], capsys)
    assert code == 0, err
    assert "compact: 1 codebook weight(s) held as uint8 indices" in out
    assert "input  ids: int64 [1, " in out and "output y: float32 [1, " in out
    assert len(parses) == 1


# ------------------------------------------------------------------------------------------ the installed commands
def test_console_scripts(files, tmp_path):
    if not (BIN / "dcrun").exists():
        pytest.skip(f"console scripts not installed next to {sys.executable}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([BIN / "dcrun", files / "model.dcz", "--bench", "5"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bench (cpu)" in r.stdout
    r = subprocess.run([BIN / "dcrun", files / "damaged.dcz"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stdout == ""
    one_line_error(r.stderr, "checksum")
    r = subprocess.run([BIN / "dcdecode", files / "model.dcz"], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    one_line_error(r.stderr)


def test_decode_weights_only_file(tmp_path, capsys):
    dcformat.write(tmp_path / "w.dcz", [dcformat.encode("a", np.arange(6, dtype=np.float32))])
    code, _, err = cli(decode_main, [tmp_path / "w.dcz", "-o", tmp_path / "w.onnx"], capsys)
    assert code == 1
    one_line_error(err, "weights-only", "--state-dict")
    assert not (tmp_path / "w.onnx").exists()
    code, out, _ = cli(decode_main, [tmp_path / "w.dcz", "--state-dict", tmp_path / "w.safetensors"], capsys)
    assert code == 0 and (tmp_path / "w.safetensors").exists()
    code, _, err = cli(run_main, [tmp_path / "w.dcz"], capsys)
    assert code == 1
    one_line_error(err, "weights-only")

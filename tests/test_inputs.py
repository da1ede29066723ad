"""--input specs (dcconvert and dcrun share one parser, dcformat.inputs.parse_input) and the
synthetic-size probe on a model built like Silero VAD (issue 19): an audio input [batch, samples]
that must be longer than a reflect Pad, a recurrent state [2, batch, hidden] whose unnamed middle
dim must equal the audio's batch, and an int64 sample-rate scalar."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from clitools import cli, one_line_error
from converters.cli import main as convert_main
from dcformat import inputs as inp
from dcformat.cli import run_main

# ------------------------------------------------------------------------------------------ the parser


@pytest.mark.parametrize("text, want", [
    ("input_ids:1x128:int64", dict(name="input_ids", shape=(1, 128), dtype=np.int64)),
    ("x:1x3x224x224", dict(name="x", shape=(1, 3, 224, 224), dtype=None)),
    ("x:1,3,8", dict(name="x", shape=(1, 3, 8))),
    ("ids:1xsequence=128:INT64", dict(shape=(1, 128), dim_names={1: "sequence"}, dtype=np.int64)),
    ("m:1xmax_seq=8:tensor(int32)", dict(shape=(1, 8), dim_names={1: "max_seq"}, dtype=np.int32)),
    ("t:2x3:torch.long", dict(dtype=np.int64)),
    ("h:2x3:FLOAT16", dict(dtype=np.float16)),
    ("f:2:float", dict(dtype=np.float32)),  # float32 as in ONNX and PyTorch, not numpy's float64
    ("s::float64", dict(shape=(), dtype=np.float64)),
    ("sr=16000", dict(name="sr", value=16000, value_type=None)),
    ("sr:int=16000", dict(value=16000, value_type="int")),
    ("scale:float=1", dict(value=1.0, value_type="float")),
    ("gain=0.5", dict(value=0.5)),
    ("flag:bool=true", dict(value=True, value_type="bool")),
    ("flag=False", dict(value=False)),
    ("sr:int64=8000", dict(value=8000, value_type="int64")),
    ("x=data/a.npy", dict(name="x", path="data/a.npy")),
    ("examples.npz", dict(name=None, path="examples.npz")),
])
def test_parse_input(text, want):
    spec = inp.parse_input(text)
    for k, v in want.items():
        got = getattr(spec, k)
        if k == "dtype" and v is not None:
            assert got == np.dtype(v), (text, got)
        else:
            assert got == v and type(got) is type(v), (text, k, got)


@pytest.mark.parametrize("text, needle", [
    ("noequals", "NAME:SHAPE[:DTYPE]"),
    ("x:0x3", "not a shape"),
    ("x:1xx", "not a shape"),
    ("x:1x3:complex7", "unknown dtype"),
    ("sr:int=abc", "not an integer"),
    ("flag:bool=maybe", "not a bool"),
    ("=3", "NAME"),
    (":1x2", "NAME"),
    ("x=", "NAME"),
    ("x:99999x99999x99999", "elements"),
])
def test_parse_input_errors(text, needle):
    with pytest.raises(inp.InputError) as e:
        inp.parse_input(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_name_given_twice():
    with pytest.raises(inp.InputError, match="given twice"):
        inp.parse_inputs(["x:1x2", "x=3"])


def test_example_arrays_follow_the_synthetic_builder():
    """Shape-only specs get the builder's values: ids below the table, masks ones; constants fill the
    declared shape; dtypes from the spec or the declared input."""
    ids = inp.example_array(inp.parse_input("input_ids:2x40:int64"), None, table_rows=7)
    assert ids.dtype == np.int64 and ids.shape == (2, 40) and ids.min() >= 0 and ids.max() < 7 and ids.max() > 0
    mask = inp.example_array(inp.parse_input("attention_mask:2x40:int64"), None)
    assert (mask == 1).all()
    d = inp.Declared("sr", np.int64, [], None, "tensor(int64)")
    sr = inp.example_array(inp.parse_input("sr=8000"), d)
    assert sr.shape == () and sr.dtype == np.int64 and sr == 8000
    x = inp.example_array(inp.parse_input("x:3x5"), inp.Declared("x", np.float16, ["N", 5]))
    assert x.dtype == np.float16 and x.shape == (3, 5)
    with pytest.raises(inp.InputError, match="not an integer"):
        inp.example_array(inp.parse_input("sr=0.5"), d)
    a = inp.example_array(inp.parse_input("x:4x6"), None, seed=3)
    assert np.array_equal(a, inp.example_array(inp.parse_input("x:4x6"), None, seed=3))  # deterministic


# --------------------------------------------------------------------------- a Silero-like model


PAD = 128  # reflect padding: the audio must be longer than this (the default synthetic 16 samples are not)


def vad_model(path, hidden=8, seed=0):
    """input [batch, samples] -> reflect Pad(128) -> mean -> MatMul -> h [batch, hidden];
    stateN = Concat(h[None], state) along axis 0 (state [2, batch, hidden]: its unnamed batch must be
    the audio's); output = h * sr / 16000."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((1, hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["input", "pads"], ["p"], mode="reflect"),
        helper.make_node("ReduceMean", ["p"], ["m"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["m", "W"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "zero"], ["h3"]),
        helper.make_node("Concat", ["h3", "state"], ["stateN"], axis=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["srf", "rate"], ["k"]),
        helper.make_node("Mul", ["h", "k"], ["output"]),
    ]
    g = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, hidden]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, hidden]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [None, None, None])],
        [numpy_helper.from_array(np.array([0, PAD, 0, PAD], np.int64), "pads"),
         numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array(16000, np.float32), "rate")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    return vad_model(tmp_path_factory.mktemp("vad") / "vad.onnx")


def test_state_dims_tie_to_the_batch():
    decl = [inp.Declared("input", np.float32, [None, None]), inp.Declared("state", np.float32, [2, None, 8]),
            inp.Declared("sr", np.int64, [])]
    plain = inp.sample_shapes(decl)
    assert plain["state"][0] == [2, inp.OTHER_DIM, 8] and plain["input"][0] == [1, inp.OTHER_DIM]
    tied = inp.sample_shapes(decl, tie=True)
    assert tied["state"][0] == [2, 1, 8] and tied["input"][0] == [1, inp.OTHER_DIM]  # the audio length is no state
    assert inp.sample_shapes(decl, tie=3)["state"][0] == [2, 3, 8]
    cands = list(inp.size_candidates(decl))
    assert cands[:2] == [(1.0, False), (1.0, True)] and (16, True) in cands
    # nothing to tie: the candidates are the scales alone
    assert all(not t for _, t in inp.size_candidates([inp.Declared("x", np.float32, ["N", None])]))
    assert inp.sample_shapes([inp.Declared("img", np.float32, ["N", 3, "h", "w"])], scale=32)["img"][0] == \
        [1, 3, 224 * inp.MAX_IMAGE_SCALE, 224 * inp.MAX_IMAGE_SCALE]  # image sides stop at x8


def test_the_defaults_do_not_run_the_vad(vad):
    """The model is as hard as Silero: the default synthetic inputs fail, in two ways."""
    sess = ort.InferenceSession(str(vad), providers=["CPUExecutionProvider"])
    decl = inp.declared_inputs(onnx.load(vad))
    for tie, scale in ((False, 16), (True, 1), (True, 8)):
        feeds = inp.sample_feeds(inp.synthetic_inputs(decl, 1, 0, None, scale, tie), decl, 0)
        with pytest.raises(Exception):
            sess.run(None, feeds)
    scale, tie, first = inp.probe_sizes(lambda f: sess.run(None, f), decl)
    assert (scale, tie) == (16, True) and first is not None


def test_dcrun_finds_sizes_for_the_vad(vad, capsys):
    code, out, err = cli(run_main, [vad], capsys)
    assert code == 0, err
    assert "x16 the default sizes" in out and "tied to the batch" in out
    assert "input  input: float32 [1, 256] (synthetic)" in out and "input  state: float32 [2, 1, 8] (synthetic)" in out
    assert "input  sr: int64 [] (synthetic)" in out and err == ""
    code, out, err = cli(run_main, [vad, "--batch", "3"], capsys)
    assert code == 0 and "input  state: float32 [2, 3, 8] (synthetic)" in out, err
    # given inputs: a constant sr, the audio's shape; the state follows the given batch
    code, out, err = cli(run_main, [vad, "--input", "sr=8000", "--input", "input:2x300", "--output-dir", vad.parent / "o"],
                         capsys)
    assert code == 0, err
    assert "input  sr: int64 [] (given)" in out and "input  input: float32 [2, 300] (given)" in out
    assert "input  state: float32 [2, 2, 8] (synthetic)" in out
    y = np.load(vad.parent / "o" / "output.npy")
    assert y.shape == (2, 8)


def test_dcconvert_finds_sizes_for_the_vad(vad, tmp_path, capsys):
    code, out, err = cli(convert_main, [vad, "-o", tmp_path / "v.dcz", "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    cal = rep["fidelity"]["calibration"]
    assert rep["fidelity"]["measured"] and cal["size_scale"] == 16 and cal["tied_to_batch"]
    assert cal["inputs"]["input"]["shape"][1] == 256 and cal["inputs"]["state"]["shape"][1:] == [2, 1, 8]
    assert any("tied to the batch" in n and "x16" in n for n in rep["source"]["notes"])
    # the gate compares on the same probed sizes
    code, out, err = cli(run_main, [tmp_path / "v.dcz", "--compare", vad, "--max-error", "0.05"], capsys)
    assert code == 0, err
    assert "compare with" in out and "on 16 samples (synthetic inputs)" in out and "within tolerance" in out


def test_dcconvert_input_fixes_onnx_calibration(vad, tmp_path, capsys, monkeypatch):
    """For an ONNX model, --input NAME=VALUE fixes that input in every synthetic sample and NAME:SHAPE
    sizes the others' dims; a name the model lacks is one line."""
    from converters import calibrate

    seen = {}
    real = calibrate.run_model

    def spy(graph, weights, calib, decl):
        seen.update({k: v.copy() for k, v in calib.items()})
        return real(graph, weights, calib, decl)

    monkeypatch.setattr(calibrate, "run_model", spy)
    code, out, err = cli(convert_main, [vad, "-o", tmp_path / "v.dcz", "--input", "sr=8000", "--json"], capsys)
    assert code == 0, err
    assert seen["sr"].shape == (16,) and (seen["sr"] == 8000).all()
    code, _, err = cli(convert_main, [vad, "-o", tmp_path / "w.dcz", "--input", "rate=3"], capsys)
    assert code == 1 and not (tmp_path / "w.dcz").exists()
    one_line_error(err, "no input 'rate'")


def test_calibration_hints():
    decl = [inp.Declared("ids", np.int64, ["batch", "sequence"], 30, "tensor(int64)"),
            inp.Declared("sr", np.int64, [], None, "tensor(int64)")]
    fixed, dims = inp.calibration_hints(inp.parse_inputs(["ids:1x77", "sr=8000"]), decl)
    assert dims == {"sequence": 77} and fixed == {"sr": 8000}
    for bad, needle in ((["ids:1x2x3"], "shape"), (["ids:1x7:float32"], "not float32"), (["ids=a.npy"], "--calibration")):
        with pytest.raises(inp.InputError, match=needle):
            inp.calibration_hints(inp.parse_inputs(bad), decl)


# ---------------------------------------------------------------------------------- dcrun --input forms


def ids_model(path, rows=3):
    """ids [batch, sequence] int64 -> Gather from a table of ``rows`` rows -> mean: ids >= rows fail in ORT."""
    table = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]),
                           helper.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0)], "ids",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                          [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_dcrun_input_shape_spec_draws_ids_below_the_table(tmp_path, capsys):
    m = ids_model(tmp_path / "ids.onnx")
    code, out, err = cli(run_main, [m, "--input", "ids:2x50"], capsys)
    assert code == 0, err  # ids of 0..9 would make ORT's Gather fail on a 3-row table
    assert "input  ids: int64 [2, 50] (given)" in out
    np.savez(tmp_path / "ex.npz", ids=np.array([[0, 2, 1]], np.int64))
    code, out, err = cli(run_main, [m, "--input", tmp_path / "ex.npz"], capsys)
    assert code == 0 and "input  ids: int64 [1, 3] (given)" in out, err
    code, _, err = cli(run_main, [m, "--input", "ids:2x5:float32"], capsys)
    assert code == 1
    one_line_error(err, "'ids' is float32")
    code, _, err = cli(run_main, [m, "--input", tmp_path / "ex.npz", "--input", "ids:1x2"], capsys)
    assert code == 2
    one_line_error(err, "given twice")
    np.savez(tmp_path / "obj.npz", ids=np.array([object()], dtype=object))
    code, _, err = cli(run_main, [m, "--input", tmp_path / "obj.npz"], capsys)
    assert code == 2
    one_line_error(err, "--input")

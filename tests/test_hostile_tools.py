"""Hostile inputs to the tools (issue 14): each a one-line error, never a traceback or a partial file.

Converter inputs that used to raise (ONNX short raw_data, huge dims, data_type 999; safetensors
F8_E4M3), bool bytes other than 0/1, dcrun on an input declared [2^62, 2^62], dcinspect --plot on
mathtext names and +-1.7e308 values, and full disks (simulated: the write fails with ENOSPC) for
--plot, dcrun --output-dir and dcdecode; dcdecode --external-data's pair stays consistent.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from converters.cli import main as dcconvert
from dcformat.cli import decode_main, inspect_main, run_main
from clitools import cli, one_line_error


def _model(init, inputs=(), node=None):
    node = node or helper.make_node("Identity", ["w"], ["y"])
    g = helper.make_graph([node], "g", list(inputs), [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [init] if init is not None else [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _tensor(edit):
    t = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    edit(t)
    return t


def _short(t):
    t.raw_data = t.raw_data[:10]


def _huge(t):
    del t.dims[:]
    t.dims.extend([2**40, 2**40])


def _dt999(t):
    t.data_type = 999


def _complex_mismatch(t):
    t.data_type = TensorProto.COMPLEX64  # 64 bytes: 8 complex64 values for dims 4x4
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * 7)


@pytest.mark.parametrize("edit, needle", [(_short, "10 bytes of raw_data for 16 elements"), (_huge, "bad dims"),
                                          (_dt999, "unknown data_type 999"), (_complex_mismatch, "does not fit")])
def test_hostile_onnx_initializers(tmp_path, capsys, edit, needle):
    src = tmp_path / "bad.onnx"
    onnx.save(_model(_tensor(edit)), src)
    code, _, err = cli(dcconvert, [src, "-o", tmp_path / "out.dcz"], capsys)
    assert code == 1
    one_line_error(err, needle)
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]


def _safetensors(path, dtype, data: bytes, shape):
    h = json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(data)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_safetensors_f8_is_a_one_line_error(tmp_path, capsys):
    _safetensors(tmp_path / "f8.safetensors", "F8_E4M3", bytes(4), [4])
    code, _, err = cli(dcconvert, [tmp_path / "f8.safetensors", "-o", tmp_path / "out.dcz"], capsys)
    assert code == 1
    one_line_error(err, "F8_E4M3")
    assert not (tmp_path / "out.dcz").exists()


def test_bool_bytes_are_normalised_by_the_converter(tmp_path, capsys):
    """safetensors bool bytes 2 and 255 read as True (numpy's truth), stored as 1: the .dcz decodes."""
    _safetensors(tmp_path / "b.safetensors", "BOOL", bytes([0, 1, 2, 255]), [4])
    code, _, err = cli(dcconvert, [tmp_path / "b.safetensors", "-o", tmp_path / "b.dcz", "-q"], capsys)
    assert code == 0, err
    with dcformat.open(tmp_path / "b.dcz") as r:
        r.verify()
        got = r["w"]
    assert got.tolist() == [False, True, True, True] and got.view(np.uint8).max() == 1


@pytest.fixture
def small_dcz(tmp_path):
    path = tmp_path / "m.dcz"
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    onnx.save(_model(numpy_helper.from_array(w, "w"), [x], node), tmp_path / "m.onnx")
    assert dcconvert_ok(tmp_path / "m.onnx", path)
    return path


def dcconvert_ok(src, out) -> bool:
    with pytest.raises(SystemExit) as e:
        dcconvert([str(src), "-o", str(out), "-q", "--lossless"])
    return e.value.code == 0


def test_dcrun_on_a_huge_declared_input(tmp_path, capsys):
    path = tmp_path / "huge.dcz"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**62, 2**62])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    dcformat.write(path, [], graph=helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    code, _, err = cli(run_main, [path], capsys)
    assert code == 1
    one_line_error(err, "--input", "more than a synthetic input may take")


def _enospc(monkeypatch):
    """The next atomic write fails as a full disk does (at fsync, after the data was written)."""
    import dcformat.atomic as atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)


def test_dcrun_output_dir_on_a_full_disk(small_dcz, tmp_path, capsys, monkeypatch):
    out = tmp_path / "outs"
    out.mkdir()
    _enospc(monkeypatch)
    code, _, err = cli(run_main, [small_dcz, "--output-dir", out], capsys)
    assert code == 1
    one_line_error(err, "y.npy", "No space left on device")
    assert os.listdir(out) == []  # no truncated .npy, no temporary
    monkeypatch.undo()
    code, _, err = cli(run_main, [small_dcz, "--output-dir", out], capsys)
    assert code == 0 and os.listdir(out) == ["y.npy"] and np.load(out / "y.npy").shape[1] == 4


@pytest.mark.parametrize("ext", [".png", ".svg", ".html"])
def test_plot_full_disk_leaves_nothing(small_dcz, tmp_path, capsys, monkeypatch, ext):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    out.mkdir()
    _enospc(monkeypatch)
    code, _, err = cli(inspect_main, [small_dcz, "--plot", out / f"p{ext}"], capsys)
    assert code == 1
    one_line_error(err, "No space left on device")
    assert os.listdir(out) == []


def test_plot_mathtext_names_and_huge_values(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    wide = np.zeros(2048)
    wide[:1000], wide[1000:2000] = 1.7e308, -1.7e308
    path = tmp_path / "p.dcz"
    dcformat.write(path, [dcformat.encode_raw("$\\frac{$", np.arange(2048, dtype=np.float32)),
                          dcformat.encode_raw("wide", wide)])
    for ext in (".png", ".svg"):
        code, _, err = cli(inspect_main, [path, "--plot", tmp_path / f"p{ext}"], capsys)
        assert code == 0, err
        assert (tmp_path / f"p{ext}").stat().st_size > 1000


def test_decode_external_data_pair_stays_consistent(small_dcz, tmp_path, capsys, monkeypatch):
    """A new weights file (named by its digest) referenced by the new .onnx; the old one removed after. A
    failure while writing the .onnx leaves the previous pair loadable."""
    import onnxruntime as ort

    out = tmp_path / "d" / "m.onnx"
    out.parent.mkdir()
    (out.parent / "m.onnx.data").write_bytes(b"from an older dcdecode")
    assert cli(decode_main, [small_dcz, "-o", out, "--external-data"], capsys)[0] == 0
    first = sorted(os.listdir(out.parent))
    assert len(first) == 2 and re.fullmatch(r"m\.onnx\.[0-9a-f]{16}\.data", first[1])  # the older one removed
    x = np.ones((2, 3), np.float32)
    want = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # another model to the same path, failing at the .onnx (the second atomic write)
    other = tmp_path / "o.dcz"
    w = np.full((3, 4), 2.0, np.float32)
    onnx.save(_model(numpy_helper.from_array(w, "w"), [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                     helper.make_node("MatMul", ["x", "w"], ["y"])), tmp_path / "o.onnx")
    assert dcconvert_ok(tmp_path / "o.onnx", other)
    import dcformat.atomic as atomic

    real, calls = atomic.os.fsync, []

    def fail_second(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fail_second)
    code, _, err = cli(decode_main, [other, "-o", out, "--external-data"], capsys)
    assert code == 1 and "No space left" in err
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(got, want)  # the old pair still loads and gives the old outputs
    monkeypatch.undo()
    assert cli(decode_main, [other, "-o", out, "--external-data"], capsys)[0] == 0
    names = sorted(os.listdir(out.parent))
    assert len(names) == 2 and first[1] not in names  # the new pair only: stale weights files removed
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(got, x @ w)


def test_decode_writes_nothing_when_the_model_cannot_be_rebuilt(tmp_path, capsys):
    """dcdecode -o x.onnx --state-dict y.safetensors on a weights-only file: refused before y is written."""
    path = tmp_path / "w.dcz"
    dcformat.write(path, [dcformat.encode_raw("w", np.zeros(3, np.float32))])
    code, _, err = cli(decode_main, [path, "-o", tmp_path / "x.onnx", "--state-dict", tmp_path / "y.safetensors"],
                       capsys)
    assert code == 1 and sorted(os.listdir(tmp_path)) == ["w.dcz"], err


def _graph_dcz(path, nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    dcformat.write(path, [], graph=helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    return path


def test_dcrun_stderr_holds_only_the_error_line(tmp_path):
    """No ORT log lines (ANSI-coloured) beside the error, no numpy RuntimeWarning beside the outputs:
    as a subprocess, to see the real file descriptor 2."""
    import subprocess
    import sys
    from pathlib import Path

    dcrun = Path(sys.executable).parent / "dcrun"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = numpy_helper.from_array(np.array([7, 5], np.int64), "shape")
    bad = _graph_dcz(tmp_path / "bad.dcz", [helper.make_node("Reshape", ["x", "shape"], ["y"])], [x], [y], [shape])
    big = numpy_helper.from_array(np.full((2, 3), 3e38, np.float32), "big")
    huge = _graph_dcz(tmp_path / "huge.dcz", [helper.make_node("Add", ["x", "big"], ["s"]),
                                              helper.make_node("Identity", ["s"], ["y"])], [x], [y], [big])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([str(dcrun), str(bad)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1
    one_line_error(p.stderr, "Reshape")
    assert "\x1b[" not in p.stderr
    p = subprocess.run([str(dcrun), str(huge)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "mean inf" in p.stdout or "mean 3" in p.stdout, p.stdout


def test_failing_report_leaves_no_dcz(tmp_path, capsys, monkeypatch):
    """dcconvert --report on a full disk: the report cannot be written, and the .dcz does not stay behind."""
    import dcformat.atomic as atomic

    src = tmp_path / "m.onnx"
    onnx.save(_model(numpy_helper.from_array(np.ones((3, 4), np.float32), "w")), src)
    real, calls = atomic.os.fsync, []

    def fail_second(fd):  # the .dcz, then the report
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fail_second)
    code, _, err = cli(dcconvert, [src, "-o", tmp_path / "m.dcz", "--report", tmp_path / "r.json", "-q"], capsys)
    assert code == 1
    one_line_error(err, "r.json", "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_decode_over_the_protobuf_limit_is_refused_cleanly(small_dcz, tmp_path, capsys, monkeypatch):
    """A graph too big for one protobuf even with external data (protobuf's 2 GB, here lowered): a one-line
    error before anything is written, not protobuf's EncodeError after the weights file."""
    from dcformat import runtime

    monkeypatch.setattr(runtime, "ONNX_PROTO_LIMIT", 64)
    out = tmp_path / "o"
    out.mkdir()
    for extra in ([], ["--external-data"]):
        code, _, err = cli(decode_main, [small_dcz, "-o", out / "m.onnx", *extra], capsys)
        assert code == 1
        one_line_error(err, "2 GB", "nothing written")
        assert os.listdir(out) == []

"""dcconvert on ONNX and safetensors inputs (no PyTorch): errors, pruning, weight sharing,
lossless storage, subgraphs, external data, determinism, metadata and reports.

Error paths run the installed console script as a subprocess (real stderr and exit codes);
the rest call the same entry point in-process, which is faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import dcformat
from converters import cli
from converters.cli import main
from converters.compress import choose_layout
from converters.quantize import quantize

DCCONVERT = Path(sys.executable).parent / "dcconvert"
FC = ("fc1.weight", "fc2.weight")  # compressed by default (>= --min-size elements, consumed by Gemm / MatMul)


# ---------------------------------------------------------------------------------------------- helpers


def run(*args, cwd=None, **kw) -> subprocess.CompletedProcess:
    """The installed dcconvert, as a user runs it (stdout and stderr are pipes)."""
    return subprocess.run([str(DCCONVERT), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=180, **kw)


def convert(*args, capsys=None) -> tuple[int, str]:
    """dcconvert in-process; returns (exit code, stdout)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr().out if capsys is not None else ""
    return e.value.code, out


def ok(*args, capsys=None) -> str:
    code, out = convert(*args, capsys=capsys)
    assert code == 0, out
    return out


def weights(path) -> dict[str, np.ndarray]:
    return dcformat.load_weights(path)


def init(rng, shape, zeros: float = 0.0) -> np.ndarray:
    a = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if zeros:
        a[rng.random(shape) < zeros] = 0
    return a


def build_net(path, seed: int = 0, zeros: dict | None = None, quantized: bool = False, external: bool = False) -> dict:
    """A small CNN as ONNX: conv1 (small) - conv2 + BatchNorm - pool - fc1 (Gemm, transB=1) - fc2 (MatMul + Add) -
    fc3 (Gemm, transB=0, small). Returns the initializers by name."""
    rng = np.random.default_rng(seed)
    zeros = zeros or {}
    w = {
        "conv1.weight": init(rng, (16, 3, 3, 3)), "conv1.bias": init(rng, (16,)),
        "conv2.weight": init(rng, (32, 16, 3, 3), zeros.get("conv2.weight", 0)), "conv2.bias": init(rng, (32,)),
        "bn.scale": 1 + init(rng, (32,)), "bn.B": init(rng, (32,)), "bn.mean": init(rng, (32,)),
        "bn.var": 1 + np.abs(init(rng, (32,))),
        "fc1.weight": init(rng, (256, 512), zeros.get("fc1.weight", 0)), "fc1.bias": init(rng, (256,)),
        "fc2.weight": init(rng, (256, 128), zeros.get("fc2.weight", 0)), "fc2.bias": init(rng, (128,)),
        "fc3.weight": init(rng, (128, 10)), "fc3.bias": init(rng, (10,)),
    }
    if quantized:  # as if quantized by another tool: 16 shared values, a third of them pruned
        levels = np.linspace(-0.2, 0.2, 16, dtype=np.float32)
        a = levels[rng.integers(0, 16, w["fc1.weight"].shape)]
        a[rng.random(a.shape) < 0.3] = 0
        w["fc1.weight"] = a
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn.scale", "bn.B", "bn.mean", "bn.var"], ["n2"]),
        helper.make_node("Relu", ["n2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "fc2.weight"], ["m2"]),
        helper.make_node("Add", ["m2", "fc2.bias"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "fc3.weight", "fc3.bias"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save_model(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(path).name + ".data", size_threshold=0)
    else:
        onnx.save(model, os.fspath(path))
    return w


def build_if_model(path, seed: int = 1) -> dict:
    """Weights in a Constant node (unnamed tensor), in an If branch's own initializer and in a
    Constant node inside the other branch."""
    rng = np.random.default_rng(seed)
    w = {"fc": init(rng, (64, 16)), "then": init(rng, (64, 32)), "else": init(rng, (64, 32))}
    const = helper.make_node("Constant", [], ["fc_w"], value=numpy_helper.from_array(w["fc"], ""))
    then_g = helper.make_graph([helper.make_node("MatMul", ["h", "then.weight"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)],
                               [numpy_helper.from_array(w["then"], "then.weight")])
    else_g = helper.make_graph([
        helper.make_node("Constant", [], ["else_w"], value=numpy_helper.from_array(w["else"], "")),
        helper.make_node("MatMul", ["h", "else_w"], ["y_else"]),
    ], "else", [], [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
    nodes = [const, helper.make_node("Gemm", ["x", "fc_w"], ["h0"], transB=1), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "ifnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                                               helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), os.fspath(path))
    return w


def distinct_nonzero(a: np.ndarray) -> int:
    return np.unique(a[a != 0]).size


def no_leftovers(d: Path, keep: set[str]) -> list[str]:
    """Files in d other than ``keep`` (partial outputs, temporary files)."""
    return sorted(p.name for p in d.iterdir() if p.name not in keep)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    w = build_net(d / "net.onnx")
    return d / "net.onnx", w


@pytest.fixture(scope="module")
def default_dcz(net, tmp_path_factory):
    """net.onnx with the default settings, and its JSON report (one subprocess run)."""
    src, _ = net
    out = tmp_path_factory.mktemp("default") / "net.dcz"
    p = run(src, "-o", out, "--json", "--report", out.with_suffix(".json"))
    assert p.returncode == 0, p.stderr
    return out, json.loads(p.stdout), p


# ---------------------------------------------------------------------------------------------- bad input


def _corrupt_inputs(d: Path, src: Path) -> dict[str, Path]:
    files = {}
    files["unknown"] = d / "random.bin"
    files["unknown"].write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    files["text"] = d / "notes.onnx"
    files["text"].write_text("not a model\n")
    files["truncated"] = d / "truncated.onnx"
    files["truncated"].write_bytes(src.read_bytes()[:5000])
    files["empty"] = d / "empty.onnx"
    files["empty"].write_bytes(b"")
    files["safetensors-bad"] = d / "bad.safetensors"
    files["safetensors-bad"].write_bytes((60).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [999], '
                                                                       b'"data_offsets": [0, 3996]}}   ')
    files["zip"] = d / "archive.pt"
    import zipfile

    with zipfile.ZipFile(files["zip"], "w") as z:
        z.writestr("readme.txt", "hello")
    files["damaged-zip"] = d / "damaged.pt"
    files["damaged-zip"].write_bytes(files["zip"].read_bytes()[:40])
    return files


BAD = [  # (id, argv after the model, model key or None for net.onnx, expected exit code, as a subprocess)
    ("unknown-format", [], "unknown", 1, True),
    ("text-as-onnx", [], "text", 1, False),
    ("truncated-onnx", [], "truncated", 1, True),
    ("empty-file", [], "empty", 1, False),
    ("bad-safetensors", [], "safetensors-bad", 1, False),
    ("zip-not-pytorch", [], "zip", 1, False),
    ("damaged-zip", [], "damaged-zip", 1, True),
    ("already-dcz", [], "dcz", 1, False),
    ("missing-file", [], "missing", 1, True),
    ("sparsity-1", ["--sparsity", "1"], None, 2, True),
    ("sparsity-negative", ["--sparsity", "-0.1"], None, 2, False),
    ("sparsity-pattern-1.5", ["--sparsity", "fc*=1.5"], None, 2, False),
    ("sparsity-not-a-number", ["--sparsity", "lots"], None, 2, False),
    ("bits-0", ["--bits", "0"], None, 2, False),
    ("bits-9", ["--bits", "9"], None, 2, True),
    ("bits-pattern-12", ["--bits", "fc1*=12"], None, 2, False),
    ("bits-fraction", ["--bits", "4.5"], None, 2, False),
    ("prune-neurons-1", ["--prune-neurons", "1"], None, 2, False),
    ("threshold-negative", ["--threshold", "-1"], None, 2, False),
    ("pattern-matches-nothing", ["--sparsity", "conv*=0.5,nothing*=0.9"], None, 2, True),
    ("bits-pattern-matches-nothing", ["--bits", "fc9.*=4"], None, 2, False),
    ("empty-pattern", ["--bits", "=4"], None, 2, False),
    ("lossless-and-bits", ["--lossless", "--bits", "4"], None, 2, False),
    ("bad-init", ["--init", "random"], None, 2, False),
    ("bad-input-shape", ["--input-shape", "0,3"], None, 2, False),
    ("input-shape-empty-dim", ["--input-shape", "1,,3"], None, 2, False),
    ("input-shape-huge", ["--input-shape", "1,3,99999999999,8"], None, 2, False),
    ("seed-negative", ["--seed", "-1"], None, 2, False),
    ("report-is-the-output", ["--report", "{d}/same.dcz", "-o", "{d}/same.dcz"], None, 2, False),
    ("out-dir-missing", ["-o", "{d}/missing/out.dcz"], None, 1, True),
    ("out-parent-is-a-file", ["-o", "{src}/out.dcz"], None, 1, False),
    ("out-is-a-directory", ["-o", "{d}"], None, 2, False),
    ("out-is-a-fifo", ["-o", "{fifo}"], None, 1, True),  # as /dev/null would be: never replaced by a file
    ("out-in-proc", ["-o", "/proc/dcconvert-test.dcz"], None, 1, True),
    ("out-overwrites-input", ["-o", "{src}"], None, 2, False),
    ("report-dir-missing", ["--report", "{d}/missing/r.json"], None, 1, False),
    ("report-is-a-fifo", ["--report", "{fifo}"], None, 1, False),
]


@pytest.fixture(scope="module")
def bad_inputs(net, tmp_path_factory):
    src, _ = net
    shared = tmp_path_factory.mktemp("bad-inputs")
    files = _corrupt_inputs(shared, src)
    files["dcz"] = shared / "already.dcz"
    dcformat.write(files["dcz"], [dcformat.encode("w", np.zeros(3, np.float32))])
    files["missing"] = shared / "missing.onnx"
    files["fifo"] = shared / "fifo"
    os.mkfifo(files["fifo"])
    return src, files


def _bad_argv(case, argv, key, d, src, files):
    model = files[key] if key else src
    argv = [a.format(d=d, src=model, fifo=files["fifo"]) for a in argv]
    if "-o" not in argv:
        argv = ["-o", d / "out.dcz", *argv]
    return [model, *argv]


@pytest.fixture(scope="module")
def bad_runs(bad_inputs, tmp_path_factory):
    """The BAD cases marked for a subprocess, run two at a time, each in its own directory."""
    src, files = bad_inputs
    base = tmp_path_factory.mktemp("bad")
    pending = []
    for case, argv, key, _, sub in BAD:
        if sub:
            d = base / case
            d.mkdir()
            pending.append((case, d, _bad_argv(case, argv, key, d, src, files)))
    results, running = {}, []
    while pending or running:
        while pending and len(running) < 2:
            case, d, argv = pending.pop(0)
            running.append((case, d, subprocess.Popen([str(DCCONVERT), *map(str, argv)], stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, text=True)))
        case, d, p = running.pop(0)
        out, err = p.communicate(timeout=180)
        results[case] = (p.returncode, out, err, d)
    return results


def _check_bad(rc, out, err, d, code):
    assert rc == code, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    assert no_leftovers(d, set()) == []  # no output, no temporary file


@pytest.mark.parametrize("case,argv,key,code,sub", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_error(bad_runs, bad_inputs, tmp_path, capsys, case, argv, key, code, sub):
    if sub:
        _check_bad(*bad_runs[case], code)
    else:
        src, files = bad_inputs
        rc, out = convert(*_bad_argv(case, argv, key, tmp_path, src, files))
        out, err = capsys.readouterr()
        _check_bad(rc, out, err, tmp_path, code)


def test_bad_input_messages(bad_runs, bad_inputs):
    msg = {case: r[2] for case, r in bad_runs.items()}
    assert "unknown format" in msg["unknown-format"]
    assert "not a readable ONNX model" in msg["truncated-onnx"]
    assert "damaged zip" in msg["damaged-zip"]
    assert "not in [0, 1)" in msg["sparsity-1"] and "--sparsity" in msg["sparsity-1"]
    assert "outside 1..8" in msg["bits-9"]
    assert "'nothing*' matches no tensor" in msg["pattern-matches-nothing"]
    assert "does not exist" in msg["out-dir-missing"]
    assert "not a regular file" in msg["out-is-a-fifo"]
    import stat

    assert stat.S_ISFIFO(os.stat(bad_inputs[1]["fifo"]).st_mode)  # still the FIFO, not replaced by a file


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory(net, tmp_path):
    src, _ = net
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        p = run(src, "-o", ro / "out.dcz")
        assert p.returncode == 1 and p.stderr.startswith("error: ") and len(p.stderr.splitlines()) == 1
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_failure_keeps_previous_output(net, tmp_path):
    """A conversion that fails leaves an existing output file as it was."""
    src, _ = net
    out = tmp_path / "out.dcz"
    out.write_bytes(b"previous")
    code, _ = convert(src, "-o", out, "--bits", "fc9*=3")
    assert code == 2 and out.read_bytes() == b"previous"
    assert no_leftovers(tmp_path, {"out.dcz"}) == []


# ---------------------------------------------------------------------------------------------- pruning and sharing


def test_explicit_settings_are_exact(net, tmp_path, capsys):
    """Explicit --sparsity/--bits are used as given, no search (the default searches: test_calibration.py)."""
    src, w = net
    out = tmp_path / "net.dcz"
    report = json.loads(ok(src, "-o", out, "--json", "--sparsity", "fc*=0.5,conv*=0.3", "--bits", "fc*=5,conv*=8",
                           "--graph-opt", "none", capsys=capsys))
    dec = weights(out)
    assert set(dec) == set(w)
    rows = {r["name"]: r for r in report["layers"]}
    for name in FC:
        assert rows[name]["action"] == "pruned+shared" and rows[name]["bits"] == 5
        assert np.count_nonzero(dec[name] == 0) / dec[name].size == pytest.approx(0.5, abs=1e-3)
        assert distinct_nonzero(dec[name]) <= 32
    assert rows["conv2.weight"]["action"] == "pruned+shared" and rows["conv2.weight"]["bits"] == 8
    assert np.count_nonzero(dec["conv2.weight"] == 0) / dec["conv2.weight"].size == pytest.approx(0.3, abs=1e-3)
    # biases, norm parameters and tensors under --min-size (conv1: 432 elements) are stored exactly
    for name in ("conv1.weight", "conv1.bias", "conv2.bias", "bn.scale", "bn.B", "bn.mean", "bn.var", "fc1.bias",
                 "fc2.bias", "fc3.bias"):
        assert rows[name]["action"] == "kept"
        assert np.array_equal(dec[name].view(np.uint32), w[name].view(np.uint32)), name
    # it still runs, and close to the original
    x = np.random.default_rng(5).standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = dcformat.InferenceSession(out).run(None, {"x": x})[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.9


def test_small_tensors_and_min_size(net, tmp_path):
    src, w = net
    out = tmp_path / "m.dcz"
    ok(src, "-o", out, "-q", "--min-size", "200000", "--graph-opt", "none")  # larger than every tensor: nothing changes
    dec = weights(out)
    for name, a in w.items():
        assert np.array_equal(dec[name].view(np.uint32), a.view(np.uint32)), name
    ok(src, "-o", out, "-q", "--min-size", "0", "--sparsity", "0.3", "--graph-opt", "none")  # conv1 (432) is compressed now; biases and BN never are
    dec = weights(out)
    assert distinct_nonzero(dec["conv1.weight"]) <= 256 and np.count_nonzero(dec["conv1.weight"] == 0) > 100
    for name in ("conv1.bias", "bn.scale", "bn.var", "fc3.bias"):
        assert np.array_equal(dec[name], w[name])


def test_zeros_stay_zero_and_sparsity_zero_prunes_nothing(tmp_path):
    src = tmp_path / "z.onnx"
    w = build_net(src, zeros={"fc1.weight": 0.6, "fc2.weight": 0.2, "conv2.weight": 0.4})
    out = tmp_path / "z.dcz"
    ok(src, "-o", out, "-q", "--sparsity", "0", "--ecvq", "0")
    dec = weights(out)
    for name in ("fc1.weight", "fc2.weight", "conv2.weight"):
        was_zero = w[name] == 0
        assert np.all(dec[name].view(np.uint32)[was_zero] == 0), name  # exactly +0.0
        assert np.count_nonzero(dec[name]) == np.count_nonzero(w[name]), name  # nothing more pruned
    # entropy-constrained sharing (on by default) may prune more, but only the smallest weights of each sign:
    # the zero's cell is one interval around 0
    ok(src, "-o", out, "-q", "--sparsity", "0")
    dec = weights(out)
    for name in ("fc1.weight", "fc2.weight", "conv2.weight"):
        a, d = w[name], dec[name]
        assert np.all(d.view(np.uint32)[a == 0] == 0), name
        gone, kept = (a != 0) & (d == 0), d != 0
        for sign in (1, -1):
            g, k = sign * a[gone & (sign * a > 0)], sign * a[kept & (sign * a > 0)]
            if g.size:
                assert g.max() <= k.min(), name
    # with a 50% fc target the existing 60% zeros of fc1 count towards it: nothing more goes
    ok(src, "-o", out, "-q", "--sparsity", "fc*=0.5,conv*=0.3", "--ecvq", "0")
    dec = weights(out)
    assert np.count_nonzero(dec["fc1.weight"]) == np.count_nonzero(w["fc1.weight"])
    assert np.all(dec["fc2.weight"][w["fc2.weight"] == 0] == 0)
    assert np.count_nonzero(dec["fc2.weight"] == 0) / w["fc2.weight"].size == pytest.approx(0.5, abs=1e-3)


def test_zero_exact_after_sharing(net, tmp_path):
    """Pruned weights decode to +0.0 exactly, never to a tiny shared value, at every bit width."""
    src, w = net
    for bits in (1, 2, 4, 8):
        out = tmp_path / f"b{bits}.dcz"
        ok(src, "-o", out, "-q", "--bits", str(bits), "--sparsity", "0.7")
        dec = weights(out)
        for name in FC:
            a = dec[name]
            assert distinct_nonzero(a) <= 2 ** bits, (name, bits)
            zero = a == 0
            assert np.all(a.view(np.uint32)[zero] == 0)  # +0.0, not -0.0
            assert zero.mean() == pytest.approx(0.7, abs=1e-3)
            # the pruned ones are the smallest in magnitude
            assert np.abs(w[name][zero]).max() <= np.abs(w[name][~zero]).min()


def test_bits_per_layer_and_sign_kept(net, tmp_path):
    src, w = net
    out = tmp_path / "b.dcz"
    report = tmp_path / "r.json"
    ok(src, "-o", out, "-q", "--bits", "fc1*=2,conv*=3,6", "--report", report)
    dec = weights(out)
    assert distinct_nonzero(dec["fc1.weight"]) <= 4
    assert distinct_nonzero(dec["conv2.weight"]) <= 8
    assert 32 < distinct_nonzero(dec["fc2.weight"]) <= 64
    rows = {r["name"]: r for r in json.loads(report.read_text())["layers"]}
    assert (rows["fc1.weight"]["bits"], rows["conv2.weight"]["bits"], rows["fc2.weight"]["bits"]) == (2, 3, 6)


def test_sparsity_per_layer_patterns(net, tmp_path):
    src, w = net
    out = tmp_path / "s.dcz"
    ok(src, "-o", out, "-q", "--sparsity", "fc1.weight=0.9,conv*=0.6,0.2")
    dec = weights(out)

    def sparsity(n):
        return np.count_nonzero(dec[n] == 0) / dec[n].size

    assert sparsity("fc1.weight") == pytest.approx(0.9, abs=1e-4)
    assert sparsity("conv2.weight") == pytest.approx(0.6, abs=1e-3)
    assert sparsity("fc2.weight") == pytest.approx(0.2, abs=1e-3)  # the default given last
    assert sparsity("conv1.weight") == 0  # under --min-size: untouched
    # the first matching pattern wins
    ok(src, "-o", out, "-q", "--sparsity", "fc1*=0.8,fc*=0.3")
    dec = weights(out)
    assert sparsity("fc1.weight") == pytest.approx(0.8, abs=1e-4)
    assert sparsity("fc2.weight") == pytest.approx(0.3, abs=1e-3)


def test_thresholds(net, tmp_path):
    src, w = net
    out = tmp_path / "t.dcz"
    ok(src, "-o", out, "-q", "--sparsity", "0", "--threshold", "fc1*=0.1")
    dec = weights(out)
    small = np.abs(w["fc1.weight"]) <= 0.1
    assert np.all(dec["fc1.weight"][small] == 0) and np.all(dec["fc1.weight"][~small] != 0)
    assert np.count_nonzero(dec["fc2.weight"]) == w["fc2.weight"].size
    ok(src, "-o", out, "-q", "--sparsity", "0", "--threshold-std", "1.0")
    dec = weights(out)
    for name in FC:
        t = np.std(w[name])
        assert np.all(dec[name][np.abs(w[name]) <= t] == 0)
        assert np.all(dec[name][np.abs(w[name]) > t * 1.0001] != 0)


def test_prune_neurons(net, tmp_path):
    """Whole output neurons / filters go: fc1 rows (Gemm transB=1), fc2 and fc3 columns (MatMul, Gemm transB=0),
    conv2 filters; shapes stay."""
    src, w = net
    out = tmp_path / "n.dcz"
    ok(src, "-o", out, "-q", "--sparsity", "0", "--prune-neurons", "0.25", "--min-size", "1000", "--ecvq", "0",
       "--graph-opt", "none")
    dec = weights(out)
    for name, axis in (("fc1.weight", 0), ("fc2.weight", 1), ("fc3.weight", 1), ("conv2.weight", 0)):
        a = dec[name]
        assert a.shape == w[name].shape
        moved = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
        dead = np.all(moved == 0, axis=1)
        assert dead.sum() == round(0.25 * a.shape[axis]), name
        assert np.count_nonzero(a) == moved[~dead].size  # nothing else pruned
        norms = np.linalg.norm(np.moveaxis(w[name], axis, 0).reshape(a.shape[axis], -1), axis=1)
        assert norms[dead].max() <= norms[~dead].min()  # the weakest went
    # per layer, with magnitude pruning on top
    ok(src, "-o", out, "-q", "--prune-neurons", "fc1*=0.5", "--sparsity", "0.5")
    dec = weights(out)
    assert np.all(dec["fc1.weight"] == 0, axis=1).sum() == 128
    assert np.all(dec["fc2.weight"] == 0, axis=0).sum() == 0


@pytest.mark.parametrize("how", ["linear", "density", "forgy", "kmeans++"])
def test_init_methods(net, tmp_path, how):
    src, _ = net
    out = tmp_path / "i.dcz"
    ok(src, "-o", out, "-q", "--init", how, "--bits", "4")
    dec = weights(out)
    for name in FC:
        assert 8 <= distinct_nonzero(dec[name]) <= 16
    assert dcformat.open(out).metadata["settings"]["init"] == how


# ---------------------------------------------------------------------------------------------- lossless


def test_lossless_bit_identical(net, tmp_path):
    src, w = net
    out = tmp_path / "l.dcz"
    ok(src, "-o", out, "-q", "--lossless")
    dec = weights(out)
    assert set(dec) == set(w)
    for name, a in w.items():
        assert dec[name].dtype == a.dtype and np.array_equal(dec[name].view(np.uint32), a.view(np.uint32)), name
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    assert np.array_equal(dcformat.InferenceSession(out).run(None, {"x": x})[0], ref)


def test_lossless_keeps_a_model_quantized_elsewhere_as_codebook(tmp_path):
    src = tmp_path / "q.onnx"
    w = build_net(src, quantized=True)
    out = tmp_path / "q.dcz"
    ok(src, "-o", out, "-q", "--lossless")
    with dcformat.open(out) as r:
        assert r.info("fc1.weight").encoding.startswith("codebook-")
        assert r.info("fc2.weight").encoding == "float-planes"  # 32768 distinct floats: byte planes (1.1)
        assert r.info("fc2.weight").nbytes < w["fc2.weight"].nbytes
        assert np.array_equal(r["fc1.weight"].view(np.uint32), w["fc1.weight"].view(np.uint32))
        assert r.info("fc1.weight").nbytes < w["fc1.weight"].nbytes / 5
    # negative zeros and NaN payloads survive too
    w2 = {"a": np.array([-0.0, 0.0, np.nan, -np.inf, 1e-45] * 400, np.float32)}
    from safetensors.numpy import save_file

    save_file(w2, tmp_path / "odd.safetensors")
    ok(tmp_path / "odd.safetensors", "-o", out, "-q", "--lossless")
    assert np.array_equal(weights(out)["a"].view(np.uint32), w2["a"].view(np.uint32))


def test_if_subgraph_and_constant_nodes(tmp_path):
    src = tmp_path / "if.onnx"
    w = build_if_model(src)
    out = tmp_path / "if.dcz"
    ok(src, "-o", out, "-q", "--lossless")
    dec = weights(out)
    stored = sorted(dec.values(), key=lambda a: a.tobytes())
    assert len(stored) == 3
    for a in w.values():  # every weight stored, wherever it was, bit for bit
        assert any(np.array_equal(a, s) for s in stored)
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    ref_sess = ort.InferenceSession(str(src))
    sess = dcformat.InferenceSession(out)
    for flag in (True, False):
        feed = {"x": x, "flag": np.array(flag)}
        assert np.array_equal(sess.run(None, feed)[0], ref_sess.run(None, feed)[0])
    # compressed: the weights inside the If branches and the Constant node are fully connected layers too
    report = tmp_path / "r.json"
    ok(src, "-o", out, "-q", "--report", report, "--sparsity", "0.5", "--bits", "4")
    rows = json.loads(report.read_text())["layers"]
    assert len(rows) == 3 and all(r["action"] == "pruned+shared" for r in rows), rows
    sess = dcformat.InferenceSession(out)
    for flag in (True, False):
        got = sess.run(None, {"x": x, "flag": np.array(flag)})[0]
        assert got.shape == (5, 32) and np.isfinite(got).all()


def test_external_data_onnx(tmp_path):
    src = tmp_path / "ext.onnx"
    w = build_net(src, external=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 4 * w["fc1.weight"].size
    assert src.stat().st_size < 10_000
    out = tmp_path / "ext.dcz"
    ok(src, "-o", out, "-q", "--lossless")
    dec = weights(out)
    for name, a in w.items():
        assert np.array_equal(dec[name], a), name
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.array_equal(dcformat.InferenceSession(out).run(None, {"x": x})[0],
                          ort.InferenceSession(str(src)).run(None, {"x": x})[0])
    ok(src, "-o", out, "-q", "--sparsity", "0.5")  # and compressed
    assert np.count_nonzero(weights(out)["fc1.weight"] == 0) > 0.4 * w["fc1.weight"].size


# ---------------------------------------------------------------------------------------------- inputs by content


def test_inputs_recognised_by_content(net, tmp_path, capsys):
    src, w = net
    from safetensors.numpy import save_file

    st = {"encoder.weight": w["fc1.weight"], "encoder.bias": w["fc1.bias"], "conv.weight": w["conv2.weight"],
          "norm.weight": w["bn.scale"]}
    cases = {"model.bin": src.read_bytes(), "model": src.read_bytes(), "weights.pt": None}
    for name, data in cases.items():
        if data is None:
            save_file(st, tmp_path / name)
        else:
            (tmp_path / name).write_bytes(data)
    expected = {"model.bin": "onnx", "model": "onnx", "weights.pt": "safetensors"}
    for name, kind in expected.items():
        out = tmp_path / (name.replace(".", "_") + ".dcz")
        report = json.loads(ok(tmp_path / name, "-o", out, "--json", capsys=capsys))
        assert report["source"]["kind"] == kind, name
        with dcformat.open(out) as r:
            assert (r.graph_bytes is not None) == (kind == "onnx")
    # safetensors is weights only: same names and shapes back; 2-D/4-D float tensors compressed (nothing can be
    # measured without a graph: 8 bits, no pruning), 1-D kept
    dec = weights(tmp_path / "weights_pt.dcz")
    assert {k: v.shape for k, v in dec.items()} == {k: v.shape for k, v in st.items()}
    assert np.array_equal(dec["encoder.bias"], st["encoder.bias"]) and np.array_equal(dec["norm.weight"], st["norm.weight"])
    assert distinct_nonzero(dec["encoder.weight"]) <= 256 and distinct_nonzero(dec["conv.weight"]) <= 256
    assert np.count_nonzero(dec["encoder.weight"]) == np.count_nonzero(st["encoder.weight"])


# ---------------------------------------------------------------------------------------------- output


def test_deterministic_across_processes(net, default_dcz, tmp_path):
    src, _ = net
    out, _, _ = default_dcz
    again = tmp_path / "again.dcz"
    p = run(src, "-o", again, "-q")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""
    assert again.read_bytes() == out.read_bytes()
    # and with per-layer settings and a random initialisation, in-process
    a, b = tmp_path / "a.dcz", tmp_path / "b.dcz"
    for o in (a, b):
        ok(src, "-o", o, "-q", "--bits", "fc*=3", "--init", "kmeans++", "--seed", "7", "--prune-neurons", "0.1")
    assert a.read_bytes() == b.read_bytes()


def test_metadata(net, default_dcz):
    src, _ = net
    out, _, _ = default_dcz
    with dcformat.open(out) as r:
        meta = r.metadata
        r.verify()
    assert meta["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()[:cli.SHA256_DIGITS] and cli.SHA256_DIGITS == 16
    assert meta["source"]["file"] == "net.onnx" and meta["source"]["kind"] == "onnx"
    assert meta["source"]["bytes"] == src.stat().st_size
    s = meta["settings"]
    assert s["lossless"] is False and s["init"] == "linear" and s["min_size"] == 512 and s["seed"] == 0
    assert s["default_bits"] == {"conv": 8, "fc": 5, "embedding": 8} and "sparsity" not in s  # unset: not stored
    assert meta["producer"].startswith("dcconvert")


def test_metadata_records_per_layer_settings(net, tmp_path):
    src, _ = net
    out = tmp_path / "m.dcz"
    ok(src, "-o", out, "-q", "--sparsity", "fc*=0.92,conv*=0.6", "--bits", "4")
    s = dcformat.open(out).metadata["settings"]
    assert s["sparsity"] == {"default": None, "fc*": 0.92, "conv*": 0.6}
    assert s["bits"] == 4


def test_json_and_report(net, default_dcz):
    src, w = net
    out, report, p = default_dcz
    assert p.stderr == ""
    assert json.loads(out.with_suffix(".json").read_text()) == report  # --report writes the same
    assert report["output"] == str(out) and report["dcz_bytes"] == out.stat().st_size
    assert report["source"]["kind"] == "onnx" and report["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    rows = {r["name"]: r for r in report["layers"]}
    dec = weights(out)
    # the default runs ONNX Runtime's basic graph optimisation: BN folds into conv2, MatMul+Add become a Gemm;
    # the tensors that remain keep their original names and shapes
    opt = report["source"]["graph_opt"]
    assert opt["level"] == "basic" and opt["weights"] == [len(w), len(dec)] and opt["removed"]["BatchNormalization"] == 1
    assert set(rows) == set(dec) and set(dec) < set(w) and "bn.mean" not in dec
    for name, r in rows.items():
        assert r["shape"] == list(w[name].shape) == list(dec[name].shape) and r["params"] == w[name].size
        assert {"action", "sparsity", "bits", "encoding", "bytes", "nonzeros"} <= set(r)
    t = report["totals"]
    assert t["params"] == sum(a.size for a in dec.values())
    assert t["nonzeros"] == sum(r["nonzeros"] for r in rows.values())
    assert t["tensor_bytes"] == sum(r["bytes"] for r in rows.values()) < report["dcz_bytes"]
    assert report["ratio"] == pytest.approx(src.stat().st_size / out.stat().st_size)


def test_table_when_piped(net, tmp_path):
    """stdout and stderr are pipes: no progress bar, no escape codes, the table and the summary line."""
    src, w = net
    out = tmp_path / "p.dcz"
    p = run(src, "-o", out, "--max-error", "0.05", "--graph-opt", "none")
    assert p.returncode == 0 and all(ln.startswith("budget: ") for ln in p.stderr.splitlines())  # back-offs only
    assert "\x1b" not in p.stdout and "\x1b" not in p.stderr and "\r" not in p.stdout
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["tensor", "shape", "params"]
    from converters.cli import SMALL

    big = {n for n, a in w.items() if a.size >= SMALL}  # the rest share one row: "+ N small tensors"
    assert {ln.split()[0] for ln in lines if ln.split() and ln.split()[0] in w} == big
    small = len(w) - len(big)
    assert small >= 2 and any(ln.startswith(f"+ {small} small tensors ") for ln in lines)
    assert any(ln.startswith("total") for ln in lines)
    line = next(ln for ln in lines if "net.onnx" in ln and " -> " in ln)
    assert "x smaller" in line
    assert any(ln.startswith("fidelity on 16 calibration samples") for ln in lines)
    assert any(ln.startswith("  y: rel. L2 error ") for ln in lines)


def test_progress_on_a_terminal_keeps_stdout_clean(net, tmp_path):
    """stderr on a terminal (the progress bar goes there), stdout piped: stdout holds the plain table."""
    import pty

    src, w = net
    master, slave = pty.openpty()
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        p = subprocess.run([str(DCCONVERT), str(src), "-o", str(tmp_path / "t.dcz"), "--max-error", "0.05"], stdout=subprocess.PIPE,
                           stderr=slave, stdin=subprocess.DEVNULL, timeout=180)
    finally:
        os.close(slave)
        t.join(5)
        os.close(master)
    assert p.returncode == 0
    out = p.stdout.decode()
    assert "\x1b" not in out and "\r" not in out
    assert out.splitlines()[0].split()[:3] == ["tensor", "shape", "params"] and "x smaller" in out
    assert b"error" not in b"".join(chunks)


# ---------------------------------------------------------------------------------------------- encoding choice


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_choose_layout_matches_the_encoder(dtype):
    """compress.choose_layout (chunked, for memory) picks what dcformat.encode_codebook picks by itself."""
    rng = np.random.default_rng(11)
    for trial in range(12):
        n = int(rng.integers(1, 40_000))
        w = rng.standard_normal(n).astype(dtype)
        w[rng.random(n) < [0, 0.3, 0.6, 0.9, 0.99, 1.0][trial % 6]] = 0
        cb, idx = quantize(w, int(rng.integers(1, 9)))
        enc, gap = choose_layout(cb, idx, dtype)
        auto = dcformat.encode_codebook("t", cb, idx, w.shape, dtype)
        assert (enc, gap) == (auto.encoding, auto.info.gap_bits if enc == "codebook-sparse" else None)
        told = dcformat.encode_codebook("t", cb, idx, w.shape, dtype, encoding=enc, gap_bits=gap)
        assert all(np.array_equal(auto.parts[k], told.parts[k]) for k in auto.parts)


def test_magnitude_mask_exact_count_with_ties():
    from converters.prune import magnitude_mask

    w = np.array([0.0, 1, -1, 1, -1, 2, 3, 0, -0.0, 1], np.float32)
    keep = magnitude_mask(w, 0.5)
    assert keep.sum() == 5 and not keep[[0, 7, 8]].any() and keep[[5, 6]].all()
    assert magnitude_mask(w, 0.0).sum() == 7
    w16 = np.random.default_rng(0).standard_normal(1000).astype(np.float16)
    assert magnitude_mask(w16, 0.3).sum() == 700


def test_non_finite_and_empty_weights(tmp_path, capsys):
    """A layer holding NaN or inf has no magnitudes to prune or cluster: it is kept exactly, and said so;
    an empty weight is kept too."""
    rng = np.random.default_rng(6)
    w = {"nan": init(rng, (64, 32)), "inf": init(rng, (64, 32)), "empty": np.zeros((0, 32), np.float32)}
    w["nan"][1, 2] = np.nan
    w["inf"][3, 4] = -np.inf
    nodes = [helper.make_node("Gemm", ["x", k], [f"y_{k}"], transB=1) for k in w]
    graph = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info(f"y_{k}", TensorProto.FLOAT, None) for k in w],
                              [numpy_helper.from_array(v, k) for k, v in w.items()])
    src = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    out = tmp_path / "odd.dcz"
    report = json.loads(ok(src, "-o", out, "--json", "--min-size", "0", "--prune-neurons", "0.5", capsys=capsys))
    actions = {r["name"]: r["action"] for r in report["layers"]}
    assert actions == {"nan": "kept (not finite)", "inf": "kept (not finite)", "empty": "kept"}
    dec = weights(out)
    for k, a in w.items():
        assert np.array_equal(dec[k].view(np.uint32), a.view(np.uint32)), k


def test_pytorch_only_flags_are_noted_for_onnx(net, tmp_path, capsys):
    src, _ = net
    out = ok(src, "-o", tmp_path / "n.dcz", "--input-shape", "1,3,16,16", "--opset", "17", capsys=capsys)
    assert "note: --input-shape, --opset apply to PyTorch inputs; ignored for this ONNX file" in out


def test_large_all_zero_buffer_still_opens(tmp_path):
    """A 40 MiB all-zero initializer stores in a few hundred bytes, past the expansion bound of so
    small a file (1024 x size + 16 MiB): dcconvert's output is padded (spec 5.4) and opens, decodes
    and runs with the default limits, for about 1/1024 of the excess."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 10 << 20
    zeros = numpy_helper.from_array(np.zeros(n, np.float32), "buf")
    g = helper.make_graph([helper.make_node("Add", ["x", "buf"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])], [zeros])
    src, out = tmp_path / "zeros.onnx", tmp_path / "zeros.dcz"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), src)
    ok(src, "-o", out, "-q", "--min-size", "0")
    size = out.stat().st_size
    assert 4 * n <= dcformat.constants.expansion_bound(size) < 4 * n + 64 * 1024  # padded, and no further
    with dcformat.open(out) as r:
        assert [s.kind for s in r.sections][-1] == "padding"
        assert not r["buf"].any() and r["buf"].shape == (n,)
    x = np.arange(n, dtype=np.float32)
    assert np.array_equal(dcformat.InferenceSession(out).run(None, {"x": x})[0], x)
    for flags, shows in (([], "expansion_padding"), (["--verify"], "padding section: ok")):
        p = subprocess.run([str(DCCONVERT.parent / "dcinspect"), str(out), *flags], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0 and shows in p.stdout, p.stdout + p.stderr

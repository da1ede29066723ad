"""dcconvert on PyTorch inputs: state_dicts, TorchScript, torch.export .pt2, --model factories,
nn.Module pickles (only with --trust-pickle), and files whose unpickling would run code.

Files that must be refused run through the installed console script as subprocesses (real
stderr, exit codes, and a marker file that code in the pickle would create); conversions
that must work run in-process, sharing one PyTorch import.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dcformat  # noqa: E402
from conftest import import_written  # noqa: E402
from converters.cli import main  # noqa: E402

DCCONVERT = Path(sys.executable).parent / "dcconvert"
SHAPE = (3, 8, 8)

MODELS_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def make():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # non-trivial norm statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
    return net.eval()


def broken():
    raise RuntimeError("cannot build")


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cummax(self.fc(x), 1)[0]
'''


class Evil:
    """Unpickling calls ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def run(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(DCCONVERT), *map(str, args)], capture_output=True, text=True, timeout=300, env=env, **kw)


def convert(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def ok(*args) -> None:
    assert convert(*args) == 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """tiny_models.py (importable), the net, an input batch, its outputs and the saved files."""
    d = tmp_path_factory.mktemp("torch")
    tiny_models = import_written(d, "tiny_models", MODELS_PY)
    net = tiny_models.make()
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).numpy()
    sd = net.state_dict()
    files = {}
    files["sd"] = d / "sd.pt"
    torch.save(sd, files["sd"])
    files["sd_legacy"] = d / "sd_legacy.pth"
    torch.save(sd, files["sd_legacy"], _use_new_zipfile_serialization=False)
    files["checkpoint"] = d / "checkpoint.bin"
    torch.save({"epoch": 3, "model_state_dict": sd, "lr": 0.1}, files["checkpoint"])
    files["module"] = d / "module.pt"
    torch.save(net, files["module"])
    files["ts"] = d / "scripted.pt"
    torch.jit.save(torch.jit.trace(net, x[:1]), files["ts"])
    files["pt2"] = d / "exported.pt2"
    ep = torch.export.export(net, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(ep, files["pt2"])
    files["unexportable"] = d / "cummax.pt"
    torch.jit.save(torch.jit.trace(tiny_models.Unexportable(), torch.zeros(2, 4)), files["unexportable"])
    return {"dir": d, "net": net, "x": x, "y": y, "sd": sd, "files": files, "module": tiny_models}


def session_output(path, x) -> np.ndarray:
    sess = dcformat.InferenceSession(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# ---------------------------------------------------------------------------------------------- graphs that run


@pytest.mark.parametrize("kind", ["ts", "pt2", "factory", "module"])
def test_graph_inputs_run_in_onnx_runtime(models, tmp_path, monkeypatch, kind):
    """TorchScript, torch.export, state_dict + --model and a trusted nn.Module pickle become graphs whose
    outputs match torch's (--lossless), with a dynamic batch dimension."""
    f = models["files"]
    monkeypatch.syspath_prepend(str(models["dir"]))
    src, extra = {
        "ts": (f["ts"], ["--input-shape", "1,3,8,8", "--trust-code"]),
        "pt2": (f["pt2"], ["--trust-code"]),
        "factory": (f["sd"], ["--model", "tiny_models:make", "--input-shape", "1,3,8,8", "--trust-code"]),
        "module": (f["module"], ["--trust-pickle", "--input-shape", "1,3,8,8"]),
    }[kind]
    out = tmp_path / "m.dcz"
    ok(src, "-o", out, "-q", "--lossless", *extra)
    x = models["x"].numpy()
    got = session_output(out, x)
    np.testing.assert_allclose(got, models["y"], rtol=1e-5, atol=1e-5)
    got1 = session_output(out, x[:1])  # another batch size
    np.testing.assert_allclose(got1, models["y"][:1], rtol=1e-5, atol=1e-5)
    meta = dcformat.open(out).metadata
    assert meta["source"]["kind"] == {"ts": "torchscript", "pt2": "exported-program", "factory": "state_dict",
                                      "module": "module-pickle"}[kind]
    # the fc1 weight is stored bit for bit
    w = dcformat.load_weights(out)
    fc1 = models["sd"]["fc1.weight"].numpy()
    assert any(a.shape == fc1.shape and np.array_equal(a, fc1) or a.shape == fc1.T.shape and np.array_equal(a, fc1.T)
               for a in w.values())


def test_torchscript_compressed(models, tmp_path):
    """Default pruning and sharing on an exported graph: fc1 found as a fully connected layer, still runs."""
    out = tmp_path / "c.dcz"
    report = tmp_path / "r.json"
    ok(models["files"]["ts"], "-o", out, "-q", "--input-shape", "1,3,8,8", "--trust-code", "--report", report, "--bits", "4", "--min-size", "1024")
    rows = [r for r in json.loads(report.read_text())["layers"] if r["params"] == 64 * 288]
    assert len(rows) == 1 and rows[0]["action"] == "pruned+shared" and rows[0]["role"] == "fc"
    assert rows[0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    got = session_output(out, models["x"].numpy())
    assert got.shape == (4, 10) and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), models["y"].ravel())[0, 1] > 0.9


# ---------------------------------------------------------------------------------------------- weights only


@pytest.mark.parametrize("key", ["sd", "sd_legacy", "checkpoint"])
def test_state_dict_is_weights_only(models, tmp_path, key):
    out = tmp_path / "w.dcz"
    ok(models["files"][key], "-o", out, "-q", "--lossless")
    with dcformat.open(out) as r:
        assert r.graph_bytes is None
        assert r.metadata["source"]["kind"] == "state_dict"
    dec = dcformat.load_weights(out)
    sd = models["sd"]
    assert list(dec) == list(sd)  # same names, same order
    for k, t in sd.items():
        assert dec[k].shape == tuple(t.shape) and dec[k].dtype == t.numpy().dtype, k
        assert np.array_equal(dec[k], t.numpy()), k
    # compressed: 2-D fc1 pruned and shared; conv (216 < --min-size), biases, BatchNorm statistics exact
    ok(models["files"][key], "-o", out, "-q", "--sparsity", "0.5", "--bits", "5")
    dec = dcformat.load_weights(out)
    assert {k: v.shape for k, v in dec.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    fc1 = dec["fc1.weight"]
    assert np.count_nonzero(fc1 == 0) / fc1.size == pytest.approx(0.5, abs=1e-3)
    assert np.unique(fc1[fc1 != 0]).size <= 32
    for k in ("conv.weight", "fc1.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
              "bn.num_batches_tracked"):
        assert np.array_equal(dec[k], sd[k].numpy()), k


def test_state_dict_dtypes_and_patterns(tmp_path):
    sd = {"emb.weight": torch.randn(100, 32).half(), "proj.weight": torch.randn(64, 100).to(torch.bfloat16),
          "proj.bias": torch.randn(64), "steps": torch.tensor(7)}
    src = tmp_path / "mixed.bin"
    torch.save(sd, src)
    out = tmp_path / "mixed.dcz"
    ok(src, "-o", out, "-q", "--sparsity", "emb*=0.8,proj*=0.25", "--bits", "3", "--min-size", "100")
    dec = dcformat.load_weights(out)
    assert dec["emb.weight"].dtype == np.float16 and str(dec["proj.weight"].dtype) == "bfloat16"
    emb = dec["emb.weight"]
    assert np.count_nonzero(emb == 0) / emb.size == pytest.approx(0.8, abs=1e-3)
    proj = dec["proj.weight"].astype(np.float32)
    assert np.count_nonzero(proj == 0) / proj.size == pytest.approx(0.25, abs=1e-3)
    assert np.unique(emb[emb != 0]).size <= 8 and np.unique(proj[proj != 0]).size <= 8
    assert np.array_equal(dec["proj.bias"], sd["proj.bias"].numpy()) and dec["steps"] == 7


# ---------------------------------------------------------------------------------------------- refused


def _evil_files(d: Path, pt2: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (file, marker that unpickling it would create)."""
    out = {}

    def marker(name):
        return d / f"MARKER-{name}"

    def shell(name):
        return Evil(os.system, f"touch '{marker(name)}'")

    def opener(name):
        return Evil(builtins.open, str(marker(name)), "w")

    out["zip"] = d / "evil_zip.pt"
    torch.save({"fc.weight": torch.zeros(4, 4), "hook": shell("zip")}, out["zip"])
    out["legacy"] = d / "evil_legacy.pth"
    torch.save({"fc.weight": torch.zeros(4, 4), "hook": opener("legacy")}, out["legacy"],
               _use_new_zipfile_serialization=False)
    out["plain-pt"] = d / "evil_plain.pt"
    out["plain-pt"].write_bytes(pickle.dumps({"w": shell("plain-pt")}, protocol=4))
    out["plain-bin"] = d / "evil_plain.bin"
    out["plain-bin"].write_bytes(pickle.dumps(opener("plain-bin"), protocol=2))
    out["proto0"] = d / "evil_proto0.bin"  # no protocol header: not recognised at all
    out["proto0"].write_bytes(pickle.dumps(opener("proto0"), protocol=0))
    # .pt2 archives: torch.export.load unpickles example inputs (falling back to weights_only=False)
    # and weights marked use_pickle (with weights_only=False)
    src = zipfile.ZipFile(pt2)
    for name, patch in (("pt2-inputs", "inputs"), ("pt2-weights", "weights")):
        out[name] = d / f"evil_{patch}.pt2"
        with zipfile.ZipFile(out[name], "w") as z:
            for info in src.infolist():
                data = src.read(info.filename)
                if patch == "inputs" and info.filename.endswith("sample_inputs/model.pt"):
                    buf = io.BytesIO()
                    torch.save(((shell(name),), {}), buf)
                    data = buf.getvalue()
                if patch == "weights" and info.filename.endswith("model_weights_config.json"):
                    cfg = json.loads(data)
                    first = next(iter(cfg["config"].values()))
                    first["use_pickle"] = True
                    data = json.dumps(cfg).encode()
                    first_file = first["path_name"]
                z.writestr(info.filename, data)
        if patch == "weights":  # replace the weight file with a pickle
            names = [i.filename for i in zipfile.ZipFile(out[name]).infolist()]
            target = next(n for n in names if n.endswith("/weights/" + first_file))
            tmp = out[name].with_suffix(".tmp")
            with zipfile.ZipFile(out[name]) as zin, zipfile.ZipFile(tmp, "w") as zout:
                for info in zin.infolist():
                    data = zin.read(info.filename)
                    if info.filename == target:
                        buf = io.BytesIO()
                        torch.save(shell(name), buf)
                        data = buf.getvalue()
                    zout.writestr(info.filename, data)
            tmp.replace(out[name])
    return {k: (v, marker(k)) for k, v in out.items()}


REFUSED = ["zip", "legacy", "plain-pt", "plain-bin", "proto0", "pt2-weights", "module", "unexportable",
           "factory-fails", "factory-missing", "factory-untrusted"]
SUBPROCESS = {"zip", "pt2-weights", "unexportable"}  # the rest run in-process (one PyTorch import)


@pytest.fixture(scope="module")
def refused_runs(models, tmp_path_factory):
    """Each REFUSED case in its own directory; those in SUBPROCESS run as subprocesses (two at a time, cwd that
    directory), the others in-process. Returns {case: (exit code, stdout, stderr, directory)} and the hostile files."""
    base = tmp_path_factory.mktemp("refused")
    evil = _evil_files(base, models["files"]["pt2"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(models["dir"]), os.environ.get("PYTHONPATH")) if p)}
    jobs = []
    for case in REFUSED:
        d = base / case
        d.mkdir()
        argv = {"module": [models["files"]["module"], "--input-shape", "1,3,8,8"],
                "unexportable": [models["files"]["unexportable"], "--input-shape", "2,4", "--trust-code"],
                "factory-fails": [models["files"]["sd"], "--model", "tiny_models:broken", "--input-shape", "1,3,8,8",
                                  "--trust-code"],
                "factory-missing": [models["files"]["sd"], "--model", "tiny_models:nope", "--input-shape", "1,3,8,8",
                                    "--trust-code"],
                "factory-untrusted": [models["files"]["sd"], "--model", "tiny_models:make", "--input-shape", "1,3,8,8"],
                }.get(case) or [evil[case][0]]
        jobs.append((case, d, [str(a) for a in (*argv, "-o", d / "out.dcz")]))
    results, running = {}, []
    inproc = [j for j in jobs if j[0] not in SUBPROCESS]
    jobs = [j for j in jobs if j[0] in SUBPROCESS]
    while jobs or running:
        while jobs and len(running) < 2:
            case, d, argv = jobs.pop(0)
            running.append((case, d, subprocess.Popen([str(DCCONVERT), *argv], stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, text=True, cwd=d, env=env)))
        if inproc:  # while the subprocesses run
            case, d, argv = inproc.pop(0)
            results[case] = (*_in_process(argv), d)
            continue
        case, d, p = running.pop(0)
        out, err = p.communicate(timeout=300)
        results[case] = (p.returncode, out, err, d)
    for case, d, argv in inproc:
        results[case] = (*_in_process(argv), d)
    return results, evil


def _in_process(argv) -> tuple[int, str, str]:
    """main(argv) with its stdout and stderr caught at the file-descriptor level (C++ output included)."""
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        os.dup2(fo.fileno(), 1)
        os.dup2(fe.fileno(), 2)
        real = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
        try:
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = real
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        fo.seek(0)
        fe.seek(0)
        return code, fo.read(), fe.read()


@pytest.mark.parametrize("case", REFUSED)
def test_refused_one_line_error(refused_runs, case):
    results, evil = refused_runs
    rc, out, err, d = results[case]
    assert rc == 1, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    assert list(d.iterdir()) == []  # no output file, nothing written by the pickle
    if case in evil:
        assert not evil[case][1].exists(), "the pickle's code ran"


def test_refused_messages(refused_runs):
    results, evil = refused_runs
    err = {case: r[2] for case, r in results.items()}
    for case in ("zip", "legacy", "plain-pt", "plain-bin", "module", "pt2-weights", "factory-untrusted"):
        assert "--trust-code" in err[case], (case, err[case])
    assert "imports and runs Python code" in err["factory-untrusted"]
    assert "unknown format" in err["proto0"]
    assert "cannot export the model to ONNX" in err["unexportable"] and "cummax" in err["unexportable"]
    assert "cannot build" in err["factory-fails"] and "nope" in err["factory-missing"]
    assert not any(m.exists() for _, m in evil.values())


def test_pickle_markers_work(refused_runs, tmp_path):
    """The hostile files are real: unpickled without restrictions, they create their markers."""
    _, evil = refused_runs
    for case in ("plain-bin", "proto0"):
        f, marker = evil[case]
        try:
            pickle.loads(f.read_bytes())
            assert marker.exists()
        finally:
            marker.unlink(missing_ok=True)


def test_trust_pickle_loads_a_module(models, tmp_path, monkeypatch):
    """With --trust-pickle a whole nn.Module loads; without --input-shape it says what is missing."""
    monkeypatch.syspath_prepend(str(models["dir"]))
    with pytest.raises(SystemExit) as e:
        main([str(models["files"]["module"]), "-o", str(tmp_path / "m.dcz"), "--trust-pickle"])
    assert e.value.code == 1 and not (tmp_path / "m.dcz").exists()


def test_pt2_with_pickled_inputs_is_read_weights_only(refused_runs, models, tmp_path):
    """A .pt2 whose example inputs are a code-running pickle: without --trust-code its weights are read from
    the weight files (the pickle is never opened), the .dcz is weights-only and the marker is not created."""
    _, evil = refused_runs
    f, marker = evil["pt2-inputs"]
    out = tmp_path / "w.dcz"
    ok(f, "-o", out, "-q", "--lossless")
    assert not marker.exists()
    with dcformat.open(out) as r:
        assert r.graph_bytes is None and r.metadata["source"]["kind"] == "exported-program"
    dec = dcformat.load_weights(out)
    for k, t in models["sd"].items():
        assert np.array_equal(dec[k], t.numpy()), k

"""Inputs whose loaders run code: nothing from the file runs without --trust-code.

Each attack plants a marker-file payload: a TorchScript module whose ``__setstate__`` creates a
file with ``torch.from_file(..., shared=True)``, a torch.export ``.pt2`` whose shape expression
(``expr_str`` in models/model.json, handed by torch to ``sympy.sympify``) runs ``os.system``, a
TorchScript archive whose data.pkl is a code-running pickle. Without the flag dcconvert reads
their tensors with converters.torch_archive and the markers stay absent; with it the documented
loaders run and (for the attacks that need no graph export) the markers appear, which proves
the files are real attacks. dcinspect never runs them.
"""

from __future__ import annotations

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
from converters.cli import main  # noqa: E402
from converters.errors import ConvertError  # noqa: E402
from converters.torch_archive import pt2_tensors, torchscript_tensors  # noqa: E402

EVIL_TS = '''
import sys
from typing import Tuple

import torch


class Evil(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4, 4))
        self.marker = marker

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]
        t = torch.from_file(self.marker, shared=True, size=4)  # creates and writes the file
        t.fill_(1.0)
        self.weight = self.weight + t.sum()

    def forward(self, x):
        return x @ self.weight


torch.jit.save(torch.jit.script(Evil(sys.argv[1])), sys.argv[2])
'''


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _rezip(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
    f = {"dir": d, "sd": {k: v.numpy().copy() for k, v in net.state_dict().items()}}
    f["ts"] = d / "scripted.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 8, 8)), f["ts"])
    f["pt2"] = d / "exported.pt2"
    ep = torch.export.export(net, (torch.zeros(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(ep, f["pt2"])
    # the TorchScript __setstate__ attack (built in a subprocess: TorchScript compiles the class from its source)
    (d / "evil_ts.py").write_text(EVIL_TS)
    f["evil-ts"], f["evil-ts-marker"] = d / "evil_ts.pt", d / "MARKER-ts"
    subprocess.run([sys.executable, str(d / "evil_ts.py"), str(f["evil-ts-marker"]), str(f["evil-ts"])], check=True,
                   capture_output=True, timeout=300)
    # the sympy attack: one shape expression of models/model.json runs a shell command
    f["evil-pt2"], f["evil-pt2-marker"] = d / "evil.pt2", d / "MARKER-pt2"
    old = "Symbol('s77', positive=True, integer=True)"

    def expr(name, data):
        if name.endswith("models/model.json"):
            text = data.decode()
            assert old in text
            return text.replace(old, f"__import__('os').system('touch {f['evil-pt2-marker']}') and {old} or {old}",
                                1).encode()
        return data

    _rezip(f["pt2"], f["evil-pt2"], expr)
    # a TorchScript archive whose data.pkl is a plain code-running pickle
    f["evil-pkl"], f["evil-pkl-marker"] = d / "evil_pkl.pt", d / "MARKER-pkl"
    _rezip(f["ts"], f["evil-pkl"], lambda n, b: pickle.dumps(Evil(os.system, f"touch '{f['evil-pkl-marker']}'"),
                                                            protocol=2) if n.endswith("/data.pkl") else b)
    assert not any(f[k].exists() for k in ("evil-ts-marker", "evil-pt2-marker", "evil-pkl-marker"))
    return f


def convert(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


@pytest.mark.parametrize("case", ["evil-ts", "evil-pt2"])
def test_attack_gives_weights_only_without_the_flag(files, tmp_path, capsys, case):
    """dcconvert evil.pt2 / a TorchScript with a file-writing __setstate__: a weights-only .dcz, a note saying what
    --trust-code would add and that it runs code from the file, and no marker."""
    out = tmp_path / "w.dcz"
    assert convert(files[case], "-o", out, "--lossless") == 0
    text = capsys.readouterr().out
    assert not files[case + "-marker"].exists(), "code from the file ran"
    assert "note: weights only" in text and "--trust-code" in text and "its graph needs" in text
    assert ("__setstate__" in text) if case == "evil-ts" else ("shape expressions as Python" in text)
    with dcformat.open(out) as r:
        assert r.graph_bytes is None
    dec = dcformat.load_weights(out)
    if case == "evil-ts":
        assert list(dec) == ["0"] and np.array_equal(dec["0"], np.ones((4, 4), np.float32))  # its __getstate__ tuple
    else:
        assert set(dec) == set(files["sd"]) and all(np.array_equal(dec[k], v) for k, v in files["sd"].items())


def test_attacks_are_real_with_the_flag(files, tmp_path):
    """With --trust-code the documented loaders run, and so does the files' code: the markers appear."""
    for case, extra in (("evil-ts", ["--input-shape", "2,4"]), ("evil-pt2", [])):
        marker = files[case + "-marker"]
        try:
            convert(files[case], "-o", tmp_path / f"{case}.dcz", "-q", "--trust-code", *extra)
            assert marker.exists(), case
        finally:
            marker.unlink(missing_ok=True)


def test_pickle_in_a_torchscript_archive_is_refused(files, tmp_path, capsys):
    out = tmp_path / "p.dcz"
    assert convert(files["evil-pkl"], "-o", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "posix.system" in err, err
    assert not files["evil-pkl-marker"].exists() and not out.exists()


def test_archive_tensors_equal_torchs(files):
    """The tensors read without running anything are the ones torch's loaders give."""
    for read, f in ((torchscript_tensors, files["ts"]), (pt2_tensors, files["pt2"])):
        got = read(f)
        assert set(got) == set(files["sd"]), f
        for k, v in files["sd"].items():
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (f, k)


def test_weights_only_archives_convert_without_the_flag(files, tmp_path, capsys):
    for f in (files["ts"], files["pt2"]):
        out = tmp_path / (f.stem + ".dcz")
        assert convert(f, "-o", out, "-q", "--lossless", "--input-shape", "1,3,8,8") == 0
        dec = dcformat.load_weights(out)
        assert all(np.array_equal(dec[k], v) for k, v in files["sd"].items())
        with dcformat.open(out) as r:
            assert r.graph_bytes is None


def _pt2_with_config(files, tmp_path, edit) -> Path:
    dst = tmp_path / "bad.pt2"

    def change(name, data):
        if name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            edit(cfg["config"]["fc.weight"])
            return json.dumps(cfg).encode()
        return data

    _rezip(files["pt2"], dst, change)
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["tensor_meta"]["storage_offset"].update(as_int=10 ** 6), "past the end of its storage"),
    (lambda m: (m["tensor_meta"]["strides"][0].update(as_int=0), m["tensor_meta"]["sizes"][0].update(as_int=10 ** 6)),
     "more elements than its storage"),
    (lambda m: m["tensor_meta"]["sizes"][0].update(as_int=-3), "negative"),
    (lambda m: m["tensor_meta"].update(dtype=999), "tensor_meta"),
    (lambda m: m.update(path_name="../../etc/passwd"), "bad file name"),
    (lambda m: (m["tensor_meta"]["sizes"][0].clear(), m["tensor_meta"]["sizes"][0].update(as_expr="s0")), "symbolic"),
])
def test_hostile_pt2_configs_are_one_line_errors(files, tmp_path, edit, message):
    with pytest.raises(ConvertError, match=message):
        pt2_tensors(_pt2_with_config(files, tmp_path, edit))


def test_zip_bomb_is_refused_from_declared_sizes(files, tmp_path, capsys):
    """A small deflated archive declaring far more than MAX_ZIP_EXPANSION x its size is refused before any
    entry is inflated (state_dicts go through the same check before torch.load)."""
    from converters.torch_archive import MAX_ZIP_EXPANSION, ZIP_EXPANSION_SLACK

    bomb = tmp_path / "bomb.pt"
    big = ZIP_EXPANSION_SLACK + (8 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data.pkl", pickle.dumps({"w": 0}, protocol=2))
        with z.open("bomb/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(big >> 20):
                f.write(chunk)
        z.writestr("bomb/version", "3")
    assert bomb.stat().st_size * MAX_ZIP_EXPANSION + ZIP_EXPANSION_SLACK < big
    with pytest.raises(SystemExit) as e:
        main([str(bomb), "-o", str(tmp_path / "b.dcz")])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "zip bomb" in err and len(err.splitlines()) == 1, err
    for read in (torchscript_tensors, pt2_tensors):
        with pytest.raises(ConvertError, match="zip bomb"):
            read(bomb)


def test_dcinspect_never_runs_the_attacks(files, capsys):
    from dcformat.cli import inspect_main

    for case in ("evil-ts", "evil-pt2", "evil-pkl"):
        with pytest.raises(SystemExit) as e:
            inspect_main([str(files[case])])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: "), (case, err)
        assert not files[case + "-marker"].exists(), case


EVIL_FACTORY = '''
import pathlib
from converters.pipeline import digits_mlp as make
pathlib.Path({marker!r}).write_text("ran")
'''


@pytest.mark.parametrize("tool", ["dcconvert", "dcz pipeline"])
def test_factories_of_user_modules_need_the_flag(tool, tmp_path, monkeypatch, capsys):
    """`dcconvert --model` and `dcz pipeline --model` / `--data-factory` import a user's module only
    with --trust-code (one-line error naming the flag, and the module's code never runs); dcz's own
    converters.pipeline:* factories need no flag."""
    from converters.demo import main as dcz_main
    from converters.pipeline import digits_mlp
    from clitools import cli, one_line_error

    marker, mod = tmp_path / "ran.txt", f"evil_{tool[-5:]}"  # a module name per case: imports are cached
    (tmp_path / f"{mod}.py").write_text(EVIL_FACTORY.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    torch.save(digits_mlp().state_dict(), tmp_path / "sd.pt")
    if tool == "dcconvert":
        base = [tmp_path / "sd.pt", "-o", tmp_path / "o.dcz", "--input-shape", "1,64", "--lossless", "-q"]
        run, refused = (lambda extra: cli(main, base + extra, capsys)), [["--model", f"{mod}:make"]]
    else:
        base = ["pipeline", "--data", "digits", "-o", tmp_path / "o.dcz", "--epochs", "0", "--retrain-epochs", "0",
                "--finetune-epochs", "0", "--sparsity", "0.5", "--bits", "8", "--threads", "1", "-q",
                "--limit-train", "64", "--limit-test", "32"]
        run = lambda extra: cli(dcz_main, base + extra, capsys)  # noqa: E731
        refused = [["--model", f"{mod}:make"],
                   ["--model", "converters.pipeline:digits_mlp", "--data-factory", f"{mod}:make"]]
    for extra in refused:
        if "--data-factory" in extra:
            base.remove("--data"), base.remove("digits")
        code, _, err = run(extra)
        assert code == 1
        one_line_error(err, extra[-1], "--trust-code")
        assert not marker.exists()  # nothing of the module ran
    if tool == "dcz pipeline":
        base += ["--data", "digits"]
    code, _, err = run(["--model", "converters.pipeline:digits_mlp"])  # built in: no flag needed
    assert code == 0, err
    assert not marker.exists()
    code, _, err = run(["--model", f"{mod}:make", "--trust-code"])
    assert code == 0, err
    assert marker.exists()

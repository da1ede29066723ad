"""PyTorch exports with named, typed example inputs (issue 19): --input NAME:SHAPE[:DTYPE],
NAME=VALUE constants for int/float/bool arguments (a TorchScript VAD whose forward takes
(x, sr: int)), a BERT-style nn.Module built by --model with three int64 inputs passed by keyword,
an .npz of example inputs, and the first sample of --calibration. Models are built here."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dcformat  # noqa: E402
from clitools import cli, one_line_error  # noqa: E402
from conftest import import_written  # noqa: E402
from converters.cli import main  # noqa: E402

MODELS_PY = '''
from typing import List

import torch
from torch import nn


class Vad(nn.Module):
    """forward(x, sr: int): the sample rate picks the branch (as Silero VAD's does)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 8)
        self.b = nn.Linear(32, 8)

    def forward(self, x, sr: int, gain: float = 1.0, clip: bool = False):
        if sr == 16000:
            y = torch.sigmoid(self.a(x))
        else:
            y = torch.sigmoid(self.b(x[:, :32])) * 0.5
        if clip:
            y = torch.clamp(y, 0.25, 0.75)
        return y * gain


def vad():
    torch.manual_seed(0)
    return Vad().eval()


class Listy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, sizes: List[int]):
        return self.fc(x) * float(len(sizes))


class TinyBert(nn.Module):
    """Word + position + token-type embeddings, one masked self-attention layer, masked mean pooling
    (attention written out: nn.MultiheadAttention's traced shapes would fix the batch and length)."""

    def __init__(self, vocab=300, dim=32, types=2, max_len=64):
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.token_type = nn.Embedding(types, dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 16)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        pos = torch.cumsum(torch.ones_like(input_ids), 1) - 1
        h = self.word(input_ids) + self.position(pos)
        if token_type_ids is not None:
            h = h + self.token_type(token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        scores = self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5
        scores = scores.masked_fill(attention_mask.unsqueeze(1) == 0, -1e4)
        h = self.norm(h + torch.softmax(scores, -1) @ self.v(h))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.out((h * m).sum(1) / m.sum(1))


class Cell(nn.Module):
    """forward(x, state) -> (y, new state): a recurrent step with the batch in the state's middle dim."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, state):
        h = torch.tanh(self.fc(x) + state.sum(0))
        return h, torch.stack([h, state[0]])


def bert():
    torch.manual_seed(0)
    return TinyBert().eval()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("torch-inputs")
    tiny_inputs = import_written(d, "tiny_inputs", MODELS_PY)
    vad = tiny_inputs.vad()
    torch.jit.save(torch.jit.script(vad), d / "vad.pt")
    torch.save(vad.state_dict(), d / "vad_sd.pt")
    torch.jit.save(torch.jit.script(tiny_inputs.Listy()), d / "listy.pt")
    cell = tiny_inputs.Cell().eval()
    torch.jit.save(torch.jit.script(cell), d / "cell.pt")
    net = tiny_inputs.bert()
    torch.save(net.state_dict(), d / "bert.pt")
    return {"dir": d, "vad": vad, "bert": net, "cell": cell, "module": tiny_inputs}


def _out(path, feeds):
    sess = dcformat.InferenceSession(path)
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("sr, extra, kwargs, how", [
    (16000, [], {}, "ts"),
    (8000, ["--input", "clip=true", "--input", "gain:float=0.5"], {"clip": True, "gain": 0.5}, "ts"),
    (16000, ["--input", "gain=2"], {"gain": 2.0}, "factory"),  # an nn.Module traced: the same constants
])
def test_int_float_bool_arguments_are_constants(files, tmp_path, capsys, monkeypatch, sr, extra, kwargs, how):
    """forward(x, sr: int, gain: float = 1.0, clip: bool = False) exports with the given arguments as
    constants: the graph takes x alone, keeps only the branch sr chose (TorchScript folds the other
    away), and gives torch's outputs at any batch; arguments left out keep their defaults."""
    monkeypatch.syspath_prepend(str(files["dir"]))
    out = tmp_path / "v.dcz"
    src = [files["dir"] / "vad.pt"] if how == "ts" else [files["dir"] / "vad_sd.pt", "--model", "tiny_inputs:vad"]
    code, stdout, err = cli(main, [*src, "-o", out, "--trust-code", "--input", "x:1x64", "--input", f"sr:int={sr}",
                                   *extra, "--lossless"], capsys)
    assert code == 0, err
    assert f"sr={sr} (constant)" in stdout
    sess = dcformat.InferenceSession(out)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    with torch.no_grad():
        want = files["vad"](torch.from_numpy(x), sr, **kwargs).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    names = set(dcformat.load_weights(out))
    kept, dropped = ("a", "b") if sr == 16000 else ("b", "a")
    assert f"{kept}.weight" in names and f"{dropped}.weight" not in names  # names as in the state_dict


@pytest.mark.parametrize("argv, needles", [
    (["--input-shape", "1,64"], ["argument 'sr' (int)", "--input sr=16000"]),  # was a PyTorch INTERNAL ASSERT
    (["--input", "x:1x64", "--input", "sr:1x1"], ["'sr'", "is int, not a tensor", "--input sr="]),
    (["--input", "x:1x64", "--input", "sr=0.5"], ["'sr'", "is an int"]),
    (["--input", "x:1x64", "--input", "sr=16000", "--input", "rate=3"], ["no argument 'rate'", "forward(x: Tensor, sr: int,"]),
    (["--input", "x:1x64", "--input", "sr=16000", "--input", "clip=2"], ["'clip'", "is a bool"]),
    ([], ["needs example inputs", "--input", "forward(x: Tensor, sr: int, gain: float, clip: bool)"]),
])
def test_torchscript_argument_errors_are_one_line(files, tmp_path, capsys, argv, needles):
    out = tmp_path / "v.dcz"
    code, _, err = cli(main, [files["dir"] / "vad.pt", "-o", out, "--trust-code", "--lossless", *argv], capsys)
    assert code == 1 and not out.exists()
    one_line_error(err, *needles)


def test_unsupported_argument_type_is_named(files, tmp_path, capsys):
    code, _, err = cli(main, [files["dir"] / "listy.pt", "-o", tmp_path / "l.dcz", "--trust-code", "--input",
                              "x:1x4"], capsys)
    assert code == 1
    one_line_error(err, "'sizes'", "List[int]", "torch.onnx.export")


def test_bert_from_a_factory_with_typed_keyword_inputs(files, tmp_path, capsys, monkeypatch):
    """--model builds a BERT-style module; three int64 inputs given by name, the sequence dim named
    dynamic: the graph takes them by name and dtype and matches torch at another batch and length."""
    monkeypatch.syspath_prepend(str(files["dir"]))
    out = tmp_path / "b.dcz"
    spec = "1xsequence=16:int64"
    code, stdout, err = cli(main, [files["dir"] / "bert.pt", "-o", out, "--trust-code", "--model", "tiny_inputs:bert",
                                   "--input", f"input_ids:{spec}", "--input", f"token_type_ids:{spec}",
                                   "--input", f"attention_mask:{spec}", "--lossless", "-q"], capsys)
    assert code == 0, err
    sess = dcformat.InferenceSession(out)
    got = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    assert got == {n: ("tensor(int64)", ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")}
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 300, (2, 9))
    types = rng.integers(0, 2, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = files["bert"](torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             token_type_ids=torch.from_numpy(types)).numpy()
    y = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    with dcformat.open(out) as r:
        fid = r.metadata["fidelity"]
    cal = fid["calibration"]
    assert cal["inputs"]["input_ids"] == {"dtype": "int64", "shape": [16, 16], "table_rows": 300}  # sequence 16
    assert cal["inputs"]["token_type_ids"]["table_rows"] == 2 and fid["max_rel_l2"] == 0


def test_bert_example_inputs_from_npz_and_calibration(files, tmp_path, capsys, monkeypatch):
    """An .npz of example arrays (optional arguments left out keep their defaults), or with no
    --input the first sample of --calibration; a missing required argument is one line."""
    monkeypatch.syspath_prepend(str(files["dir"]))
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 300, (4, 12))
    np.savez(tmp_path / "ex.npz", input_ids=ids[:1])
    base = [files["dir"] / "bert.pt", "--trust-code", "--model", "tiny_inputs:bert", "--lossless", "-q"]
    code, _, err = cli(main, [*base, "-o", tmp_path / "a.dcz", "--input", tmp_path / "ex.npz"], capsys)
    assert code == 0, err
    sess = dcformat.InferenceSession(tmp_path / "a.dcz")
    assert [i.name for i in sess.get_inputs()] == ["input_ids"]
    with torch.no_grad():
        want = files["bert"](torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(sess.run(None, {"input_ids": ids})[0], want, rtol=1e-4, atol=1e-5)
    np.savez(tmp_path / "cal.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    code, _, err = cli(main, [*base, "-o", tmp_path / "c.dcz", "--calibration", tmp_path / "cal.npz"], capsys)
    assert code == 0, err
    with dcformat.open(tmp_path / "c.dcz") as r:
        cal = r.metadata["fidelity"]["calibration"]
    assert cal["samples"] == 4 and not cal["synthetic"] and set(cal["inputs"]) == {"input_ids", "attention_mask"}
    code, _, err = cli(main, [*base, "-o", tmp_path / "m.dcz", "--input", "attention_mask:1x8:int64"], capsys)
    assert code == 1 and not (tmp_path / "m.dcz").exists()
    one_line_error(err, "needs argument 'input_ids'", "--input input_ids:1x128:int64")


def test_dynamic_axes_from_named_dims():
    """Dim 0 is the dynamic batch unless another dim is named batch (a recurrent state); named dims
    are dynamic and their sizes go to the synthetic calibration inputs."""
    from converters.torch_inputs import _examples
    from dcformat.inputs import parse_inputs

    class Rnn(torch.nn.Module):
        def forward(self, x, state):
            return x.sum() + state.sum()

    tensors, consts, _, legacy, dims, _ = _examples(Rnn(), parse_inputs(["x:1xframe=512", "state:2xbatch=1x128"]),
                                                    None, "m.pt")
    assert tensors["x"][1] == {0: "batch", 1: "frame"} and tensors["state"][1] == {1: "batch"}
    assert dims == {"frame": 512} and not consts and not legacy
    assert tuple(tensors["state"][0].shape) == (2, 1, 128) and tensors["x"][0].dtype == torch.float32


def test_hostile_example_files_are_refused(files, tmp_path, capsys):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "empty.npz").write_bytes(b"")
    for spec, needle in ((f"x={tmp_path / 'obj.npy'}", "pickled"), (str(tmp_path / "empty.npz"), "is empty")):
        code, _, err = cli(main, [files["dir"] / "vad.pt", "-o", tmp_path / "v.dcz", "--trust-code", "--input", spec,
                                  "--input", "sr=16000"], capsys)
        assert code == 1 and not (tmp_path / "v.dcz").exists()
        one_line_error(err, needle)


def test_pt2_takes_example_tensors_not_constants(tmp_path, capsys):
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU()).eval()
    ep = torch.export.export(net, (torch.zeros(2, 4),))
    torch.export.save(ep, tmp_path / "n.pt2")
    np.savez(tmp_path / "ex.npz", x=np.ones((2, 4), np.float32))  # a static program: its own batch
    code, _, err = cli(main, [tmp_path / "n.pt2", "-o", tmp_path / "n.dcz", "--trust-code", "--input",
                              tmp_path / "ex.npz", "--lossless", "-q"], capsys)
    assert code == 0, err
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_out(tmp_path / "n.dcz", {dcformat.InferenceSession(tmp_path / "n.dcz").get_inputs()[0].name: x}),
                               want, rtol=1e-5, atol=1e-6)
    code, _, err = cli(main, [tmp_path / "n.pt2", "-o", tmp_path / "m.dcz", "--trust-code", "--input", "k=3"], capsys)
    assert code == 1 and not (tmp_path / "m.dcz").exists()
    one_line_error(err, "fixes its constant arguments")


def test_recurrent_state_with_its_batch_in_the_middle(files, tmp_path, capsys):
    """A state [2, batch, 4] (dim 1 named batch) and a tuple output: both outputs named, the graph runs at
    another batch and matches torch; --input gives the examples, --calibration (a directory) the samples."""
    cal = tmp_path / "cal"
    cal.mkdir()
    rng = np.random.default_rng(4)
    np.save(cal / "x.npy", rng.standard_normal((5, 4)).astype(np.float32))
    np.save(cal / "state.npy", np.zeros((5, 2, 1, 4), np.float32))  # a fixed first axis: an extra samples axis
    out = tmp_path / "c.dcz"
    code, _, err = cli(main, [files["dir"] / "cell.pt", "-o", out, "--trust-code", "--input", "x:1x4",
                              "--input", "state:2xbatch=1x4", "--lossless", "-q", "--calibration", cal], capsys)
    assert code == 0, err
    with dcformat.open(out) as r:
        assert r.metadata["fidelity"]["calibration"]["samples"] == 5
    sess = dcformat.InferenceSession(out)
    assert [o.name for o in sess.get_outputs()] == ["output", "output1"]
    assert [i.shape for i in sess.get_inputs()] == [["batch", 4], [2, "batch", 4]]
    x, st = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((2, 3, 4)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in files["cell"](torch.from_numpy(x), torch.from_numpy(st))]
    for got, w in zip(sess.run(None, {"x": x, "state": st}), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_examples_from_a_calibration_directory(tmp_path):
    """No --input: the first sample (along the first axis) of each --calibration array, named by its
    .npz key or its .npy file's stem."""
    from converters.torch_inputs import _expand

    np.save(tmp_path / "x.npy", np.arange(10, dtype=np.float32).reshape(5, 2))
    np.savez(tmp_path / "more.npz", mask=np.ones((5, 2), np.int64))
    got = {n: a for n, _, a in _expand([], str(tmp_path), "m.pt")}
    assert set(got) == {"x", "mask"} and got["x"].tolist() == [[0, 1]] and got["mask"].shape == (1, 2)

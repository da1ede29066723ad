"""The pipeline on any data: DataLoaders and Datasets with a custom loss and metric, .npz files and image folders,
resuming an interrupted run, proximal L1 training, and two processes under torch.distributed (gloo)."""

import os
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dcformat  # noqa: E402
from converters import data as D  # noqa: E402
from converters import pipeline as P  # noqa: E402
from converters.errors import ConvertError  # noqa: E402

TD = torch.utils.data.TensorDataset
DL = torch.utils.data.DataLoader
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: digits too


def img_mlp():
    """A model factory for the image-folder CLI test (``--model test_pipeline_data:img_mlp``)."""
    return P.MLP((1 * 10 * 12, 24, 3))


def _small(**kw):
    base = dict(sparsity=0.8, bits=4, epochs=2, retrain_epochs=1, finetune_epochs=1, schedule=(0.5, 1.0))
    return P.Settings(**{**base, **kw})


# --------------------------------------------------------------------------- DataLoaders, Datasets, custom loss


def test_dataloader_run_with_a_custom_loss_and_metric(tmp_path):
    """Regression (no classes): DataLoaders for training and evaluation, a Huber loss, minus the MSE as the score."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 2, generator=g))
    train = DL(TD(x[:256], y[:256]), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    val = DL(TD(x[256:], y[256:]), batch_size=64)
    calls = []

    def huber(out, target):
        calls.append(1)
        return torch.nn.functional.huber_loss(out, target, delta=0.5)

    score = P.negative_loss_fn(val, torch.nn.functional.mse_loss)
    torch.manual_seed(0)
    model = P.MLP((8, 32, 2))
    start = score(model)
    s = P.Settings(sparsity=0.5, bits=6, epochs=8, retrain_epochs=2, finetune_epochs=2, schedule=(1.0,), lr=1e-2)
    res = P.deep_compress(model, train, score, s, out=tmp_path / "r.dcz", loss_fn=huber, metric="minus MSE", unit="")
    assert calls and res.accuracy["compressed"] > start + 0.05  # it learned, with our loss
    train_losses = [h["loss"] for h in res.history if h.get("phase") == "train"]
    assert train_losses[-1] < train_losses[0]
    with dcformat.open(tmp_path / "r.dcz") as r:
        meta = r.metadata["accuracy"]
        assert meta["metric"] == "minus MSE" and meta["unit"] == ""
        assert np.mean(r["fc1.weight"] == 0) == pytest.approx(0.5, abs=0.01)
        assert np.array_equal(r["fc1.weight"], model.fc1.weight.detach().numpy())
    sess = dcformat.InferenceSession(str(tmp_path / "r.dcz"))
    np.testing.assert_allclose(sess.run(None, {"input": x[256:].numpy()})[0], model(x[256:]).detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_a_dataset_trains_exactly_like_the_same_arrays(digits, tmp_path):
    """A map-style Dataset is batched and shuffled with the same generator as in-memory arrays: same weights."""
    arrays = (digits.x_train, digits.y_train)
    dataset = TD(torch.as_tensor(digits.x_train), torch.as_tensor(digits.y_train))
    val = TD(torch.as_tensor(digits.x_test), torch.as_tensor(digits.y_test))
    out = {}
    for kind, data, ev in (("arrays", arrays, P.accuracy_fn(digits.x_test, digits.y_test)), ("dataset", dataset, val)):
        torch.manual_seed(0)
        res = P.deep_compress(P.MLP((64, 32, 10)), data, ev, _small(), out=tmp_path / f"{kind}.dcz")
        out[kind] = res
    assert out["dataset"].accuracy["compressed"] == pytest.approx(out["arrays"].accuracy["compressed"], abs=1e-4)
    with dcformat.open(tmp_path / "arrays.dcz") as a, dcformat.open(tmp_path / "dataset.dcz") as b:
        assert list(a) == list(b)
        for name in a:
            assert np.array_equal(a[name], b[name]), name
    assert P.ort_accuracy(tmp_path / "dataset.dcz", val) == pytest.approx(out["dataset"].accuracy["compressed"])


def test_batches_refuse_what_is_not_input_target_pairs():
    with pytest.raises(ConvertError, match="pairs"):
        list(P.batches([{"x": 1}]))


# --------------------------------------------------------------------------- resume


class Stop(Exception):
    """The simulated interruption."""


def _stop_at(**match):
    def progress(ev):
        if all(ev.get(k) == v for k, v in match.items()):
            raise Stop

    return progress


def _run(digits, out, state=None, progress=None, budget=False):
    torch.manual_seed(0)
    if budget:
        s = P.Settings(max_accuracy_drop=1.0, epochs=6, retrain_epochs=1, finetune_epochs=1, schedule=(0.5, 1.0),
                       scan_sparsities=(0.5, 0.8, 0.95), scan_bits=(2, 4, 6), lr=3e-3)
        model = P.MLP((64, 64, 10))
    else:
        s, model = _small(), P.MLP((64, 32, 10))
    return P.deep_compress(model, (digits.x_train, digits.y_train), P.accuracy_fn(digits.x_test, digits.y_test), s,
                           out=out, state=state, progress=progress, dataset="digits", source="test")


@pytest.mark.parametrize("where", ["dense epoch 1", "dense", "prune step 1", "finetune epoch"])
def test_resume_after_an_interruption_gives_the_same_file(digits, tmp_path, where):
    whole = tmp_path / "whole.dcz"
    _run(digits, whole)
    state, out = tmp_path / "run.state", tmp_path / "resumed.dcz"
    stop = {"dense epoch 1": _stop_at(kind="epoch", phase="train", epoch=1), "dense": _stop_at(phase="dense"),
            "prune step 1": _stop_at(kind="stage", step="step 1"),
            "finetune epoch": _stop_at(kind="epoch", phase="finetune")}[where]
    with pytest.raises(Stop):
        _run(digits, out, state, stop)
    assert state.exists() and not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left behind
    seen = []
    _run(digits, out, state, seen.append)
    assert out.read_bytes() == whole.read_bytes()
    assert not state.exists()  # removed once the file is written
    resumed = [e["message"] for e in seen if e.get("phase") == "resume"]
    want = {"dense epoch 1": "epoch 1 of dense training", "dense": "the dense model", "prune step 1": "pruning step 1",
            "finetune epoch": "pruning step 2"}[where]
    assert len(resumed) == 1 and resumed[0].endswith("saved after " + want)
    trained = [e["epoch"] for e in seen if e.get("kind") == "epoch" and e.get("phase") == "train"]
    assert trained == ([2] if where == "dense epoch 1" else [])  # nothing done twice


def test_resume_across_a_backoff(digits, tmp_path):
    """Interrupted when the first plan was over budget: the second attempt starts from the saved dense model."""
    _run(digits, tmp_path / "whole.dcz", budget=True)
    with pytest.raises(Stop):
        _run(digits, tmp_path / "r.dcz", tmp_path / "s", _stop_at(phase="backoff"), budget=True)
    res = _run(digits, tmp_path / "r.dcz", tmp_path / "s", budget=True)
    assert len(res.attempts) == 2
    assert (tmp_path / "r.dcz").read_bytes() == (tmp_path / "whole.dcz").read_bytes()


def test_a_state_of_another_run_or_a_damaged_one_is_refused(digits, tmp_path):
    state = tmp_path / "s"
    with pytest.raises(Stop):
        _run(digits, tmp_path / "o.dcz", state, _stop_at(phase="dense"))
    torch.manual_seed(0)
    with pytest.raises(ConvertError, match="different run"):
        P.deep_compress(P.MLP((64, 32, 10)), (digits.x_train, digits.y_train), lambda m: 0.0, _small(bits=5),
                        out=tmp_path / "o.dcz", state=state)
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ConvertError, match="not a readable pipeline state"):
        _run(digits, tmp_path / "o.dcz", state)
    torch.save({"format": "something else"}, state)
    with pytest.raises(ConvertError, match="not a pipeline state"):
        _run(digits, tmp_path / "o.dcz", state)


# --------------------------------------------------------------------------- proximal L1


def test_prox_step_is_soft_thresholding(digits):
    """One plain SGD step on the whole batch: w <- softshrink(w - lr g, lr lambda), with exact zeros."""
    torch.manual_seed(0)
    model = P.MLP((64, 16, 10))
    x, y = torch.as_tensor(digits.x_train[:200]), torch.as_tensor(digits.y_train[:200])
    w0 = model.fc1.weight.detach().clone()
    b0 = model.fc1.bias.detach().clone()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    g, gb = model.fc1.weight.grad.clone(), model.fc1.bias.grad.clone()
    lr, lam = 0.1, 1.0
    P.train(model, (x, y), 1, lr=lr, optimizer="sgd", batch_size=200, prox=lam)
    step = w0 - lr * g
    want = torch.sign(step) * torch.clamp(step.abs() - lr * lam, min=0)
    torch.testing.assert_close(model.fc1.weight.detach(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.fc1.bias.detach(), b0 - lr * gb, rtol=1e-5, atol=1e-6)  # biases: no prox
    zeros = model.fc1.weight.detach() == 0
    assert 0.05 < float(zeros.float().mean()) < 1 and not torch.signbit(model.fc1.weight.detach()[zeros]).any()


def test_prox_training_makes_the_weights_sparse(digits):
    torch.manual_seed(0)
    model = P.MLP((64, 32, 10))
    P.train(model, (digits.x_train, digits.y_train), 5, lr=3e-3, prox=0.5)
    assert P.sparsity(model) > 0.3
    assert P.accuracy_fn(digits.x_test, digits.y_test)(model) > 80


# --------------------------------------------------------------------------- files: .npz and image folders


def test_npz_with_x_y_and_with_splits(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.integers(0, 256, (50, 4, 4), dtype=np.uint8), y=np.arange(50) % 3)
    ds = D.load_npz(tmp_path / "a.npz")
    assert (len(ds.x_train), len(ds.x_test)) == (40, 10) and ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1
    assert sorted(np.concatenate([ds.y_train, ds.y_test]).tolist()) == sorted((np.arange(50) % 3).tolist())
    np.savez(tmp_path / "b.npz", x_train=rng.random((20, 3)), y_train=np.zeros(20, np.int32),
             x_val=rng.random((5, 3)), y_val=np.ones(5, np.int64))
    ds = D.load_npz(tmp_path / "b.npz")
    assert ds.x_test.shape == (5, 3) and ds.y_test.tolist() == [1] * 5 and ds.y_train.dtype == np.int64


def _npz_claiming(path, shape):
    """An .npz whose x.npy header claims ``shape`` float32 over a few bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue() + b"\0" * 16)
        b2 = io.BytesIO()
        np.save(b2, np.zeros(4, np.int64))
        z.writestr("y.npy", b2.getvalue())


@pytest.mark.parametrize("what, text", [
    ("huge", "claims"), ("object", "not numbers"), ("keys", "expected x and y"), ("junk", "not an .npz"),
    ("float labels", "integer class labels"), ("lengths", "N samples and N labels"),
])
def test_npz_hostile_files_are_one_line_errors(tmp_path, what, text):
    p = tmp_path / "h.npz"
    if what == "huge":
        _npz_claiming(p, (1 << 20, 1 << 20))
    elif what == "object":
        np.savez(p, x=np.array([None, 1], dtype=object), y=np.zeros(2, np.int64))
    elif what == "keys":
        np.savez(p, images=np.zeros((2, 2)))
    elif what == "junk":
        p.write_bytes(b"PK\x03\x04 not really")
    elif what == "float labels":
        np.savez(p, x=np.zeros((4, 2)), y=np.zeros(4))
    else:
        np.savez(p, x=np.zeros((4, 2)), y=np.zeros(3, np.int64))
    with pytest.raises(ConvertError, match=text) as e:
        D.load_npz(p)
    assert "\n" not in str(e.value)


def _image_folder(d, n=12, colour_one=False, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "emu"]):
        (d / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = (rng.random(size[::-1]) * 60).astype(np.uint8)
            a[:, c * 4 : (c + 1) * 4] += 150  # each class lights a band of columns
            Image.fromarray(a).save(d / name / f"{i}.png")
    if colour_one:
        Image.fromarray(np.zeros((5, 7, 3), np.uint8) + 255).save(d / "dog" / "odd.png")
    (d / "dog" / "notes.txt").write_text("not an image")
    return d


def test_image_folder_dataset(tmp_path):
    train, val = D.image_folder(_image_folder(tmp_path / "imgs"))
    assert train.classes == ["cat", "dog", "emu"] and (len(train), len(val)) == (29, 7)  # 36 images, .txt ignored
    x, y = train[0]
    assert x.shape == (1, 10, 12) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == np.int64
    labels = sorted(int(train[i][1]) for i in range(len(train))) + sorted(int(val[i][1]) for i in range(len(val)))
    assert sorted(labels) == sorted([0] * 12 + [1] * 12 + [2] * 12)
    # a colour image among grey ones: everything RGB; another size: resized
    train, val = D.image_folder(_image_folder(tmp_path / "mixed", colour_one=True), size=(6, 5))
    shapes = {train[i][0].shape for i in range(len(train))} | {val[i][0].shape for i in range(len(val))}
    assert shapes == {(3, 5, 6)}
    # train/ and val/ folders
    _image_folder(tmp_path / "split" / "train", n=4)
    _image_folder(tmp_path / "split" / "val", n=2)
    train, val = D.image_folder(tmp_path / "split")
    assert (len(train), len(val)) == (12, 6)
    (tmp_path / "split" / "val" / "emu" / "0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ConvertError, match="not a readable image"):
        [val[i] for i in range(len(val))]
    with pytest.raises(ConvertError, match="class subfolders"):
        D.image_folder(tmp_path / "split" / "val" / "emu")


def test_cli_pipeline_on_an_image_folder_and_an_npz(tmp_path, capsys):
    from converters.demo import main

    d = _image_folder(tmp_path / "imgs")
    common = ["--epochs", "4", "--retrain-epochs", "1", "--finetune-epochs", "1", "--schedule", "1",
              "--sparsity", "0.5", "--batch-size", "8", "--threads", "1", "--lr", "5e-3"]
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--model", "test_pipeline_data:img_mlp", "--data", str(d), "-o", str(tmp_path / "i.dcz")]
             + common + ["--trust-code"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "29 training and 7 held-out samples of shape 1x10x12, 3 classes" in text and "ONNX Runtime" in text
    with dcformat.open(tmp_path / "i.dcz") as r:
        assert np.mean(r["fc1.weight"] == 0) == pytest.approx(0.5, abs=0.01)
        assert r.metadata["source"]["data"] == "imgs"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.random((60, 120)).astype(np.float32), y=np.arange(60) % 3)
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--model", "test_pipeline_data:img_mlp", "--data", str(tmp_path / "a.npz"), "-q",
              "-o", str(tmp_path / "n.dcz"), "--trust-code"] + common)
    assert e.value.code == 0 and (tmp_path / "n.dcz").exists()


def factory():
    """A --data-factory: (train, val) TensorDatasets with a regression loss and score."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 120, generator=g)
    y = x[:, :3].clone()
    return {"train": TD(x[:64], y[:64]), "val": TD(x[64:], y[64:]), "loss_fn": torch.nn.functional.mse_loss,
            "evaluate": P.negative_loss_fn(TD(x[64:], y[64:]), torch.nn.functional.mse_loss),
            "metric": "minus MSE", "unit": ""}


def test_cli_data_factory(tmp_path, capsys):
    from converters.demo import main

    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--model", "test_pipeline_data:img_mlp", "--data-factory", "test_pipeline_data:factory",
              "--epochs", "2", "--retrain-epochs", "1", "--finetune-epochs", "0", "--schedule", "1", "--threads", "1",
              "-q", "-o", str(tmp_path / "f.dcz"), "--resume", "--trust-code"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "minus MSE: dense" in out and "ONNX Runtime" not in out
    assert not (tmp_path / "f.dcz.state").exists()
    for args, text in ((["--data", "digits", "--data-factory", "x:y"], "one of them"),
                       (["--data-factory", "test_pipeline_data:img_mlp"], "expected (train, val)")):
        with pytest.raises(SystemExit) as e:
            main(["pipeline", "--model", "test_pipeline_data:img_mlp", "-o", str(tmp_path / "g.dcz"), "--trust-code"]
                 + args)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code in (1, 2) and len(err) == 1 and text in err[0]


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_gloo_match_one(digits, tmp_path, capsys):
    """torchrun --nproc-per-node 2 on 127.0.0.1 (gloo, CPU): each rank trains on half of every batch inside
    DistributedDataParallel; the file equals the single-process run's to float rounding, with the same zeros."""
    from converters.demo import main

    np.savez(tmp_path / "d.npz", x_train=digits.x_train[:640], y_train=digits.y_train[:640],
             x_test=digits.x_test[:120], y_test=digits.y_test[:120])
    args = ["--model", "converters.pipeline:digits_mlp", "--data", str(tmp_path / "d.npz"), "--epochs", "2",
            "--retrain-epochs", "1", "--finetune-epochs", "1", "--schedule", "0.5,1", "--batch-size", "64",
            "--threads", "1", "-q"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "converters.pipeline_cli", *args, "-o", str(tmp_path / "two.dcz")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)
    with pytest.raises(SystemExit) as e:
        main(["pipeline", *args, "-o", str(tmp_path / "one.dcz")])
    assert e.value.code == 0
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "one.dcz", "two.dcz"]
    with dcformat.open(tmp_path / "one.dcz") as a, dcformat.open(tmp_path / "two.dcz") as b:
        assert list(a) == list(b)
        for name in a:
            assert np.array_equal(a[name] == 0, b[name] == 0), name  # the same masks
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-4, err_msg=name)
            if name.endswith("weight"):
                assert len(np.unique(b[name])) == len(np.unique(a[name]))  # the same codebooks' sizes
        assert b.metadata["accuracy"]["compressed"] == pytest.approx(a.metadata["accuracy"]["compressed"], abs=2.0)


@pytest.mark.parametrize("kind", ["arrays", "dataset"])
def test_each_process_gets_its_share_of_every_batch(monkeypatch, kind):
    """With 2 processes, rank r takes batch[r::2] of the batch one process would use, in the same order; in
    training (whole) a last batch too small to split is skipped by both, in evaluation nothing is lost."""
    x, y = torch.arange(50.0).reshape(25, 2), torch.arange(25)
    data = (x, y) if kind == "arrays" else TD(x, y)

    def run(**kw):
        return [yb.tolist() for _, yb in P.batches(data, 8, generator=torch.Generator().manual_seed(3), **kw)]

    single = run()
    assert [len(b) for b in single] == [8, 8, 8, 1]
    shares = {}
    for rank in (0, 1):
        monkeypatch.setattr(P.dist, "rank_world", lambda rank=rank: (rank, 2))
        shares[rank, False], shares[rank, True] = run(), run(whole=True)
    assert shares[0, False] == [b[0::2] for b in single] and shares[1, False] == [b[1::2] for b in single[:3]]
    assert shares[0, True] == [b[0::2] for b in single[:3]] and shares[1, True] == shares[1, False]
    assert len(P.first_batch(data)[1]) == 2  # the probe for the input shape is never split


def test_cli_resume_after_an_interruption(digits, tmp_path, capsys):
    """dcz pipeline --resume: interrupted after the first pruning step, the same command writes the same file."""
    from converters.demo import main
    from converters.pipeline_cli import run_pipeline

    np.savez(tmp_path / "d.npz", x_train=digits.x_train[:400], y_train=digits.y_train[:400],
             x_test=digits.x_test[:100], y_test=digits.y_test[:100])
    args = ["pipeline", "--model", "converters.pipeline:digits_mlp", "--data", str(tmp_path / "d.npz"), "--epochs", "1",
            "--retrain-epochs", "1", "--finetune-epochs", "1", "--schedule", "0.5,1", "--threads", "1", "-q"]
    with pytest.raises(SystemExit) as e:
        main(args + ["-o", str(tmp_path / "whole.dcz")])
    assert e.value.code == 0

    def interrupt(message):
        if message.startswith("pruned to"):
            raise KeyboardInterrupt

    out = tmp_path / "resumed.dcz"
    s = P.Settings(epochs=1, retrain_epochs=1, finetune_epochs=1, schedule=(0.5, 1.0))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(model_spec="converters.pipeline:digits_mlp", data=str(tmp_path / "d.npz"), output=str(out),
                     settings=s, echo=interrupt, resume=True)
    assert (tmp_path / "resumed.dcz.state").exists() and not out.exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args[:-1] + ["-o", str(out), "--resume"])
    assert e.value.code == 0
    assert "resuming from" in capsys.readouterr().out
    assert out.read_bytes() == (tmp_path / "whole.dcz").read_bytes()
    assert not (tmp_path / "resumed.dcz.state").exists()

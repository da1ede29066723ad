"""The PyTorch Deep Compression pipeline: masked retraining, trained quantization, the .dcz,
the accuracy budget, neuron pruning, the IDX loader and `dcz pipeline`."""

import copy
import gzip
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dcformat  # noqa: E402
from converters import data as D  # noqa: E402
from converters import pipeline as P  # noqa: E402
from converters.errors import ConvertError  # noqa: E402
from converters.settings import SettingError  # noqa: E402


from conftest import torch_threads  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: digits too


@pytest.fixture(scope="module")
def trained(digits):
    """A 64-64-10 MLP trained on the digits (shared; tests deep-copy it)."""
    with torch_threads(1):
        torch.manual_seed(0)
        model = P.MLP((64, 64, 10))
        P.train(model, (digits.x_train, digits.y_train), 15, lr=3e-3)
    return model


def _fresh(trained):
    return copy.deepcopy(trained)


def _data(d):
    return d.x_train, d.y_train


# --------------------------------------------------------------------------- pruning


def test_masks_stay_enforced_through_retraining(trained, digits):
    model = _fresh(trained)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = P.magnitude_masks(model, {"fc1.weight": 0.8, "fc2.weight": 0.7})
    P.train(model, _data(digits), 2, lr=1e-2, masks=masks, l1=1e-4, l2=1e-4, seed=3)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        w = params[name].detach()
        assert torch.all(w[~m] == 0) and not torch.signbit(w[~m]).any()  # exactly +0.0
        assert (~m).float().mean() == pytest.approx({"fc1.weight": 0.8, "fc2.weight": 0.7}[name], abs=1e-3)
        assert not torch.equal(w[m], before[name][m])  # the kept weights did train
    # SGD with momentum too: no update sneaks through
    P.train(model, _data(digits), 1, lr=1e-2, optimizer="sgd", masks=masks)
    for name, m in masks.items():
        assert torch.all(params[name].detach()[~m] == 0)


def test_schedule_reaches_target_sparsity(trained, digits):
    model = _fresh(trained)
    s = P.Settings(schedule=(0.5, 0.8), retrain_epochs=1)
    assert s.schedule == (0.5, 0.8, 1.0)  # the target itself is always the last step
    seen = []
    masks, hist = P.iterative_prune(model, _data(digits), {"fc1.weight": 0.9, "fc2.weight": 0.6}, s,
                                    evaluate=P.accuracy_fn(digits.x_test, digits.y_test), progress=seen.append)
    params = dict(model.named_parameters())
    for name, target in (("fc1.weight", 0.9), ("fc2.weight", 0.6)):
        w = params[name].detach()
        assert int((w == 0).sum()) == round(target * w.numel())
    steps = [h["sparsity"] for h in hist]
    assert len(steps) == 3 and steps == sorted(steps)
    assert any(e["kind"] == "epoch" and {"loss", "accuracy", "sparsity"} <= set(e) for e in seen)


def test_separate_phases_prune_conv_first(digits):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    x = digits.x_train[:256].reshape(-1, 1, 8, 8)
    s = P.Settings(schedule=(0.5, 1.0), retrain_epochs=1, separate_phases=True)
    masks, hist = P.iterative_prune(model, (x, digits.y_train[:256]), {"0.weight": 0.5, "3.weight": 0.8}, s)
    assert [h["step"].split()[0] for h in hist] == ["conv", "conv", "fc", "fc"]
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.03)
    assert float((model[3].weight == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)


def test_neuron_pruning_zeroes_whole_rows(trained):
    model = _fresh(trained)
    masks = P.neuron_masks(model, {"fc1.weight": 0.25})
    P.apply_masks(model, masks)
    w, b = model.fc1.weight.detach(), model.fc1.bias.detach()
    dead = (w == 0).all(1)
    assert int(dead.sum()) == 16 and torch.all(b[dead] == 0)
    assert not (w[~dead] == 0).all(1).any() and w.shape == (64, 64)
    norms = trained.fc1.weight.detach().norm(dim=1)
    assert norms[dead].max() <= norms[~dead].min()  # the smallest L2 norms went
    # conv filters
    conv = torch.nn.Conv2d(3, 8, 3)
    m = P.neuron_masks(conv, {"weight": 0.5})
    P.apply_masks(conv, m)
    assert int((conv.weight.detach() == 0).reshape(8, -1).all(1).sum()) == 4


def test_pruning_curves_weight_vs_neuron(trained, digits, tmp_path):
    model = _fresh(trained)
    curves = P.pruning_curves(model, P.accuracy_fn(digits.x_test, digits.y_test), fractions=(0.2, 0.9))
    assert curves["layers"] == ["fc1.weight"]  # the output layer's rows are the classes
    assert [p["fraction"] for p in curves["weight"]] == [0.2, 0.9]
    assert curves["neuron"][1]["sparsity"] == pytest.approx(0.9, abs=0.02)
    assert curves["neuron"][1]["accuracy"] < curves["weight"][1]["accuracy"]  # structure costs accuracy
    assert torch.equal(model.fc1.weight, trained.fc1.weight)  # restored
    out = P.plot_pruning_curves(curves, tmp_path / "curves.png")
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- trained quantization


def test_centroid_finetuning(trained, digits):
    model = _fresh(trained)
    masks = P.magnitude_masks(model, {"fc1.weight": 0.8, "fc2.weight": 0.5})
    P.apply_masks(model, masks)
    q = P.quantize_layers(model, {"fc1.weight": 3, "fc2.weight": 2})
    zeros = {n: q[n].indices == 0 for n in q}
    loss0 = P.mean_loss(model, _data(digits))
    P.finetune_centroids(model, _data(digits), q, epochs=2, lr=1e-3, masks=masks)
    loss1 = P.mean_loss(model, _data(digits))
    assert loss1 <= loss0
    params = dict(model.named_parameters())
    for name, bits in (("fc1.weight", 3), ("fc2.weight", 2)):
        w = params[name].detach().numpy()
        assert np.array_equal(w, q[name].values())  # the weights are exactly codebook[indices]
        assert len(np.unique(w[w != 0])) <= 2 ** bits
        assert q[name].codebook[0] == 0 and np.all(w[zeros[name]] == 0)  # pruned zeros stay zero
        assert np.all(w[~masks[name].numpy()] == 0)


def test_centroid_gradient_is_the_sum_over_shared_weights(trained, digits):
    """One plain SGD step on the whole batch: centroid k moves by lr x sum of its weights' gradients."""
    model = _fresh(trained)
    q = P.quantize_layers(model, {"fc1.weight": 2, "fc2.weight": 2})
    x, y = torch.as_tensor(digits.x_train[:200]), torch.as_tensor(digits.y_train[:200])
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    g = model.fc1.weight.grad.detach().numpy().reshape(-1)
    want = np.bincount(q["fc1.weight"].indices.reshape(-1), weights=g, minlength=q["fc1.weight"].codebook.size)
    cb0 = q["fc1.weight"].codebook.copy()
    model.zero_grad()
    P.finetune_centroids(model, (x, y), q, epochs=1, lr=0.1, optimizer="sgd", batch_size=200, train_others=False,
                         keep_best=False)
    np.testing.assert_allclose(cb0 - q["fc1.weight"].codebook, 0.1 * want, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- the .dcz


def test_dcz_holds_exactly_the_finetuned_codebooks(trained, digits, tmp_path):
    model = _fresh(trained)
    s = P.Settings(sparsity=0.8, bits="fc1*=4,fc2*=3", schedule=(1.0,), retrain_epochs=1, finetune_epochs=1)
    out = tmp_path / "m.dcz"
    res = P.deep_compress(model, _data(digits), P.accuracy_fn(digits.x_test, digits.y_test), s, out=out,
                          dataset="digits test")
    assert set(res.quantized) == {"fc1.weight", "fc2.weight"} and not res.notes
    with dcformat.open(out) as r:
        r.verify()
        for name, q in res.quantized.items():
            assert np.array_equal(r[name], q.values())
            assert r.info(name).codebook_size <= 2 ** q.bits
            assert np.array_equal(r[name], dict(model.named_parameters())[name].detach().numpy())
        assert np.array_equal(r["fc1.bias"], model.fc1.bias.detach().numpy())
        meta = r.metadata
    assert {"producer", "settings", "accuracy", "source"} <= set(meta)
    assert set(meta["accuracy"]) >= {"dense", "pruned", "compressed", "dataset"}
    assert meta["accuracy"]["compressed"] == round(res.accuracy["compressed"], 4)
    assert meta["settings"]["layers"]["fc2.weight"]["bits"] == 3
    # ONNX Runtime on the decoded file predicts exactly what the torch model predicts
    ort = P.ort_predict(out, digits.x_test)
    assert np.array_equal(ort, P.predict(model, digits.x_test).numpy())
    assert P.ort_accuracy(out, digits.x_test, digits.y_test) == pytest.approx(res.accuracy["compressed"], abs=1e-4)


def test_conv_batchnorm_export_keeps_weights_and_names(digits, tmp_path):
    """BatchNorm is not folded into the conv weights, so the stored conv weight is codebook[indices]."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(216, 10))
    x = digits.x_train[:300].reshape(-1, 1, 8, 8)
    xt = digits.x_test.reshape(-1, 1, 8, 8)
    P.train(model, (x, digits.y_train[:300]), 1)
    q = P.quantize_layers(model, {"0.weight": 4, "4.weight": 3})
    out = tmp_path / "c.dcz"
    info = P.write_dcz(model, q, out, (1, 1, 8, 8))
    assert not info["notes"]
    with dcformat.open(out) as r:
        assert {"0.weight", "1.running_mean", "4.weight"} <= set(r)
        for name in q:
            assert np.array_equal(r[name], q[name].values())
    assert np.array_equal(P.ort_predict(out, xt), P.predict(model, xt).numpy())


def test_accuracy_budget_is_respected(trained, digits, tmp_path):
    model = _fresh(trained)
    ev = P.accuracy_fn(digits.x_test, digits.y_test)
    s = P.Settings(max_accuracy_drop=1.0, bits="fc2*=5", retrain_epochs=1, finetune_epochs=1, schedule=(0.5, 1.0),
                   scan_sparsities=(0.5, 0.8, 0.95), scan_bits=(2, 4, 6))
    res = P.deep_compress(model, _data(digits), ev, s, out=tmp_path / "b.dcz", report_dir=tmp_path / "rep")
    assert res.within_budget and res.accuracy["compressed"] >= res.accuracy["dense"] - 1.0
    assert P.ort_accuracy(tmp_path / "b.dcz", digits.x_test, digits.y_test) >= res.accuracy["dense"] - 1.0 - 1e-6
    assert res.plan["fc2.weight"]["bits"] == 5  # a layer given a value keeps it
    assert res.plan["fc1.weight"]["bits"] in (2, 4, 6)
    plans = [tuple(sorted((n, c["sparsity"], c["bits"]) for n, c in a["plan"].items())) for a in res.attempts]
    assert len(set(plans)) == len(plans)  # backing off never repeats a plan
    assert [a["within_budget"] for a in res.attempts] == [False] * (len(plans) - 1) + [True]
    assert set(res.scan.sparsity) == {"fc1.weight", "fc2.weight"}
    for f in ("report.json", "sensitivity_sparsity.png", "sensitivity_bits.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 100
    with dcformat.open(tmp_path / "b.dcz") as r:
        assert r.metadata["settings"]["max_accuracy_drop"] == 1.0


def test_choose_plan_knapsack():
    scan = P.Scan(dense=90.0, params={"a": 10000, "b": 10000},
                  sparsity={"a": [[0.5, 90.0], [0.9, 89.9]], "b": [[0.5, 89.2], [0.9, 80.0]]},
                  bits={"a": [[2, 90.0], [8, 90.0]], "b": [[2, 85.0], [8, 90.0]]})
    plan = P.choose_plan(scan, budget=1.0)
    assert plan["a"] == {**plan["a"], "sparsity": 0.9, "bits": 2}  # insensitive: everything
    assert plan["b"]["sparsity"] == 0.5 and plan["b"]["bits"] == 8  # sensitive: what the budget allows
    assert sum(c["drop"] for c in plan.values()) <= 1.0
    assert P.choose_plan(scan, budget=0.0)["b"]["sparsity"] == 0.0
    assert P.choose_plan(scan, 100.0, fixed_bits={"b": 8})["b"]["bits"] == 8
    assert P.estimate_bytes(10000, 0.9, 4) < P.estimate_bytes(10000, 0.5, 4) < P.estimate_bytes(10000, 0.0, 4)


def test_settings_errors(trained, digits):
    with pytest.raises(SettingError):
        P.Settings(schedule=(0.8, 0.5))
    with pytest.raises(SettingError):
        P.Settings(bits="fc*=9")
    with pytest.raises(SettingError, match="matches no layer"):
        P.deep_compress(_fresh(trained), _data(digits), lambda m: 0.0, P.Settings(sparsity="conv*=0.5"))


# --------------------------------------------------------------------------- data


def _idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(d, n_train=40, n_test=10, gz=True, corrupt=None):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_train, 8, 8), dtype=np.uint8)),
        "train-labels-idx1-ubyte": _idx(rng.integers(0, 3, n_train, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": _idx(rng.integers(0, 3, n_test, dtype=np.uint8)),
    }
    if corrupt:
        corrupt(files)
    d.mkdir(exist_ok=True)
    for name, blob in files.items():
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress(blob, mtime=0))
        else:
            (d / name).write_bytes(blob)
    return d


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_mnist_layout(tmp_path, gz):
    ds = D.load_idx_dir(_write_mnist(tmp_path / "m", gz=gz))
    assert ds.x_train.shape == (40, 8, 8) and ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1
    assert ds.y_test.shape == (10,) and ds.y_test.dtype == np.int64 and ds.classes <= 3


CORRUPTIONS = {
    "bad magic": lambda f: f.__setitem__("train-images-idx3-ubyte", b"\x12\x34" + f["train-images-idx3-ubyte"][2:]),
    "unknown type": lambda f: f.__setitem__("train-labels-idx1-ubyte", b"\x00\x00\x07\x01" + f["train-labels-idx1-ubyte"][4:]),
    "truncated data": lambda f: f.__setitem__("t10k-images-idx3-ubyte", f["t10k-images-idx3-ubyte"][:-5]),
    "trailing data": lambda f: f.__setitem__("t10k-labels-idx1-ubyte", f["t10k-labels-idx1-ubyte"] + b"\x00"),
    "truncated header": lambda f: f.__setitem__("train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00"),
    "count mismatch": lambda f: f.__setitem__("train-labels-idx1-ubyte", _idx(np.zeros(39, np.uint8))),
    "labels not 1-D": lambda f: f.__setitem__("train-labels-idx1-ubyte", _idx(np.zeros((40, 1), np.uint8))),
    "missing file": lambda f: f.pop("t10k-labels-idx1-ubyte"),
}


@pytest.mark.parametrize("what", sorted(CORRUPTIONS))
def test_idx_loader_rejects_corrupt_files(tmp_path, what):
    d = _write_mnist(tmp_path / "m", corrupt=CORRUPTIONS[what])
    with pytest.raises(ConvertError) as e:
        D.load_idx_dir(d)
    assert "\n" not in str(e.value) and str(e.value)


def test_idx_loader_rejects_damaged_gzip(tmp_path):
    d = _write_mnist(tmp_path / "m")
    blob = (d / "train-images-idx3-ubyte.gz").read_bytes()
    (d / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ConvertError, match="gzip"):
        D.load_idx_dir(d)


def test_fashion_mnist_headers():
    import os

    if not os.path.isdir(D.FASHION_MNIST):
        pytest.skip("no Fashion-MNIST on this machine")
    labels = D.read_idx(os.path.join(D.FASHION_MNIST, "t10k-labels-idx1-ubyte.gz"))
    assert labels.shape == (10000,) and labels.max() == 9


# --------------------------------------------------------------------------- the command line


def test_cli_pipeline_on_idx_files(tmp_path, capsys):
    from converters.demo import main

    d = _write_mnist(tmp_path / "m", n_train=64, n_test=16)
    out = tmp_path / "o.dcz"
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--model", "converters.pipeline:digits_mlp", "--data", str(d), "--input-shape", "1,64",
              "-o", str(out), "--epochs", "1", "--retrain-epochs", "1", "--finetune-epochs", "1", "--schedule", "1",
              "--sparsity", "fc1*=0.95,0.8", "--bits", "fc2*=6,4", "--threads", "1", "--report-dir", str(tmp_path / "rep")])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "fc1.weight" in text and "compression:" in text and "ONNX Runtime" in text
    with dcformat.open(out) as r:
        w = r["fc1.weight"]
        assert w.shape == (256, 64) and np.mean(w == 0) == pytest.approx(0.95, abs=0.01)
        assert len(np.unique(r["fc2.weight"])) <= 2 ** 6 + 1
        assert r.metadata["settings"]["layers"]["fc1.weight"]["bits"] == 4
    assert (tmp_path / "rep" / "report.json").exists()


@pytest.mark.parametrize("args, code, text", [
    (["--bits", "fc*=9"], 2, "--bits"),
    (["--sparsity", "conv*=0.5"], 2, "matches no layer"),
    (["--model", "nowhere.module:f"], 1, "nowhere"),
    (["--input-shape", "1,63"], 2, "--input-shape"),
    (["--data", "/nonexistent/dir"], 2, "--data"),
])
def test_cli_pipeline_errors_are_one_line(tmp_path, capsys, args, code, text):
    from converters.demo import main

    d = _write_mnist(tmp_path / "m")
    base = {"--model": "converters.pipeline:digits_mlp", "--data": str(d), "-o": str(tmp_path / "o.dcz"),
            "--epochs": "0", "--threads": "1"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    with pytest.raises(SystemExit) as e:
        main(["pipeline"] + [x for kv in base.items() for x in kv])
    assert e.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and text in err[0]


def test_cli_pipeline_corrupt_data_is_one_line(tmp_path, capsys):
    from converters.demo import main

    d = _write_mnist(tmp_path / "m", corrupt=CORRUPTIONS["truncated data"])
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--model", "converters.pipeline:digits_mlp", "--data", str(d), "-o", str(tmp_path / "o.dcz")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t10k-images" in err[0]


def test_cli_pipeline_checkpoint(tmp_path, capsys):
    from converters.demo import main

    d = _write_mnist(tmp_path / "m")
    torch.manual_seed(5)
    good = P.digits_mlp()
    torch.save(good.state_dict(), tmp_path / "good.pt")
    torch.save(P.MLP((64, 10)).state_dict(), tmp_path / "bad.pt")
    torch.save(good, tmp_path / "pickled.pt")  # a whole module: never unpickled
    args = ["pipeline", "--model", "converters.pipeline:digits_mlp", "--data", str(d), "-o", str(tmp_path / "o.dcz"),
            "--retrain-epochs", "0", "--finetune-epochs", "0", "--threads", "1", "-q"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--checkpoint", str(tmp_path / "good.pt"), "--sparsity", "0", "--bits", "8"])
    assert e.value.code == 0
    assert "training the dense model" not in capsys.readouterr().out  # a checkpoint is not trained further by default
    with dcformat.open(tmp_path / "o.dcz") as r:  # 8-bit sharing of the checkpoint's own weights
        err = np.abs(r["fc1.weight"] - good.fc1.weight.detach().numpy()).max()
        assert err < 0.01 and np.array_equal(r["fc1.bias"], good.fc1.bias.detach().numpy())
    for name, text in (("bad.pt", "does not fit the model: Missing key(s) in state_dict: \"fc2.weight\""),
                       ("pickled.pt", "weights_only")):
        with pytest.raises(SystemExit) as e:
            main(args + ["--checkpoint", str(tmp_path / name)])
        assert e.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
    # a training checkpoint dict: the weights are taken from its 'model' entry, and the note says so
    torch.save({"model": good.state_dict(), "epoch": 7, "optimizer": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit) as e:
        main([a for a in args if a != "-q"] + ["--checkpoint", str(tmp_path / "ckpt.pt"), "--sparsity", "0",
                                               "--bits", "8"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "note: the checkpoint is a dict: its weights come from ['model']; ignored: epoch, optimizer" in out


def test_divergence_is_reported(trained, digits):
    with pytest.raises(ConvertError, match="diverged"):
        P.train(_fresh(trained), _data(digits), 1, lr=1e30, optimizer="sgd")

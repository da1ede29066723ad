"""The built-in demo: trains (PyTorch), compresses, writes, decodes and runs in ONNX Runtime."""

import numpy as np
import pytest

import dcformat
from converters import demo

pytest.importorskip("torch")


def test_demo_pipeline(tmp_path):
    out = tmp_path / "demo.dcz"
    f = demo.build(str(out), echo=lambda *a: None)
    assert out.stat().st_size == f["dcz_bytes"]
    assert f["fp32_bytes"] / f["dcz_bytes"] > 12  # 90% sparse, 5 bits, Huffman-coded
    assert f["accuracy"] > f["dense_accuracy"] - 2.0
    assert f["accuracy"] == pytest.approx(f["torch_accuracy"], abs=1e-4) and f["same_predictions"]
    with dcformat.open(out) as r:
        r.verify()
        meta = r.metadata
        assert meta["producer"].startswith("dcz pipeline") and "digits" in meta["source"]
        assert meta["settings"]["bits"] == 5 and meta["settings"]["sparsity"] == 0.9
        assert meta["accuracy"]["compressed"] == round(f["torch_accuracy"], 4)
        assert meta["accuracy"]["dense"] == round(f["dense_accuracy"], 4)
        assert meta["accuracy"]["pruned"] is not None and "digits" in meta["accuracy"]["dataset"]
        for name, q in f["result"].quantized.items():
            assert np.array_equal(r[name], q.values())  # the fine-tuned codebooks, exactly
        w = r["fc1.weight"]
        assert w.shape == (256, 64) and np.mean(w == 0) >= 0.89
        assert len(np.unique(w[w != 0])) <= 32
    # same input and options give the same bytes
    out2 = tmp_path / "again.dcz"
    demo.build(str(out2), echo=lambda *a: None)
    assert out.read_bytes() == out2.read_bytes()


def test_demo_cli_with_accuracy_budget(tmp_path, capsys):
    out = tmp_path / "b.dcz"
    with pytest.raises(SystemExit) as e:
        demo.main(["demo", "-o", str(out), "--max-accuracy-drop", "1", "--report-dir", str(tmp_path / "rep")])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "sensitivity scan" in text and "fc2.weight" in text and "compression:" in text
    with dcformat.open(out) as r:
        acc = r.metadata["accuracy"]
        assert acc["compressed"] >= acc["dense"] - 1.0
    assert (tmp_path / "rep" / "sensitivity_sparsity.png").exists()


def test_demo_cli_bad_flag(capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["demo", "--bits", "9"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")

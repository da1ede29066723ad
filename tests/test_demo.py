"""The built-in demo: trains, compresses, writes, decodes and runs in ONNX Runtime."""

import numpy as np

import dcformat
from converters import demo


def test_demo_pipeline(tmp_path):
    out = tmp_path / "demo.dcz"
    f = demo.build(str(out), echo=lambda *a: None)
    assert out.stat().st_size == f["dcz_bytes"]
    assert f["fp32_bytes"] / f["dcz_bytes"] > 12  # 90% sparse, 5 bits, Huffman-coded
    assert f["accuracy"] > f["dense_accuracy"] - 2.0
    with dcformat.open(out) as r:
        r.verify()
        meta = r.metadata
        assert meta["settings"]["bits"] == 5
        assert meta["accuracy"]["compressed"] == round(f["accuracy"], 4)
        w = r["fc1.weight"]
        assert w.shape == (256, 64) and np.mean(w == 0) >= 0.89
        assert len(np.unique(w[w != 0])) <= 32
    # same input and options give the same bytes
    out2 = tmp_path / "again.dcz"
    demo.build(str(out2), echo=lambda *a: None)
    assert out.read_bytes() == out2.read_bytes()


def test_demo_cli_bad_flag(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        demo.main(["demo", "--bits", "9"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")

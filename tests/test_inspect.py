"""dcinspect: per-tensor accounting that adds up to the file size, outputs, plots, verify, other inputs."""

import json
import os

import numpy as np
import pytest

import dcformat
from dcformat import cli, inspect as insp

VECTORS = os.path.join(os.path.dirname(__file__), "..", "spec", "vectors")


def _run(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cli.inspect_main(list(map(str, args)))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    cb = np.array([0, -0.3, -0.1, 0.1, 0.3], np.float32)
    idx = np.where(rng.random((64, 100)) < 0.9, 0, rng.integers(1, 5, (64, 100)))
    tensors = [
        dcformat.encode_codebook("fc1.weight", cb, idx),
        dcformat.encode_codebook("conv.weight", rng.standard_normal(16), rng.integers(0, 16, (8, 4, 3, 3)),
                                 encoding="codebook-dense"),
        dcformat.encode("fc1.bias", rng.standard_normal(64).astype(np.float32)),
    ]
    p = tmp_path / "m.dcz"
    dcformat.write(p, tensors, metadata={"producer": "test", "accuracy": {"top1": 97.5}, "source_sha256": "ab" * 32})
    return p


def test_rows_plus_overhead_is_file_size(model):
    rep = insp.inspect_dcz(model)
    assert sum(r["bytes"] for r in rep["tensors"]) + rep["overhead"]["total"] == rep["size"] == model.stat().st_size
    o = rep["overhead"]
    assert sum(v for k, v in o.items() if k != "total") == o["total"]
    fc1 = rep["tensors"][0]
    assert fc1["encoding"] == "codebook-sparse" and fc1["bits"] == 2 and fc1["codebook_size"] == 4
    with dcformat.open(model) as r:
        assert fc1["nonzeros"] == np.count_nonzero(r["fc1.weight"])
        info = r.info("fc1.weight")
    assert fc1["gap_bytes"] == info.parts["gaps"] + info.parts["lane_bases"]
    assert fc1["index_bytes"] + fc1["gap_bytes"] + fc1["codebook_bytes"] + fc1["padding_bytes"] == fc1["bytes"]
    assert fc1["bytes"] == info.nbytes and 0 <= fc1["padding_bytes"] < 8 * len(info.parts)  # the section, as dcconvert says


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(VECTORS) if f.endswith(".dcz")))
def test_vectors_add_up(name):
    rep = insp.inspect_dcz(os.path.join(VECTORS, name))
    assert sum(r["bytes"] for r in rep["tensors"]) + rep["overhead"]["total"] == rep["size"]
    assert rep["overhead"]["alignment"] >= 0


def test_inspect_reads_no_tensor_data(model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoded a tensor")

    monkeypatch.setattr(dcformat.reader, "decode_tensor", boom)
    rep = insp.inspect_dcz(model)
    assert len(rep["tensors"]) == 3


def test_table_and_header_block(model, capsys):
    code, out, err = _run(capsys, model)
    assert code == 0 and err == ""
    assert "producer: test" in out and "accuracy:" in out and "source_sha256" in out
    assert "fc1.weight" in out and "codebook-sparse" in out and "overhead:" in out
    assert f"{model.stat().st_size:,} bytes =" in out


def test_json_csv_sort_top_filter(model, capsys):
    code, out, _ = _run(capsys, model, "--json", "--sort", "size", "--top", "2")
    rep = json.loads(out)
    everything = sorted(insp.inspect_dcz(model)["tensors"], key=lambda r: -r["bytes"])
    assert [r["name"] for r in rep["tensors"]] == [r["name"] for r in everything[:2]]
    assert rep["size"] == model.stat().st_size
    code, out, _ = _run(capsys, model, "--csv", "--filter", "fc1*", "--sort", "name")
    lines = out.strip().splitlines()
    assert lines[0].startswith("file,name,shape") and [ln.split(",")[1] for ln in lines[1:]] == ["fc1.bias", "fc1.weight"]


def test_usage_errors(model, capsys):
    code, _, err = _run(capsys, model, "--filter", "nothing*")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = _run(capsys, model, "--sort", "weird")
    assert code == 2 and err.startswith("error: ")
    code, _, err = _run(capsys, model.parent / "missing.dcz")
    assert code in (1, 2) and err.startswith("error: ")


def test_damaged_file_is_one_line_error(tmp_path, capsys):
    p = tmp_path / "bad.dcz"
    p.write_bytes(b"\x89DCZ\r\n\x1a\n" + bytes(30))
    code, _, err = _run(capsys, p)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("ext", ["png", "svg", "html"])
def test_plot(model, tmp_path, capsys, ext):
    out = tmp_path / f"p.{ext}"
    code, _, err = _run(capsys, model, "--plot", out)
    assert code == 0, err
    data = out.read_bytes()
    assert len(data) > 2000
    if ext == "png":
        assert data.startswith(b"\x89PNG")
    else:
        assert b"<svg" in data


def test_plot_bad_extension(model, tmp_path, capsys):
    code, _, err = _run(capsys, model, "--plot", tmp_path / "p.bmp")
    assert code == 1 and "png" in err and not (tmp_path / "p.bmp").exists()


def test_compare_two_files(model, tmp_path, capsys):
    other = tmp_path / "o.dcz"
    with dcformat.open(model) as r:
        dcformat.write(other, [dcformat.encode(n, r[n], encoding="raw") for n in r])
    code, out, _ = _run(capsys, model, other)
    assert code == 0 and "[1]" in out and "[2]/[1]" in out and "fc1.weight" in out


def test_compare_sorts_and_cuts(model, tmp_path, capsys):
    other = tmp_path / "o.dcz"
    with dcformat.open(model) as r:
        dcformat.write(other, [dcformat.encode(n, r[n], encoding="raw") for n in r])
    rows = lambda out: [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0] in  # noqa: E731
                        ("fc1.weight", "conv.weight", "fc1.bias")]
    code, out, _ = _run(capsys, model, other, "--sort", "size")
    sizes = {r["name"]: r["bytes"] for r in insp.inspect_dcz(model)["tensors"]}
    assert code == 0 and rows(out) == sorted(sizes, key=lambda n: -sizes[n])
    code, out, _ = _run(capsys, model, other, "--sort", "name", "--top", "2")
    assert code == 0 and rows(out) == ["conv.weight", "fc1.bias"] and "2 of 3 tensors shown" in out
    assert f"{model.stat().st_size:,}" in out  # the footer still holds the whole file's size


def test_verify_names_the_damaged_tensor(model, tmp_path, capsys):
    code, out, _ = _run(capsys, model, "--verify")
    assert code == 0 and "every tensor decodes" in out
    with dcformat.open(model) as r:
        at = r.info("conv.weight").offset + 5
    data = bytearray(model.read_bytes())
    data[at] ^= 0x10
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(bytes(data))
    code, out, _ = _run(capsys, bad, "--verify")
    assert code == 1
    assert "tensor conv.weight: DAMAGED" in out and "tensor fc1.weight: ok" in out and "tensor fc1.bias: ok" in out


def test_control_characters_are_escaped(tmp_path, capsys):
    p = tmp_path / "evil.dcz"
    dcformat.write(p, [dcformat.encode("evil\x1b[31mred\x07", np.ones(3, np.float32))])
    code, out, _ = _run(capsys, p)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\\x1b[31mred" in out


def test_other_inputs(tmp_path, capsys):
    from numpy_mlp import MLP

    net = MLP([8, 16, 4])
    net.W[0][:, :4] = 0
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(net.to_onnx().SerializeToString())
    rep = insp.inspect_any(onnx_path)
    assert rep["kind"] == "onnx" and rep["totals"]["params"] == 8 * 16 + 16 + 16 * 4 + 4
    assert rep["tensors"][0]["sparsity"] == 0.5
    safetensors = pytest.importorskip("safetensors.numpy")
    st = tmp_path / "m.safetensors"
    safetensors.save_file({"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.int64)}, str(st))
    rep = insp.inspect_any(st)
    assert rep["kind"] == "safetensors" and {r["name"]: r["params"] for r in rep["tensors"]} == {"a": 12, "b": 5}
    assert {r["name"]: r["nonzeros"] for r in rep["tensors"]} == {"a": 0, "b": 5}
    code, out, _ = _run(capsys, onnx_path)
    assert code == 0 and "fc1.weight" in out and "dense" in out


def test_pytorch_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2, 3), "b": torch.arange(4.0)}, p)
    rep = insp.inspect_any(p)
    assert rep["kind"] == "pytorch" and {r["name"]: r["nonzeros"] for r in rep["tensors"]} == {"w": 0, "b": 3}


def test_onnx_with_external_data(tmp_path, capsys):
    """The weights in m.bin are read (within the model's directory) and counted: sizes, zeros, ratio."""
    import onnx
    from numpy_mlp import MLP

    net = MLP([8, 16, 4])
    net.W[0][:, :4] = 0
    (tmp_path / "ext").mkdir()
    onnx.save(net.to_onnx(), tmp_path / "ext" / "m.onnx", save_as_external_data=True, location="m.bin",
              size_threshold=0)
    rep = insp.inspect_any(tmp_path / "ext" / "m.onnx")
    assert rep["metadata"]["external_data"] == ["m.bin"]
    assert rep["size"] == sum(f.stat().st_size for f in (tmp_path / "ext").iterdir())
    assert rep["totals"]["tensor_bytes"] == 4 * rep["totals"]["params"] <= rep["size"]
    assert rep["tensors"][0]["sparsity"] == 0.5
    assert rep["totals"]["nonzeros"] == sum(int(np.count_nonzero(a)) for a in net.W + net.b)
    assert rep["overhead"]["total"] > 0
    (tmp_path / "lone.onnx").write_bytes((tmp_path / "ext" / "m.onnx").read_bytes())  # its m.bin is elsewhere
    code, out, err = _run(capsys, tmp_path / "lone.onnx")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "m.bin" in err


def test_torchscript_is_one_error_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.jit.trace(torch.nn.Linear(3, 2).eval(), torch.zeros(1, 3)).save(str(tmp_path / "ts.pt"))
    code, out, err = _run(capsys, tmp_path / "ts.pt")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err


def test_closed_reader(tmp_path):
    dcformat.write(tmp_path / "c.dcz", [dcformat.encode("w", np.ones(3, np.float32))], metadata={"a": 1})
    r = dcformat.open(tmp_path / "c.dcz")
    r.close()
    for read in (lambda: r["w"], r.verify, lambda: r.metadata):
        with pytest.raises(dcformat.DczError, match="the reader is closed"):
            read()


def test_ratio_wording():
    from dcformat.cliutil import times_smaller

    assert times_smaller(80.0, "fp32") == "80.0x smaller than fp32"
    assert times_smaller(0.5, "fp32") == "2.0x larger than fp32"
    assert times_smaller(0.98, "fp32") == "about the size of fp32 (0.98x)"
    assert times_smaller(None) == "-"


def test_lossless_encodings_are_coded_bytes_not_raw(tmp_path, capsys):
    """An lzma tensor's stream and float-planes' Huffman-coded planes are 'coded' bytes (values coded
    losslessly), its stored planes and a raw tensor's data 'raw': per row, in the totals, in the table,
    the CSV and the plot."""
    rng = np.random.default_rng(1)
    rep_vals = np.tile(rng.standard_normal(16).astype(np.float32), 256)  # repeats: lzma's kind of tensor
    few = rng.choice(rng.standard_normal(12).astype(np.float32), 4096)  # few distinct values: Huffman planes
    raw = rng.standard_normal(300).astype(np.float32)
    p = tmp_path / "lossless.dcz"
    dcformat.write(p, [dcformat.encode_lzma("z", rep_vals), dcformat.encode_float_planes("fp", few),
                       dcformat.encode_raw("r", raw)])
    rep = insp.inspect_dcz(p)
    rows = {r["name"]: r for r in rep["tensors"]}
    with dcformat.open(p) as r:
        z, fp = r.info("z"), r.info("fp")
        assert np.array_equal(r["z"], rep_vals)
    assert rows["z"]["coded_bytes"] == z.parts["data"] and rows["z"]["raw_bytes"] == 0
    huff = sum(fp.parts[f"plane{k}"] for k, m in enumerate(fp.planes) if m == "huffman")
    stored = sum(fp.parts[f"plane{k}"] for k, m in enumerate(fp.planes) if m == "stored")
    assert huff > 0 and rows["fp"]["coded_bytes"] == huff and rows["fp"]["raw_bytes"] == stored
    assert rows["fp"]["index_bytes"] == 0  # no codebook indices in a float-planes tensor
    assert rows["r"]["raw_bytes"] == raw.nbytes and rows["r"]["coded_bytes"] == 0
    for row in rows.values():
        assert sum(row[f"{k}_bytes"] for k in insp.STREAMS) + row["padding_bytes"] == row["bytes"]
    assert rep["totals"]["coded_bytes"] == z.parts["data"] + huff
    code, out, _ = _run(capsys, p, "--all")
    assert code == 0 and "coded B" in out and "values coded losslessly" in out
    line_z = next(line for line in out.splitlines() if line.split()[:1] == ["z"])
    assert f"{z.parts['data']:,}" in line_z.split()
    code, out, _ = _run(capsys, p, "--csv")
    header, *lines = out.splitlines()
    got = dict(zip(header.split(","), next(x for x in lines if ",z," in x).split(",")))
    assert int(got["coded_bytes"]) == z.parts["data"] and int(got["raw_bytes"]) == 0
    from dcformat import plot

    fig = plot.figure(rep)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["values coded losslessly (Huffman planes, lzma)", "raw values"]
    # a codebook-only model has no coded bytes: no such column, no legend line
    code, out, _ = _run(capsys, os.path.join(VECTORS, sorted(f for f in os.listdir(VECTORS)
                                                             if f.endswith(".dcz") and "sparse" in f)[0]))
    assert code == 0 and "coded B" not in out and "coded losslessly" not in out

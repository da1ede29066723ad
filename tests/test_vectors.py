"""The golden test vectors in spec/vectors/ (made by tools/gen_vectors.py).

(a) every vector decodes exactly to its expected arrays and passes verify(); its bytes
    match the sha256 in MANIFEST.json;
(b) regenerating the vectors gives byte-identical files;
(c) the same input and options, encoded and written twice, give the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import constants
from dcformat.constants import DTYPES, ENCODINGS, UINT_OF_SIZE

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
GEN = ROOT / "tools" / "gen_vectors.py"
MANIFEST = json.loads((VECTORS / "MANIFEST.json").read_text(encoding="ascii"))
BY_NAME = {v["name"]: v for v in MANIFEST["vectors"]}
BF16 = DTYPES["bfloat16"]


def load_gen():
    """tools/gen_vectors.py as a module (tools/ is not a package)."""
    if "dcz_gen_vectors" in sys.modules:
        return sys.modules["dcz_gen_vectors"]
    spec = importlib.util.spec_from_file_location("dcz_gen_vectors", GEN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dcz_gen_vectors"] = mod
    spec.loader.exec_module(mod)
    return mod


def expected_array(entry: dict) -> np.ndarray:
    if "expected_fill" in entry:  # a large constant array, given by its value
        return np.full(entry["shape"], entry["expected_fill"], DTYPES[entry["dtype"]])
    arr = np.load(VECTORS / entry["expected"], allow_pickle=False)
    if entry["dtype"] == "bfloat16":
        assert arr.dtype == np.uint16
        arr = arr.view(BF16)
    return arr


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    u = UINT_OF_SIZE.get(a.dtype.itemsize, np.uint8)
    return bool(np.array_equal(np.ascontiguousarray(a).view(u), np.ascontiguousarray(b).view(u)))


# ---------------------------------------------------------------- the manifest itself
def test_manifest_lists_every_file():
    names = [v["name"] for v in MANIFEST["vectors"]]
    assert len(names) == len(set(names)) >= 14
    assert MANIFEST["format_version"] == list(dcformat.FORMAT_VERSION)
    listed = {"MANIFEST.json"}
    for v in MANIFEST["vectors"]:
        listed.add(v["file"])
        listed.update(t["expected"] for t in v["tensors"] if "expected" in t)
        assert all(("expected" in t) != ("expected_fill" in t) for t in v["tensors"])
    on_disk = {p.name for p in VECTORS.iterdir()}
    assert on_disk == listed, "stale or missing files in spec/vectors"


def test_vectors_are_small():
    assert sum(p.stat().st_size for p in VECTORS.iterdir()) < 500_000  # 1.0-1.3: about 440 kB


def test_manifest_coverage():
    tensors = [t for v in MANIFEST["vectors"] for t in v["tensors"]]
    assert {t["encoding"] for t in tensors} == set(ENCODINGS)
    raw_dtypes = {t["dtype"] for t in tensors if t["encoding"] == "raw"}
    assert set(DTYPES) <= raw_dtypes
    cb = {(t["dtype"], t["encoding"]) for t in tensors if t["encoding"] != "raw"}
    for dt in ("float32", "float16", "bfloat16", "float64"):
        assert (dt, "codebook-dense") in cb and (dt, "codebook-sparse") in cb, dt
    assert any(t["dtype"] == "float32" and t.get("codebook_dtype") == "float16" for t in tensors)
    shapes = [t["shape"] for t in tensors]
    assert [] in shapes and any(0 in s for s in shapes) and any(np.prod(s) == 1 and s for s in shapes)
    sparse = [t for t in tensors if t["encoding"] == "codebook-sparse"]
    assert {1, 8} <= {t["gap_bits"] for t in sparse}
    assert any(t["entries"] == 0 for t in sparse)
    assert any(t["codebook_size"] == 256 for t in sparse)
    assert any(t["codebook_size"] == 256 for t in tensors if t["encoding"] == "codebook-dense")
    assert any(t["lane_size"] == 256 and t["entries"] > 4 * 256 for t in sparse)  # several lane bases
    assert any(v["graph"] for v in MANIFEST["vectors"])
    assert any(not v["tensors"] for v in MANIFEST["vectors"])
    padded = [v for v in MANIFEST["vectors"] if "padding" in v["covers"]]
    with dcformat.open(VECTORS / padded[0]["file"]) as r:  # 5.4: a padding section, needed by the bound
        assert r.sections[-1].kind == "padding" and len(r.sections) == len(r) + 1
        total = sum(r.info(n).decoded_nbytes for n in r)
        assert constants.expansion_bound(r.file_size - r.sections[-1].length) < total <= constants.expansion_bound(r.file_size)
    assert any(v["metadata"] and len(v["tensors"]) > 1 and not v["graph"] for v in MANIFEST["vectors"])
    # 1.1: float-planes for every float dtype, with stored and Huffman planes, specials, edges, many lanes
    fp = [t for t in tensors if t["encoding"] == "float-planes"]
    for dt in ("float32", "float16", "bfloat16", "float64"):
        modes = {m for t in fp if t["dtype"] == dt for m in t["planes"]}
        assert modes == {"stored", "huffman"}, dt
        assert any(t["dtype"] == dt and set(t["planes"]) == {"huffman"} for t in fp), dt
        assert any(t["dtype"] == dt and set(t["planes"]) == {"stored"} for t in fp), dt
    assert any(0 in t["shape"] for t in fp) and any(t["shape"] == [] for t in fp)
    assert any(t["lane_size"] == 256 and np.prod(t["shape"]) > 2 * 256 for t in fp)
    # 1.2: per-channel scales, dense and sparse, float32 and float16 scales, every float dtype, not only axis 0
    sc = [t for t in tensors if "scale_axis" in t]
    assert {(t["encoding"], t["scale_dtype"]) for t in sc} == {(e, d) for e in ("codebook-dense", "codebook-sparse")
                                                              for d in ("float32", "float16")}
    assert {t["dtype"] for t in sc} == {"float32", "float16", "bfloat16", "float64"}
    assert {0, 1} <= {t["scale_axis"] for t in sc}
    assert any(0 in t["shape"] for t in sc) and any(t["lane_size"] == 256 and np.prod(t["shape"]) > 2 * 256 for t in sc)
    # 1.3: lzma for float and integer dtypes and bool, a scalar, and chosen by the encoder for an analytic table
    lz = [t for t in tensors if t["encoding"] == "lzma"]
    assert {"float32", "float16", "bfloat16", "float64", "int64", "uint8", "bool"} <= {t["dtype"] for t in lz}
    assert any(t["shape"] == [] for t in lz)
    # 1.4 and 1.5: each preset dictionary, on a file with a graph and metadata and on one with no sections
    for minor in (4, 5):
        dic = [v for v in MANIFEST["vectors"] if v.get("dictionary") and v["format_version"] == [1, minor]]
        assert any(v["graph"] and v["metadata"] for v in dic) and any(not v["tensors"] for v in dic), minor


def test_format_versions():
    """Spec 2.2: the reference writer writes 1.5 or 1.4 when it deflates against a preset dictionary, else 1.3 when
    a tensor uses lzma, else 1.2 when one has per-channel scales, else 1.1 when one uses float-planes; the older
    vectors keep their versions (their bytes are pinned by the manifest's sha256)."""
    assert {tuple(v["format_version"]) for v in MANIFEST["vectors"]} == {(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5)}
    for v in MANIFEST["vectors"]:
        data = (VECTORS / v["file"]).read_bytes()
        assert list(int.from_bytes(data[i : i + 2], "little") for i in (8, 10)) == v["format_version"], v["name"]
        used = {t["encoding"] for t in v["tensors"]}
        scaled = any("scale_axis" in t for t in v["tensors"])
        if v.get("dictionary"):  # 1.5 (DEFLATE_DICT_15) or, the vectors made before 1.5, 1.4 (DEFLATE_DICT)
            assert v["format_version"] == [1, 4 if v["name"].startswith("dictionary") and "15" not in v["name"] else 5]
        else:
            assert v["format_version"] == [1, 3 if "lzma" in used else 2 if scaled
                                           else 1 if "float-planes" in used else 0], v["name"]
        with dcformat.open(VECTORS / v["file"]) as r:
            assert list(r.version) == v["format_version"]


# ---------------------------------------------------------------- (a) decoding
@pytest.mark.parametrize("name", list(BY_NAME))
def test_vector_decodes_exactly(name):
    v = BY_NAME[name]
    path = VECTORS / v["file"]
    data = path.read_bytes()
    assert len(data) == v["size"]
    assert hashlib.sha256(data).hexdigest() == v["sha256"]
    with dcformat.open(path) as r:
        r.verify()
        assert list(r) == [t["name"] for t in v["tensors"]]
        assert r.metadata == (v["metadata"] or {})
        assert (r.graph_bytes is not None) == v["graph"]
        for t in v["tensors"]:
            info = r.info(t["name"])
            assert info.dtype == t["dtype"]
            assert list(info.shape) == t["shape"]
            assert info.encoding == t["encoding"]
            for key in ("codebook_dtype", "codebook_size", "lane_size", "gap_bits", "entries"):
                assert getattr(info, key) == t.get(key), key
            assert info.planes == (tuple(t["planes"]) if "planes" in t else None)
            got = r[t["name"]]
            want = expected_array(t)
            assert got.dtype == DTYPES[t["dtype"]]
            assert list(got.shape) == t["shape"]
            assert same_bits(got, want), t["name"]


def test_special_values_kept():
    """-0.0 and NaN payloads survive the codebook encodings (checked on the expected arrays too)."""
    v = BY_NAME["special_values"]
    with dcformat.open(VECTORS / v["file"]) as r:
        dense = r["f32.dense"].view(np.uint32)
        assert 0x80000000 in dense and 0x7FC12345 in dense and 0xFFC00000 in dense
        assert r.info("f32.neg_zero_only").codebook_size == 1  # -0.0 is not the sparse zero
        assert (r["f32.neg_zero_only"].view(np.uint32)[:5] == 0x80000000).all()
        assert r["f32.snan.raw"].view(np.uint32)[0] == 0x7F800001


def test_float_planes_keep_every_bit_pattern():
    """NaN payloads (quiet and signalling), signed zeros, infinities and subnormals come back bit for bit."""
    gen = load_gen()
    v = BY_NAME["float_planes_special"]
    with dcformat.open(VECTORS / v["file"]) as r:
        for tag, dt in (("f32", np.float32), ("f16", np.float16), ("bf16", BF16), ("f64", np.float64)):
            want = gen._specials(dt).view(UINT_OF_SIZE[np.dtype(dt).itemsize])
            for mode in ("huffman", "stored"):
                got = r[f"{tag}.{mode}"].view(want.dtype)
                assert np.array_equal(got[: want.size], want), (tag, mode)
                assert set(r.info(f"{tag}.{mode}").planes) == {mode}


def test_graph_vector_refers_to_its_tensors():
    v = BY_NAME["graph"]
    with dcformat.open(VECTORS / v["file"]) as r:
        model = r.graph
        assert model is not None
        inits = list(model.graph.initializer)
        assert inits
        for init in inits:
            assert init.data_location == init.EXTERNAL
            ext = {e.key: e.value for e in init.external_data}
            assert ext == {"location": "dcz", "tensor": init.name}
            assert init.name in r
            assert list(init.dims) == list(r.info(init.name).shape)
            assert not init.raw_data


# ---------------------------------------------------------------- (b) regeneration
def test_regenerated_vectors_are_identical(tmp_path):
    gen = load_gen()
    gen.generate(tmp_path)
    ours = sorted(p.name for p in VECTORS.iterdir())
    theirs = sorted(p.name for p in tmp_path.iterdir())
    assert ours == theirs
    for fname in ours:
        assert (tmp_path / fname).read_bytes() == (VECTORS / fname).read_bytes(), fname


# ---------------------------------------------------------------- (c) determinism
@pytest.mark.parametrize("name", [n for n, _, _ in load_gen().VECTORS])
def test_writing_twice_gives_same_bytes(tmp_path, name):
    gen = load_gen()
    builder = {n: fn for n, _, fn in gen.VECTORS}[name]
    outs = []
    for i in range(2):
        spec = builder()  # encodes the inputs again from scratch
        path = tmp_path / f"{i}.dcz"
        dcformat.write(path, [t for t, _ in spec["tensors"]], graph=spec.get("graph"), metadata=spec.get("metadata"),
                       dictionary=spec.get("dictionary", False))
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]
    assert hashlib.sha256(outs[0]).hexdigest() == BY_NAME[name]["sha256"]


def test_metadata_key_order_does_not_matter(tmp_path):
    t = dcformat.encode("w", np.arange(10, dtype=np.float32) % 3)
    a, b = tmp_path / "a.dcz", tmp_path / "b.dcz"
    dcformat.write(a, [t], metadata={"x": 1, "a": [1, 2], "m": {"k": "v"}})
    dcformat.write(b, [t], metadata={"m": {"k": "v"}, "a": [1, 2], "x": 1})
    assert a.read_bytes() == b.read_bytes()


def test_graph_bytes_or_proto_give_same_file(tmp_path):
    gen = load_gen()
    w = np.ones((4, 3), np.float32)
    b = np.zeros(3, np.float32)
    model = gen._tiny_onnx([("fc.weight", w), ("fc.bias", b)])
    ts = [dcformat.encode("fc.weight", w), dcformat.encode("fc.bias", b)]
    p1, p2 = tmp_path / "1.dcz", tmp_path / "2.dcz"
    dcformat.write(p1, ts, graph=model)
    dcformat.write(p2, ts, graph=model.SerializeToString(deterministic=True))
    assert p1.read_bytes() == p2.read_bytes()


def test_generator_command_line(tmp_path):
    """`python tools/gen_vectors.py --out DIR` writes the same files."""
    import subprocess

    subprocess.run([sys.executable, str(GEN), "--out", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    assert (tmp_path / "MANIFEST.json").read_bytes() == (VECTORS / "MANIFEST.json").read_bytes()
    for v in MANIFEST["vectors"]:
        assert (tmp_path / v["file"]).read_bytes() == (VECTORS / v["file"]).read_bytes()

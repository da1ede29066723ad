"""spec/FORMAT.md and spec/header.schema.json agree with dcformat.

* the "Constants" table of the spec quotes every int constant of dcformat.constants, with its value;
* the dtype and encoding/parts tables match the code;
* headers written by dcformat (and the golden vectors) validate against the JSON Schema;
* the spec's worked examples are what the encoder and writer produce, byte for byte;
* a small decoder written from the spec alone (container rules, DEFLATE-stored header,
  metadata and graph, tiling without stored offsets, packed code lengths, canonical codes,
  MSB-first lanes, sparse positions and lane bases) reads what dcformat writes, value for
  value, and what it rejects dcformat rejects with the error class the spec names.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import constants, errors, huffman, streams

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec" / "FORMAT.md"
SCHEMA = ROOT / "spec" / "header.schema.json"
VECTORS = ROOT / "spec" / "vectors"


# ---------------------------------------------------------------- reading the spec


def spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the spec from the heading containing ``title`` to the next heading of the same or higher level."""
    lines = spec_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+) ", line)
        if m and title in line:
            level = len(m.group(1))
            out = []
            for nxt in lines[i + 1 :]:
                n = re.match(r"^(#+) ", nxt)
                if n and len(n.group(1)) <= level:
                    break
                out.append(nxt)
            return "\n".join(out)
    raise AssertionError(f"spec has no heading containing {title!r}")


def constants_table() -> dict[str, object]:
    rows = re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*) = ([^`]+)`\s*\|", section("Constants"), re.M)
    assert rows, "no `NAME = value` rows in the Constants table"
    out: dict[str, object] = {}
    for name, value in rows:
        assert name not in out, f"{name} listed twice"
        value = value.strip()
        out[name] = int(value, 0) if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", value) else bytes.fromhex(value)
    return out


def example(label: str) -> str:
    """The fenced block after ``<!-- example: label -->``."""
    m = re.search(rf"<!-- example: {re.escape(label)} -->\s*```[a-z]*\n(.*?)```", spec_text(), re.S)
    assert m, f"spec has no example {label!r}"
    return m.group(1)


def example_bytes(label: str) -> bytes:
    """A hex dump example: 'OFFSET: xx xx ...  # comment' lines; offsets must be consistent."""
    out = bytearray()
    for line in example(label).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        off, hexes = line.split(":", 1)
        assert int(off, 16) == len(out), f"example {label}: row offset {off} but {len(out)} bytes so far"
        out += bytes.fromhex(hexes)
    return bytes(out)


def public_int_constants() -> dict[str, int]:
    return {
        k: v for k, v in vars(constants).items()
        if k.isupper() and not k.startswith("_") and isinstance(v, int) and not isinstance(v, bool)
    }


# ---------------------------------------------------------------- constants and tables


def test_constants_table_matches_code():
    for name, value in constants_table().items():
        assert hasattr(constants, name), f"spec quotes {name}, which dcformat.constants does not define"
        assert getattr(constants, name) == value, f"spec says {name} = {value!r}, code says {getattr(constants, name)!r}"


def test_every_int_constant_is_in_the_table():
    missing = set(public_int_constants()) - set(constants_table())
    assert not missing, f"Constants table of spec/FORMAT.md lacks {sorted(missing)}"


def test_magic_is_in_the_table():
    assert constants_table()["MAGIC"] == constants.MAGIC


def test_dtype_table():
    rows = re.findall(
        r"^\|\s*`(\w+)`\s*\|\s*(\d+)\s*\|\s*(yes|no)\s*\|\s*(yes|no)\s*\|\s*(\d+)\s*\|", section("Dtypes"), re.M
    )
    table = {name: (int(size), cb == "yes", cbd == "yes", int(onnx_type)) for name, size, cb, cbd, onnx_type in rows}
    assert set(table) == set(constants.ITEMSIZE)
    from onnx import helper

    for name, (size, cb, cbd, onnx_type) in table.items():
        assert size == constants.ITEMSIZE[name], name
        assert cb == (name in constants.FLOAT_DTYPES), name
        assert cbd == (name in constants.CODEBOOK_DTYPES), name
        assert onnx_type == helper.np_dtype_to_tensor_dtype(constants.DTYPES[name]), name


def test_parts_table():
    text = section("Encodings")
    plain, scaled = text.split("| scaled encoding", 1)  # 7: the table of parts, then that of scaled records (1.2)
    rows = re.findall(r"^\|\s*`([a-z-]+)`\s*\|([^|]*)\|\s*$", scaled, re.M)
    assert {enc: tuple(re.findall(r"`([a-z_]+)`", parts)) for enc, parts in rows} == constants.SCALED_PARTS
    for enc, parts in constants.SCALED_PARTS.items():
        assert constants.parts_of(enc, "float32", scaled=True) == parts
        assert tuple(p for p in parts if p != "scales") == constants.PARTS[enc]  # scales after codebook, nothing else
        assert parts[1] == "scales"
    rows = re.findall(r"^\|\s*`([a-z-]+)`\s*\|([^|]*)\|\s*$", plain, re.M)
    table = {enc: tuple(re.findall(r"`([a-z_]+)`", parts)) for enc, parts in rows}
    fp = dict(rows).pop(constants.ENC_FLOAT_PLANES)
    del table[constants.ENC_FLOAT_PLANES]
    assert table == {k: v for k, v in constants.PARTS.items() if k != constants.ENC_FLOAT_PLANES}
    # float-planes: plane0 .. plane<w-1>, one per byte of the dtype
    assert "`plane0`, `plane1`, ... `plane<w-1>`" in fp
    for dt in constants.FLOAT_DTYPES:
        w = constants.ITEMSIZE[dt]
        assert constants.parts_of(constants.ENC_FLOAT_PLANES, dt) == tuple(f"plane{k}" for k in range(w))
        assert f"{w} for {dt}" in fp or (dt in ("float16", "bfloat16") and "2 for float16 and bfloat16" in fp)


def test_descriptor_table():
    """The fields of 6.1, filtered by their Encodings column, are the keys the writer writes, in the same order."""
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|[^|]*\|\s*([a-z*, ()-]+?)\s*\|", section("Descriptor"), re.M)
    rows = [(f, [e.strip() for e in encs.split(",")]) for f, encs in rows]
    scaled_fields = [f for f, encs in rows if encs == ["codebook-* (scaled)"]]
    assert scaled_fields == ["scale_axis", "scale_dtype"]
    rows = [(f, encs) for f, encs in rows if f not in scaled_fields]
    assert [f for f, _ in rows][:5] == ["name", "dtype", "shape", "encoding", "nonzeros"]
    x = np.array([0.0, 0.5, 0.0, -1.0], np.float32)
    written = {
        "raw": dcformat.encode_raw("r", x),
        "codebook-dense": dcformat.encode("d", x, encoding="codebook-dense"),
        "codebook-sparse": dcformat.encode("s", x, encoding="codebook-sparse"),
        "float-planes": dcformat.encode("f", x, encoding="float-planes"),
        "lzma": dcformat.encode("z", x, encoding="lzma"),
    }
    assert set(written) == set(constants.ENCODINGS)
    for enc, t in written.items():
        assert t.encoding == enc
        want = [f for f, encs in rows
                if "all" in encs or enc in encs or ("codebook-*" in encs and enc.startswith("codebook-"))]
        assert list(t.info.descriptor()) == want, enc
        assert t.info.descriptor()["nonzeros"] == 2
        if enc.startswith("codebook-"):  # 1.2: the scaled fields come after the encoding's own, before parts
            s = dcformat.encode_codebook("s", [0.5, -1.0], [0, 1, 1, 0], encoding=enc, scales=[2.0, 0.5, 1.0, 3.0])
            assert list(s.info.descriptor()) == want[:-1] + scaled_fields + ["parts"], enc
            assert list(s.info.descriptor()["parts"]) == list(constants.SCALED_PARTS[enc])


def test_nonzeros_as_specified():
    """6.1: -0.0 is zero; NaN, infinities and subnormals are not; integers and bools as usual; after convert."""
    f = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 1.0, -2.0], np.float32)
    cases = {
        "f32": (f, 6),
        "f16": (np.array([0.0, -0.0, np.nan, 6e-8, 1.0], np.float16), 3),
        "bf16": (np.array([0.0, -0.0, 1.0], np.float32).astype(constants.DTYPES["bfloat16"]), 1),
        "i8": (np.array([0, -1, 0, 127], np.int8), 2),
        "u64": (np.array([0, 2**63, 0], np.uint64), 1),
        "b": (np.array([True, False, False, True, True]), 3),
        "scalar0": (np.float64(-0.0), 0),
        "empty": (np.zeros((3, 0), np.float32), 0),
    }
    for name, (a, want) in cases.items():
        assert dcformat.encode_raw(name, a).info.nonzeros == want, name
    # codebook encodings count the decoded values: -0.0 in the codebook is zero; a float32 entry
    # that converts to float16 zero is zero
    idx = np.array([0, 1, 2, 2, 1, 0, 0, 3])
    for enc in ("codebook-dense", "codebook-sparse"):
        t = dcformat.encode_codebook("c", [0.0, -0.0, 1.5, 1e-30], idx, encoding=enc, dtype="float16")
        assert t.encoding == enc and t.info.nonzeros == 2, enc
        t = dcformat.encode_codebook("c", [0.0, -0.0, 1.5, 1e-30], idx, encoding=enc)
        assert t.info.nonzeros == 3, enc


def test_error_classes_named_in_spec_exist():
    text = section("Reader checks and errors")
    names = set(re.findall(r"`(\w+Error)`", text))
    assert {"FormatError", "VersionError", "ChecksumError", "LimitError", "TensorError", "HuffmanError"} <= names
    for n in names:
        cls = getattr(errors, n)
        assert issubclass(cls, errors.DczError)
    assert issubclass(errors.VersionError, errors.FormatError)
    assert issubclass(errors.HuffmanError, errors.TensorError)


# ---------------------------------------------------------------- schema


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_agrees_with_constants():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    d = schema["$defs"]
    assert tuple(d["section"]["properties"]["kind"]["enum"]) == constants.SECTION_KINDS
    t = d["tensor"]["properties"]
    assert tuple(t["encoding"]["enum"]) == constants.ENCODINGS
    assert set(t["dtype"]["enum"]) == set(constants.ITEMSIZE)
    assert tuple(t["codebook_dtype"]["enum"]) == constants.CODEBOOK_DTYPES
    assert t["codebook_size"]["maximum"] == constants.MAX_CODEBOOK
    assert (t["gap_bits"]["minimum"], t["gap_bits"]["maximum"]) == (constants.MIN_GAP_BITS, constants.MAX_GAP_BITS)
    assert t["lane_size"]["enum"] == [1 << k for k in range(8, 25)]
    assert min(t["lane_size"]["enum"]) == constants.MIN_LANE_SIZE and max(t["lane_size"]["enum"]) == constants.MAX_LANE_SIZE
    assert t["shape"]["maxItems"] == constants.MAX_RANK
    assert t["shape"]["items"]["maximum"] == constants.MAX_ELEMENTS
    assert t["name"]["maxLength"] == constants.MAX_NAME_BYTES
    nz = t["nonzeros"]
    assert (nz["type"], nz["minimum"], nz["maximum"]) == ("integer", 0, constants.MAX_ELEMENTS)
    assert "nonzeros" in d["tensor"]["required"]
    for branch in d["tensor"]["allOf"]:  # required by every encoding
        assert "nonzeros" in branch["then"]["required"] and "nonzeros" in branch["then"]["propertyNames"]["enum"]
    assert schema["properties"]["sections"]["maxItems"] == constants.MAX_SECTIONS
    # entries carry no offset (it follows from the tiling rule), and no key outside v1.0 is allowed
    assert d["section"]["required"] == ["kind", "length", "crc32"]
    assert set(d["section"]["properties"]) == {"kind", "length", "crc32", "tensor"}
    assert d["section"]["additionalProperties"] is False
    assert schema["additionalProperties"] is False
    assert tuple(t["scale_dtype"]["enum"]) == constants.SCALE_DTYPES
    assert t["scale_axis"]["maximum"] == constants.MAX_RANK - 1
    for enc, parts in constants.SCALED_PARTS.items():
        key = "parts_" + enc.replace("-", "_") + "_scaled"
        assert tuple(d[key]["properties"]) == parts == tuple(d[key]["required"])
    for enc, parts in constants.PARTS.items():  # the schema lists parts in layout order too
        key = "parts_" + enc.replace("-", "_")
        assert tuple(d[key]["properties"]) == parts
        if enc != constants.ENC_FLOAT_PLANES:
            assert tuple(d[key]["required"]) == parts
    # float-planes: planes and parts per dtype (one per byte), the plane modes
    assert tuple(t["planes"]["items"]["enum"]) == constants.PLANE_MODES
    fp = [b for b in d["tensor"]["allOf"] if b["if"]["properties"]["encoding"]["const"] == constants.ENC_FLOAT_PLANES][0]
    assert tuple(fp["then"]["properties"]["dtype"]["enum"]) == constants.FLOAT_DTYPES
    for sub in fp["then"]["allOf"]:
        cond = sub["if"]["properties"]["dtype"]
        for dt in cond.get("enum", [cond.get("const")]):
            w = constants.ITEMSIZE[dt]
            assert sub["then"]["properties"]["planes"]["maxItems"] == w == sub["then"]["properties"]["planes"]["minItems"]
            assert tuple(sub["then"]["properties"]["parts"]["required"]) == constants.parts_of(constants.ENC_FLOAT_PLANES, dt)


def spec_dictionary(appendix: str = "A. The preset dictionary") -> bytes:
    """Appendix A (1.4): the preset dictionary, or Appendix B (1.5): the preset dictionary of 1.5,
    read from the spec's hex (not from dcformat)."""
    text = SPEC.read_text(encoding="utf-8").split(f"## Appendix {appendix}", 1)[1]
    block = text.split("```", 2)[1]
    return bytes.fromhex("".join(block.split()))


def spec_dictionary_15() -> bytes:
    return spec_dictionary("B. The preset dictionary of 1.5")


def test_preset_dictionary_matches_code():
    d = spec_dictionary()
    assert d == constants.DEFLATE_DICT
    assert hashlib.sha256(d).hexdigest() == constants.DEFLATE_DICT_SHA256
    spec = SPEC.read_text(encoding="utf-8")
    assert constants.DEFLATE_DICT_SHA256 in spec and f"{len(d):,} bytes" in spec
    assert len(d) <= 32768  # inside DEFLATE's window


def test_preset_dictionary_15_matches_code():
    d = spec_dictionary_15()
    assert d == constants.DEFLATE_DICT_15 != constants.DEFLATE_DICT
    assert hashlib.sha256(d).hexdigest() == constants.DEFLATE_DICT_15_SHA256
    spec = SPEC.read_text(encoding="utf-8")
    assert constants.DEFLATE_DICT_15_SHA256 in spec and f"{len(d):,} bytes" in spec
    assert len(d) <= 32768
    assert constants.deflate_dict(3) is None and constants.deflate_dict(4) == spec_dictionary()
    assert constants.deflate_dict(5) == constants.deflate_dict(constants.VERSION_MINOR) == d


def test_preset_dictionary_15_is_what_the_generator_makes():
    """tools/gen_dictionary.py makes DEFLATE_DICT_15 from the writers' current forms (needs onnx)."""
    pytest.importorskip("onnx")
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_dictionary", Path(__file__).resolve().parents[1] / "tools" / "gen_dictionary.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.dictionary() == constants.DEFLATE_DICT_15


def raw_inflate(stored: bytes, limit: int, zdict: bytes | None = None) -> bytes:
    """Spec 1 (DEFLATE): inflate a raw DEFLATE stream under ``limit`` (against ``zdict``, the preset
    dictionary of a 1.4 file); it must be complete, end exactly at the end of ``stored`` and inflate to
    at most ``limit`` bytes."""
    d = zlib.decompressobj(-15, **({"zdict": zdict} if zdict else {}))
    out = d.decompress(stored, limit + 1)
    assert len(out) <= limit, "inflates to more than the limit"
    assert d.eof, "the DEFLATE stream is incomplete"
    assert not d.unused_data and not d.unconsumed_tail, "bytes after the end of the DEFLATE stream"
    return out


def spec_deflate(data: bytes, zdict: bytes | None = None) -> bytes:
    """Spec 1 (DEFLATE): what the reference writer stores: zlib, level 9, window bits -15, memLevel 9
    (and the preset dictionary in a 1.4 file)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, **({"zdict": zdict} if zdict else {}))
    return c.compress(data) + c.flush()


def file_dictionary(data: bytes) -> bytes | None:
    """Spec 1, 2.2: the preset dictionary of a file of minor version 5 or later (Appendix B), of minor
    version 4 (Appendix A), else None."""
    minor = struct.unpack_from("<H", data, 10)[0]
    return spec_dictionary_15() if minor >= 5 else spec_dictionary() if minor >= 4 else None


def read_header_text(path) -> bytes:
    data = Path(path).read_bytes()
    header_len = struct.unpack_from("<I", data, 12)[0]
    return raw_inflate(data[24 : 24 + header_len], constants.MAX_HEADER_BYTES, file_dictionary(data))


def read_header(path) -> dict:
    return json.loads(read_header_text(path))


def _graph_model(ref_name: str, shape):
    """A tiny ONNX model whose initializer W refers to a .dcz record, as spec 5.2 describes."""
    import onnx
    from onnx import TensorProto, helper

    w = TensorProto()
    w.name = "W"
    w.data_type = TensorProto.FLOAT
    w.dims.extend(shape)
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "dcz"), ("tensor", ref_name)):
        e = w.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[1]])],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), onnx


def _rng_sparse(rng, n, density, k):
    idx = np.where(rng.random(n) < density, rng.integers(1, k, n), 0)
    return idx


def _dft_basis(k: int, n: int) -> np.ndarray:
    """A Hann-windowed DFT basis (k cosine rows, k sine rows), as an STFT layer stores it: the kind
    of analytic table that only LZ-style coding (lzma) compresses well."""
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    ang = np.outer(np.arange(k), np.arange(n)) * (2 * np.pi / n)
    return np.concatenate([win * np.cos(ang), -win * np.sin(ang)]).astype(np.float32)


def sample_files(tmp_path):
    """(path, {name: expected array}) for files covering all encodings, metadata and a graph."""
    rng = np.random.default_rng(7)
    files = []
    arrays = {
        "f32": rng.standard_normal((5, 7)).astype(np.float32),
        "i64": np.arange(-3, 9, dtype=np.int64),
        "b": np.array([True, False, True]),
        "u8": np.arange(17, dtype=np.uint8),
        "bf16": np.arange(6, dtype=np.float32).astype(constants.DTYPES["bfloat16"]),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 4), np.float16),
    }
    tensors = [dcformat.encode_raw(k, v) for k, v in arrays.items()]
    files.append(("raw.dcz", tensors, None, None, arrays))

    cb = np.array([0.0, 0.25, -1.5, 3.0, 7.0], np.float32)
    dense_idx = rng.integers(0, 5, 3000)
    sparse_idx = _rng_sparse(rng, 5000, 0.05, 5)  # long zero runs: fillers with small gap_bits
    t = [
        dcformat.encode_codebook("dense", cb, dense_idx, (30, 100), encoding="codebook-dense", lane_size=256),
        dcformat.encode_codebook("dense16", cb, dense_idx, dtype="float16", encoding="codebook-dense", lane_size=512),
        dcformat.encode_codebook("sparse", cb, sparse_idx, (50, 100), encoding="codebook-sparse", gap_bits=2, lane_size=256),
        dcformat.encode_codebook("sparse_auto_b", cb, sparse_idx, encoding="codebook-sparse"),
        dcformat.encode_codebook("sparse64", cb, sparse_idx, dtype="float64", encoding="codebook-sparse", gap_bits=8),
        dcformat.encode_codebook("sparse_bf16", cb, sparse_idx, dtype="bfloat16", encoding="codebook-sparse", gap_bits=3,
                                 lane_size=256),
        dcformat.encode_codebook("one_symbol", [0.5], np.zeros(700, int), encoding="codebook-dense", lane_size=256),
        dcformat.encode_codebook("dense_empty", cb, np.zeros(0, int), encoding="codebook-dense"),
        dcformat.encode_codebook("sparse_empty", cb, np.zeros(0, int), encoding="codebook-sparse"),
        dcformat.encode("zeros", np.zeros(1000, np.float32)),
        dcformat.encode("dense_run", np.full(600, -2.0, np.float32), encoding="codebook-sparse", lane_size=256),
    ]
    expected = {
        "dense": cb[dense_idx].reshape(30, 100),
        "dense16": cb[dense_idx].astype(np.float16),
        "sparse": cb[sparse_idx].reshape(50, 100),
        "sparse_auto_b": cb[sparse_idx],
        "sparse64": cb[sparse_idx].astype(np.float64),
        "sparse_bf16": cb[sparse_idx].astype(constants.DTYPES["bfloat16"]),
        "one_symbol": np.full(700, 0.5, np.float32),
        "dense_empty": np.zeros(0, np.float32),
        "sparse_empty": np.zeros(0, np.float32),
        "zeros": np.zeros(1000, np.float32),
        "dense_run": np.full(600, -2.0, np.float32),
    }
    assert {x.encoding for x in t} == {"codebook-dense", "codebook-sparse"}
    meta = {"producer": "tests/test_spec.py", "source_sha256": "0" * 64, "settings": {"bits": 3}, "accuracy": {"top1": 0.5}}
    files.append(("codebook.dcz", t, None, meta, expected))

    model, _ = _graph_model("fc.weight", (4, 3))
    w = np.where(rng.random((4, 3)) < 0.5, 0.0, 1.25).astype(np.float32)
    files.append(("graph.dcz", [dcformat.encode("fc.weight", w)], model, {"producer": "x"}, {"fc.weight": w}))
    files.append(("empty.dcz", [], None, None, {}))
    fp = {  # 7.4: each float dtype, auto and forced plane modes, specials, many lanes
        "fp32": (rng.standard_normal(1000) * 0.1).astype(np.float32),
        "fp16": (rng.standard_normal((20, 30)) * 0.1).astype(np.float16),
        "fbf16": (rng.standard_normal(700) * 0.1).astype(np.float32).astype(constants.DTYPES["bfloat16"]),
        "fp64": rng.standard_normal(300),
        "fspecial": np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, np.nan] * 50, np.float32),
    }
    fp["fspecial"].view(np.uint32)[5::6] = 0x7F812345  # signalling NaN with a payload
    t = [dcformat.encode_float_planes(k, v, lane_size=256) for k, v in fp.items()]
    t += [dcformat.encode_float_planes("fp32.all", fp["fp32"], planes=["huffman"] * 4, lane_size=256),
          dcformat.encode_float_planes("fp16.none", fp["fp16"], planes=["stored"] * 2),
          dcformat.encode_float_planes("fempty", np.zeros((0, 2), np.float32), planes=["huffman"] * 4)]
    fp.update({"fp32.all": fp["fp32"], "fp16.none": fp["fp16"], "fempty": np.zeros((0, 2), np.float32)})
    files.append(("planes.dcz", t, None, None, fp))
    # 7.5 (1.2): per-channel scales, dense and sparse, both scale dtypes, several axes and dtypes, many lanes
    sc_cb = np.array([0.0, -0.0, 0.25, -1.5, 3.0, 1e-30], np.float32)
    sc_idx = np.where(rng.random((20, 3, 50)) < 0.4, rng.integers(2, 6, (20, 3, 50)), rng.integers(0, 2, (20, 3, 50)))
    scales = {0: (rng.standard_normal(20) * 4).astype(np.float32), 1: np.array([0.0, -2.0, 1e-20], np.float32),
              2: np.exp(rng.uniform(-9, 9, 50)).astype(np.float32)}
    t, sc_exp = [], {}
    for enc in ("codebook-dense", "codebook-sparse"):
        for axis, dt, sdt in ((0, "float32", "float32"), (1, "float16", "float16"), (2, "float64", "float32"),
                              (2, "bfloat16", "float16")):
            name = f"{enc}.{axis}.{dt}.{sdt}"
            t.append(dcformat.encode_codebook(name, sc_cb, sc_idx, dtype=dt, encoding=enc, scales=scales[axis],
                                              scale_axis=axis, scale_dtype=sdt, codebook_dtype="float32", lane_size=256))
            sc_exp[name] = dcformat.codebook_values(sc_cb, sc_idx, dtype=dt, scales=scales[axis], scale_axis=axis,
                                                    scale_dtype=sdt, codebook_dtype="float32")
    files.append(("scaled.dcz", t, None, None, sc_exp))
    basis = _dft_basis(32, 128)  # 7.6: many values, repeated in long runs
    lz = {"basis": basis, "fp16": fp["fp16"], "i64": np.arange(-300, 300, dtype=np.int64), "bool": np.arange(500) % 3 == 0,
          "scalar": np.float64(-0.0)}
    t = [dcformat.encode_lzma(k, v) for k, v in lz.items()] + [dcformat.encode("basis.auto", basis)]
    assert t[-1].encoding == "lzma"
    lz["basis.auto"] = basis
    files.append(("lzma.dcz", t, None, None, lz))

    # 1.4 and 1.5: the same codebook, graph and lzma files deflated against each preset dictionary
    files += [(f"dict{v}.{n}", t, g, m, e) for v in (4, 5) for n, t, g, m, e in files
              if n in ("codebook.dcz", "graph.dcz", "lzma.dcz")]
    out = []
    for name, tensors, graph, meta, exp in files:
        path = tmp_path / name
        dcformat.write(path, tensors, graph=graph, metadata=meta,
                       dictionary=int(name[4]) if name.startswith("dict") else False)
        out.append((path, exp))
    return out


def test_written_headers_validate(tmp_path, validator):
    for path, _ in sample_files(tmp_path):
        header = read_header(path)
        validator.validate(header)


def test_golden_vectors_validate(validator):
    paths = sorted(VECTORS.glob("*.dcz"))
    if not paths:
        pytest.skip("no golden vectors in spec/vectors")
    for p in paths:
        try:
            validator.validate(read_header(p))
        except jsonschema.ValidationError as e:
            raise AssertionError(f"{p.name}: {e.message}") from None


def test_schema_rejects_bad_headers(validator):
    good = {"name": "t", "dtype": "float32", "shape": [10], "encoding": "codebook-sparse", "nonzeros": 3,
            "codebook_dtype": "float32",
            "codebook_size": 2, "lane_size": 256, "gap_bits": 2, "entries": 4,
            "parts": {"codebook": 8, "lane_bases": 8, "gaps": 17, "indices": 17}}
    entry = {"kind": "tensor", "length": 57, "crc32": 1, "tensor": good}
    validator.validate({"sections": [entry]})

    def bad(mutate):
        e = json.loads(json.dumps(entry))
        mutate(e)
        assert not validator.is_valid({"sections": [e]}), e

    bad(lambda e: e["tensor"].pop("gap_bits"))                        # sparse needs gap_bits
    bad(lambda e: e["tensor"].update(encoding="codebook-dense"))      # dense has no gap_bits/entries
    bad(lambda e: e["tensor"].update(encoding="raw"))                 # raw has no codebook fields
    bad(lambda e: e["tensor"].update(lane_size=300))                  # not a power of two
    bad(lambda e: e["tensor"].update(dtype="int32"))                  # codebooks need a float dtype
    bad(lambda e: e["tensor"].update(codebook_dtype="float64"))
    bad(lambda e: e["tensor"].update(gap_bits=9))
    bad(lambda e: e["tensor"].update(encoding="zstd"))                # unknown in 1.1
    bad(lambda e: e["tensor"]["parts"].pop("lane_bases"))
    bad(lambda e: e["tensor"].update(shape=[-1]))
    bad(lambda e: e.pop("tensor"))                                    # tensor kind needs a descriptor
    bad(lambda e: e.update(kind="graph"))                             # ... and others must not have one
    bad(lambda e: e.update(offset=216))                               # entries carry no offset in v1.0
    bad(lambda e: e.pop("length"))
    bad(lambda e: e.pop("crc32"))
    bad(lambda e: e.update(crc32=1 << 32))
    bad(lambda e: e["tensor"].pop("nonzeros"))                        # required, for every encoding
    bad(lambda e: e["tensor"].update(nonzeros=-1))
    bad(lambda e: e["tensor"].update(nonzeros=1.5))
    bad(lambda e: e["tensor"].update(nonzeros="3"))
    bad(lambda e: e["tensor"].update(nonzeros=True))
    bad(lambda e: e["tensor"].update(nonzeros=constants.MAX_ELEMENTS + 1))
    fp = {"name": "x", "dtype": "float32", "shape": [6], "encoding": "float-planes", "nonzeros": 5, "lane_size": 256,
          "planes": ["stored", "stored", "stored", "huffman"], "parts": {"plane0": 6, "plane1": 6, "plane2": 6, "plane3": 138}}
    validator.validate({"sections": [{"kind": "tensor", "length": 162, "crc32": 0, "tensor": fp}]})

    def bad_fp(mutate):
        e = json.loads(json.dumps(fp))
        mutate(e)
        assert not validator.is_valid({"sections": [{"kind": "tensor", "length": 162, "crc32": 0, "tensor": e}]}), e

    bad_fp(lambda e: e.pop("planes"))
    bad_fp(lambda e: e.pop("lane_size"))
    bad_fp(lambda e: e.update(planes=["stored", "stored", "huffman"]))       # one per byte of float32
    bad_fp(lambda e: e.update(planes=["stored", "stored", "stored", "zstd"]))
    bad_fp(lambda e: e.update(dtype="float16"))                                 # 2 planes for float16
    bad_fp(lambda e: e.update(dtype="int32"))
    bad_fp(lambda e: e["parts"].pop("plane3"))
    bad_fp(lambda e: e["parts"].update(plane4=0))
    bad_fp(lambda e: e.update(codebook_size=2))                                 # not a float-planes key
    sc = json.loads(example("scaled-descriptor"))  # 1.2: per-channel scales
    validator.validate({"sections": [{"kind": "tensor", "length": 33, "crc32": 0, "tensor": sc}]})
    sparse_sc = dict(good, scale_axis=0, scale_dtype="float32",
                     parts={"codebook": 8, "scales": 40, "lane_bases": 8, "gaps": 17, "indices": 17})
    validator.validate({"sections": [{"kind": "tensor", "length": 105, "crc32": 0, "tensor": sparse_sc}]})

    def bad_sc(mutate, base=sc):
        e = json.loads(json.dumps(base))
        mutate(e)
        assert not validator.is_valid({"sections": [{"kind": "tensor", "length": 33, "crc32": 0, "tensor": e}]}), e

    bad_sc(lambda e: e.pop("scale_dtype"))                                      # both keys or neither
    bad_sc(lambda e: e.pop("scale_axis"))
    bad_sc(lambda e: e.update(scale_dtype="float64"))
    bad_sc(lambda e: e.update(scale_axis=-1))
    bad_sc(lambda e: e.update(scale_axis=32))
    bad_sc(lambda e: e["parts"].pop("scales"))                                  # a scaled record has the part
    bad_sc(lambda e: (e.pop("scale_axis"), e.pop("scale_dtype")))               # ... and only a scaled one
    bad_sc(lambda e: e.update(parts={"scales": 4, "codebook": 8, "indices": 17}) or e["parts"].pop("codebook"))
    bad_sc(lambda e: e["parts"].pop("lane_bases"), sparse_sc)
    bad_fp(lambda e: e.update(scale_axis=0, scale_dtype="float32"))             # not a float-planes key
    raw = {"name": "r", "dtype": "bool", "shape": [], "encoding": "raw", "nonzeros": 1, "parts": {"data": 1}}
    validator.validate({"sections": [{"kind": "tensor", "length": 1, "crc32": 0, "tensor": raw}]})
    no_nz = {k: v for k, v in raw.items() if k != "nonzeros"}
    assert not validator.is_valid({"sections": [{"kind": "tensor", "length": 1, "crc32": 0, "tensor": no_nz}]})
    assert not validator.is_valid({})


# ---------------------------------------------------------------- worked examples


def test_example_three_symbol_stream():
    part = streams.encode_stream(np.array([0, 0, 1, 2, 0]), 3, 256).tobytes()
    assert part == example_bytes("stream-3")
    assert spec_decode_stream(part, 5, 3, 256) == [0, 0, 1, 2, 0]


def test_example_single_symbol_stream():
    part = streams.encode_stream(np.zeros(300, np.int64), 1, 256).tobytes()
    assert part == example_bytes("stream-single")
    assert spec_decode_stream(part, 300, 1, 256) == [0] * 300


def test_example_sparse_tensor(tmp_path):
    t = dcformat.encode_codebook("t", [0.0, 0.5, -1.0], np.array([0, 1, 0, 0, 0, 0, 0, 0, 2, 1]),
                                 encoding="codebook-sparse", gap_bits=2, lane_size=256)
    desc = json.loads(example("sparse-descriptor"))
    assert t.info.descriptor() == desc
    assert list(t.info.descriptor()) == list(desc)  # same key order, parts included
    path = tmp_path / "ex.dcz"
    dcformat.write(path, [t])
    header = read_header(path)
    assert header["sections"][0]["tensor"] == desc
    s = header["sections"][0]
    file = path.read_bytes()
    off = -(-(24 + struct.unpack_from("<I", file, 12)[0]) // 8) * 8  # 3.3: the first section's place
    assert off + s["length"] == len(file)
    data = file[off : off + s["length"]]
    assert data == example_bytes("sparse-section")
    want = np.array([0, 0.5, 0, 0, 0, 0, 0, 0, -1, 0.5], np.float32)
    np.testing.assert_array_equal(spec_decode_tensor(desc, data), want)
    with dcformat.open(path) as r:
        np.testing.assert_array_equal(r["t"], want)


def test_example_scaled_tensor(tmp_path):
    """13.6: a codebook-dense tensor with float16 per-channel scales (1.2), byte for byte."""
    t = dcformat.encode_codebook("w", [0.5, -1.0], [[0, 1, 0], [1, 1, 0]], encoding="codebook-dense", lane_size=256,
                                 scales=[2.0, -0.5], scale_dtype="float16")
    desc = json.loads(example("scaled-descriptor"))
    assert t.info.descriptor() == desc and list(t.info.descriptor()) == list(desc)
    path = tmp_path / "ex.dcz"
    dcformat.write(path, [t])
    file = path.read_bytes()
    assert struct.unpack_from("<HH", file, 8) == (1, 2)  # 2.2: a file with scales is a 1.2 file
    s = read_header(path)["sections"][0]
    off = -(-(24 + struct.unpack_from("<I", file, 12)[0]) // 8) * 8
    data = file[off : off + s["length"]]
    assert data == example_bytes("scaled-section")
    want = np.array([[1.0, -2.0, 1.0], [0.5, 0.5, -0.25]], np.float32)
    _same(spec_decode_tensor(desc, data), want)
    with dcformat.open(path) as r:
        _same(r["w"], want)


def test_example_float_planes(tmp_path):
    """13.5: a float-planes tensor, its descriptor and section, decoded by the spec-only decoder."""
    x = np.array([1.0, -1.0, 1.5, 0.5, 2.0, -0.0], np.float32)
    t = dcformat.encode_float_planes("x", x, planes=["stored", "stored", "stored", "huffman"], lane_size=256)
    desc = json.loads(example("planes-descriptor"))
    assert t.info.descriptor() == desc and list(t.info.descriptor()) == list(desc)
    path = tmp_path / "ex.dcz"
    dcformat.write(path, [t])
    file = path.read_bytes()
    assert struct.unpack_from("<HH", file, 8) == (1, 1)  # 2.2: a file with float-planes is a 1.1 file
    off = -(-(24 + struct.unpack_from("<I", file, 12)[0]) // 8) * 8
    data = file[off:]
    assert data == example_bytes("planes-section")
    _same(spec_decode_tensor(desc, data), x)
    assert spec_decode_stream(data[24:], 6, 256, 256) == [0x7F, 0x7F, 0x7F, 0x7E, 0x80, 0x00]
    with dcformat.open(path) as r:
        _same(r["x"], x)


def test_example_whole_file(tmp_path):
    """13.4: the file the reference writer makes of the tensor of 13.3, its header text and tiling."""
    t = dcformat.encode_codebook("t", [0.0, 0.5, -1.0], np.array([0, 1, 0, 0, 0, 0, 0, 0, 2, 1]),
                                 encoding="codebook-sparse", gap_bits=2, lane_size=256)
    path = tmp_path / "ex.dcz"
    dcformat.write(path, [t])
    data = path.read_bytes()
    assert data == example_bytes("file")
    text = example("file-header").strip().encode("ascii")
    assert read_header_text(path) == text
    header_len = struct.unpack_from("<I", data, 12)[0]
    assert data[24 : 24 + header_len] == spec_deflate(text)  # zlib with the parameters of spec 1
    assert (24 + header_len, -(-(24 + header_len) // 8) * 8, len(data)) == (212, 216, 273)
    assert data[216:] == example_bytes("sparse-section")
    assert json.loads(text)["sections"][0]["crc32"] == zlib.crc32(example_bytes("sparse-section"))
    np.testing.assert_array_equal(spec_read(path)["t"], np.array([0, 0.5, 0, 0, 0, 0, 0, 0, -1, 0.5], np.float32))


# ---------------------------------------------------------------- a decoder written from the spec


def deflate_codes(lengths) -> dict[int, tuple[int, int]]:
    """Spec 8.2 (RFC 1951 3.2.2): symbol -> (code, length)."""
    bl_count = [0] * 16
    for ln in lengths:
        if ln:
            bl_count[ln] += 1
    code, next_code = 0, [0] * 16
    for ln in range(1, 16):
        code = (code + bl_count[ln - 1]) << 1
        next_code[ln] = code
    out = {}
    for s, ln in enumerate(lengths):
        if ln:
            out[s] = (next_code[ln], ln)
            next_code[ln] += 1
    return out


def test_canonical_codes_match_rfc1951():
    rng = np.random.default_rng(3)
    for a in (2, 3, 5, 17, 64, 257):
        for _ in range(5):
            freqs = rng.integers(0, 1000, a) * (rng.random(a) < 0.7)
            freqs[:2] += 1
            lengths = huffman.code_lengths(freqs)
            codes, bitlen = huffman.canonical_codes(lengths)
            for s, (c, ln) in deflate_codes(lengths.tolist()).items():
                assert (int(codes[s]), int(bitlen[s])) == (c, ln)


def spec_decode_stream(part: bytes, n: int, alphabet: int, lane_size: int) -> list[int]:
    """Spec 8: a stream part -> its n symbols, checking every MUST of 8.1-8.3."""
    if n == 0:
        assert part == b""
        return []
    nl = -(-n // lane_size)
    table_bytes = -(-alphabet // 2)  # C = ceil(A / 2): two 4-bit code lengths per byte
    table_at = -(-table_bytes // 8) * 8
    prefix = table_at + 8 * nl
    assert len(part) >= prefix
    nibbles = [v for b in part[:table_bytes] for v in (b >> 4, b & 0x0F)]  # symbol 2i high, 2i+1 low
    lengths = nibbles[:alphabet]
    assert not any(nibbles[alphabet:]), "the unused low nibble (odd alphabet) is not zero"
    assert not any(part[table_bytes:table_at])
    used = [s for s, ln in enumerate(lengths) if ln]
    assert used and max(lengths) <= constants.MAX_CODE_LENGTH
    single = len(used) == 1
    if single:
        assert lengths[used[0]] == 1
    else:
        assert sum(2.0 ** -lengths[s] for s in used) == 1.0
    decode = {(c, ln): s for s, (c, ln) in deflate_codes(lengths).items()}
    offsets = list(struct.unpack_from(f"<{nl}Q", part, table_at))
    payload = part[prefix:]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(payload)
    out = []
    for lane in range(nl):
        start = offsets[lane]
        end = offsets[lane + 1] if lane + 1 < nl else len(payload)
        bits = "".join(f"{b:08b}" for b in payload[start:end])  # MSB first
        pos = 0
        for _ in range(min(n, (lane + 1) * lane_size) - lane * lane_size):
            if single:
                out.append(used[0])
                continue
            code, ln = 0, 0
            while (code, ln) not in decode:
                assert pos < len(bits), "codes run past the end of the lane"
                code, ln, pos = (code << 1) | int(bits[pos]), ln + 1, pos + 1
            out.append(decode[(code, ln)])
        assert end - start == -(-pos // 8), "lane does not span exactly ceil(bits/8) bytes"
        assert "1" not in bits[pos:], "padding bits are not zero"
    return out


def _convert(codebook: np.ndarray, dtype: str) -> np.ndarray:
    return codebook.astype(constants.DTYPES[dtype])


def spec_decode_tensor(desc: dict, section: bytes) -> np.ndarray:
    """Spec 7: a tensor section + its descriptor -> the array."""
    enc, dtype = desc["encoding"], desc["dtype"]
    if enc == "float-planes":  # 7: plane0 .. plane<w-1>, w = itemsize(dtype)
        assert list(desc["parts"]) == [f"plane{k}" for k in range(constants.ITEMSIZE[dtype])]
    elif enc.startswith("codebook-") and ("scale_axis" in desc or "scale_dtype" in desc):  # 7.5: scales after codebook
        assert list(desc["parts"]) == [*constants.PARTS[enc][:1], "scales", *constants.PARTS[enc][1:]]
    else:
        assert list(desc["parts"]) == list(constants.PARTS[enc])
    parts, pos = {}, 0
    for name, length in desc["parts"].items():
        start = -(-pos // 8) * 8
        assert not any(section[pos:start])
        parts[name] = section[start : start + length]
        pos = start + length
    assert pos == len(section)
    shape = tuple(desc["shape"])
    n = math.prod(shape)
    nonzeros = desc["nonzeros"]  # 6.1: required, an integer in [0, N]
    assert type(nonzeros) is int and 0 <= nonzeros <= n
    out = _spec_decode_values(desc, parts, shape, n)
    # 6.1, 7: the decoded tensor has exactly `nonzeros` elements that are not zero (-0.0 is zero, NaN is not)
    assert sum(1 for v in out.reshape(-1).tolist() if v != 0 or v != v) == nonzeros
    return out


def _spec_decode_values(desc: dict, parts: dict[str, bytes], shape: tuple, n: int) -> np.ndarray:
    enc, dtype = desc["encoding"], desc["dtype"]
    tdt = constants.DTYPES[dtype]
    if enc == "raw":
        return np.frombuffer(parts["data"], tdt).reshape(shape)
    if enc == "float-planes":
        return _spec_decode_planes(desc, parts, shape, n)
    if enc == "lzma":  # 7.6: one raw LZMA2 stream, dictionary max(4 KiB, S), exactly S bytes, nothing after it
        s = n * constants.ITEMSIZE[dtype]
        assert s <= constants.LZMA_MAX_BYTES and len(parts["data"]) >= 1
        d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": max(4096, s)}])
        data = d.decompress(parts["data"])
        assert len(data) == s and d.eof and not d.unused_data
        out = np.frombuffer(data, tdt).reshape(shape)
        assert dtype != "bool" or set(data) <= {0, 1}
        return out
    scaled = "scale_axis" in desc or "scale_dtype" in desc
    cb = _convert(np.frombuffer(parts["codebook"], constants.DTYPES[desc["codebook_dtype"]]),
                  "float32" if scaled else dtype)  # 7.5: unscaled values in binary32
    assert cb.size == desc["codebook_size"]
    if scaled:
        unscaled = _spec_decode_codebook(dict(desc, dtype="float32"), parts, cb, shape, n)
        return _spec_scale(desc, parts["scales"], unscaled, shape)
    return _spec_decode_codebook(desc, parts, cb, shape, n)


def _spec_scale(desc: dict, part: bytes, unscaled: np.ndarray, shape: tuple) -> np.ndarray:
    """Spec 7.5 element by element: the product in binary32 (computed exactly in binary64, rounded once
    to binary32), a zero +0.0, converted to the dtype, a zero +0.0."""
    a, sdt = desc["scale_axis"], desc["scale_dtype"]
    assert sdt in ("float32", "float16") and type(a) is int and 0 <= a < len(shape)
    c_count = shape[a]
    scales = np.frombuffer(part, constants.DTYPES[sdt])
    assert scales.size == c_count and all(math.isfinite(float(v)) for v in scales)
    r = math.prod(shape[a + 1 :])
    tdt = constants.DTYPES[desc["dtype"]]
    out = []
    for i, x in enumerate(unscaled.reshape(-1).tolist()):
        sigma = float(scales[(i // r) % c_count])
        with np.errstate(over="ignore", invalid="ignore"):
            p = np.float32(sigma * x)  # binary64 product of two binary32 values is exact
        if p == 0:
            p = np.float32(0.0)
        e = np.array([p], np.float32).astype(tdt)
        if e[0] == 0:
            e = np.zeros(1, tdt)
        out.append(e)
    return (np.concatenate(out) if out else np.zeros(0, tdt)).reshape(shape)


def _spec_decode_codebook(desc: dict, parts: dict[str, bytes], cb: np.ndarray, shape: tuple, n: int) -> np.ndarray:
    enc, dtype = desc["encoding"], desc["dtype"]
    tdt = constants.DTYPES[dtype]
    lane = desc["lane_size"]
    if enc == "codebook-dense":
        sym = spec_decode_stream(parts["indices"], n, cb.size, lane)
        return cb[np.array(sym, np.int64)].reshape(shape) if n else np.zeros(shape, tdt)
    m, b = desc["entries"], desc["gap_bits"]
    assert desc["nonzeros"] <= m <= n
    gaps = spec_decode_stream(parts["gaps"], m, 1 << b, lane)
    idx = spec_decode_stream(parts["indices"], m, cb.size + 1, lane)
    nl = -(-m // lane)
    bases = list(struct.unpack(f"<{nl}Q", parts["lane_bases"]))
    values = np.concatenate([np.zeros(1, tdt), cb])
    out = np.zeros(n, tdt)
    # sequential rule: p_0 = -1, p_k = p_{k-1} + 1 + g_k
    p = -1
    for k in range(m):
        if k % lane == 0:
            assert bases[k // lane] == p + 1, "lane base is not the positions consumed before the lane"
        p = p + 1 + gaps[k]
        assert p < n
        out[p] = values[idx[k]]
    if m:
        assert bases[0] == 0
    return out.reshape(shape)


def _spec_decode_planes(desc: dict, parts: dict[str, bytes], shape: tuple, n: int) -> np.ndarray:
    """Spec 7.4, element by element with Python integers: planes -> rotated patterns -> bit patterns."""
    dtype = desc["dtype"]
    assert dtype in constants.FLOAT_DTYPES
    w = constants.ITEMSIZE[dtype]
    W = 8 * w
    assert len(desc["planes"]) == w
    t = [0] * n
    for k, mode in enumerate(desc["planes"]):
        part = parts[f"plane{k}"]
        if mode == "stored":
            assert len(part) == n
            plane = list(part)
        else:
            assert mode == "huffman"
            plane = spec_decode_stream(part, n, 256, desc["lane_size"])
        for i in range(n):
            t[i] |= plane[i] << (8 * k)
    u = [(x >> 1) | ((x & 1) << (W - 1)) for x in t]  # rotate right by one bit
    return np.array(u, dtype=constants.UINT_OF_SIZE[w]).view(constants.DTYPES[dtype]).reshape(shape)


def spec_read(path) -> dict[str, object]:
    """Spec 2-6: check the container of a file and decode everything, using nothing of dcformat's reader."""
    data = Path(path).read_bytes()
    assert data[:8] == constants.MAGIC
    major, minor, header_len, header_crc, preamble_crc = struct.unpack_from("<HHIII", data, 8)
    assert zlib.crc32(data[:20]) == preamble_crc
    assert major == 1 and minor in (0, 1, 2, 3, 4, 5)  # 2.2: the lowest minor that defines what the file uses (checked below)
    assert header_len <= constants.MAX_HEADER_BYTES and 24 + header_len <= len(data)
    stored = data[24 : 24 + header_len]
    assert zlib.crc32(stored) == header_crc  # the CRC is of the stored (deflated) bytes
    bound = constants.MAX_EXPANSION * len(data) + constants.EXPANSION_SLACK  # 10: the expansion bound B
    zdict = file_dictionary(data)  # 1.4, 1.5: header, metadata and graph against the minor's preset dictionary
    header_bytes = raw_inflate(stored, header_limit(len(data)), zdict)
    assert header_bytes.isascii()
    header = json.loads(header_bytes)
    # compact (no whitespace outside strings), no duplicate keys, no NaN: the text is its own compact form
    assert json.dumps(header, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii") == header_bytes
    end, out = 24 + header_len, {}
    kinds = []
    for s in header["sections"]:
        assert "offset" not in s  # offsets are not stored: the tiling rule places each section
        off = -(-end // 8) * 8
        assert not any(data[end:off])
        body = data[off : off + s["length"]]
        assert len(body) == s["length"] and zlib.crc32(body) == s["crc32"]
        kinds.append(s["kind"])
        if s["kind"] == "tensor":
            assert s["tensor"]["name"] not in out
            out[s["tensor"]["name"]] = spec_decode_tensor(s["tensor"], body)
        elif s["kind"] in ("metadata", "graph"):
            assert "tensor" not in s
            # stored deflated; inflated under MAX_EXPANSION x length + EXPANSION_SLACK and B / parse factor
            factor = constants.JSON_PARSE_FACTOR if s["kind"] == "metadata" else constants.GRAPH_PARSE_FACTOR
            out[s["kind"]] = raw_inflate(body, min(constants.MAX_EXPANSION * s["length"] + constants.EXPANSION_SLACK,
                                                   bound // factor), zdict)
        else:
            assert s["kind"] == "padding" and "tensor" not in s and not any(body)  # 5.4
        end = off + s["length"]
    assert end == len(data)
    assert kinds.count("metadata") <= 1 and kinds.count("graph") <= 1 and kinds.count("padding") <= 1
    # 2.2: the reference writer writes 1.3 when a tensor uses lzma, else 1.2 when one has per-channel scales,
    # else 1.1 when one uses float-planes, else 1.0
    tensors = [s["tensor"] for s in header["sections"] if s["kind"] == "tensor"]
    used = {t["encoding"] for t in tensors}
    scaled = any("scale_axis" in t for t in tensors)
    needs = 3 if "lzma" in used else 2 if scaled else 1 if "float-planes" in used else 0
    assert minor in ((4, 5) if zdict else (needs,))  # 4 or 5 only when deflated against a dictionary
    return out


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_spec_decoder_reads_what_dcformat_writes(tmp_path):
    for path, expected in sample_files(tmp_path):
        got = spec_read(path)
        with dcformat.open(path) as r:
            assert list(r) == [k for k in got if k not in ("metadata", "graph")]
            for name, want in expected.items():
                _same(got[name], want)
                _same(r[name], want)
            if "metadata" in got:
                assert json.loads(got["metadata"]) == r.metadata
            if "graph" in got:
                assert got["graph"] == r.graph_bytes


def test_spec_decoder_reads_golden_vectors():
    """The spec-only decoder reads every golden vector as dcformat does, and the vectors' header,
    metadata and graph are stored as the reference writer's zlib parameters (spec 1) make them."""
    paths = sorted(VECTORS.glob("*.dcz"))
    if not paths:
        pytest.skip("no golden vectors in spec/vectors")
    for p in paths:
        got = spec_read(p)
        data = p.read_bytes()
        header_len = struct.unpack_from("<I", data, 12)[0]
        text = read_header_text(p)
        zdict = file_dictionary(data)
        assert data[24 : 24 + header_len] == spec_deflate(text, zdict), p.name
        with dcformat.open(p) as r:
            assert [k for k in got if k not in ("metadata", "graph")] == list(r), p.name
            for name in r:
                _same(got[name], r[name])
            if "metadata" in got:
                assert json.loads(got["metadata"]) == r.metadata, p.name
            if "graph" in got:
                assert got["graph"] == r.graph_bytes, p.name
        end = 24 + header_len
        for s in json.loads(text)["sections"]:  # stored metadata and graph are zlib's output too
            off = -(-end // 8) * 8
            if s["kind"] in ("metadata", "graph"):
                body = data[off : off + s["length"]]
                assert body == spec_deflate(raw_inflate(body, constants.MAX_EXPANSION * len(body) + constants.EXPANSION_SLACK,
                                                        zdict), zdict)
            end = off + s["length"]


def build_file(sections, stored_header: bytes | None = None, header: dict | None = None) -> bytes:
    """A file made by the container rules of spec 2-3 alone: ``sections`` is a list of (entry without
    length/crc32, stored bytes); the header is deflated unless ``stored_header`` is given."""
    entries = [{"kind": e["kind"], "length": len(b), "crc32": zlib.crc32(b), **e} for e, b in sections]
    if header is None:
        header = {"sections": entries}
    if stored_header is None:
        stored_header = spec_deflate(json.dumps(header, separators=(",", ":")).encode("ascii"))
    pre = constants.MAGIC + struct.pack("<HHII", 1, 0, len(stored_header), zlib.crc32(stored_header))
    out = bytearray(pre + struct.pack("<I", zlib.crc32(pre)) + stored_header)
    for _, body in sections:
        out += bytes(-len(out) % 8) + body  # 3.3: zero padding to the next multiple of ALIGNMENT = 8
    return bytes(out)


def _opens(path, data: bytes):
    """Write ``data`` to ``path`` and open it: (tensor names, metadata)."""
    path.write_bytes(data)
    with dcformat.open(path) as r:
        return list(r), r.metadata


def test_header_inflate_rules_as_specified(tmp_path):
    """Spec 1, 3, 11 (at open, 5-7): the stored header is a complete raw DEFLATE stream that ends at
    24 + header_len and inflates to at most MAX_HEADER_BYTES; its CRC is checked before inflating."""
    path = tmp_path / "h.dcz"
    text = b'{"sections":[]}'
    ok = spec_deflate(text)
    assert _opens(path, build_file([], ok)) == ([], {})
    assert spec_read(path) == {}
    # any valid DEFLATE encoding is accepted, not only zlib level 9's
    for level in (0, 1, 6):
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        assert _opens(path, build_file([], c.compress(text) + c.flush())) == ([], {})
    bad = {
        "trailing byte": ok + b"\x00",
        "incomplete": ok[:-1],
        "reserved block type": b"\x07\x00",
        "zlib wrapper": zlib.compress(text, 9),
        "not deflated": text,
        "empty": b"",
    }
    for why, stored in bad.items():
        path.write_bytes(build_file([], stored))
        with pytest.raises(dcformat.FormatError):
            dcformat.open(path)
        with pytest.raises((AssertionError, zlib.error, ValueError)):
            spec_read(path)
        # the header CRC comes first: the same bytes with a wrong header_crc32 are a ChecksumError
        data = bytearray(build_file([], stored))
        data[16:20] = struct.pack("<I", zlib.crc32(stored) ^ 1)
        data[20:24] = struct.pack("<I", zlib.crc32(bytes(data[:20])))
        path.write_bytes(bytes(data))
        with pytest.raises(dcformat.ChecksumError):
            dcformat.open(path)
    # the limit is on the inflated JSON text: exactly the limit is fine, one byte more is not
    for padding in (0, 2 << 20):  # a tiny file: B / JSON_PARSE_FACTOR; a 2 MiB one: MAX_HEADER_BYTES
        for over in (0, 1):
            text, data, limit = _header_at_limit(padding, over)
            assert len(text) == limit + over and (limit == constants.MAX_HEADER_BYTES) == (padding > 0)
            path.write_bytes(data)
            if not over:
                assert _opens(path, data) == ([], {})  # unknown header keys are ignored (2.2)
                assert spec_read(path) == {}
            else:
                with pytest.raises(dcformat.LimitError, match=f"more than {limit} bytes"):
                    dcformat.open(path)
                with pytest.raises(AssertionError, match="more than the limit"):
                    spec_read(path)


def header_limit(file_size: int) -> int:
    """Spec 3, 10: min(MAX_HEADER_BYTES, B / JSON_PARSE_FACTOR), B = MAX_EXPANSION * file size + EXPANSION_SLACK."""
    bound = constants.MAX_EXPANSION * file_size + constants.EXPANSION_SLACK
    return min(constants.MAX_HEADER_BYTES, bound // constants.JSON_PARSE_FACTOR)


def _header_at_limit(padding: int, over: int):
    """A header text of exactly (the limit of its own file + ``over``) bytes, in a file with a
    ``padding`` section of that many zero bytes (none if 0): (text, file bytes, limit)."""
    sections = [({"kind": "padding"}, bytes(padding))] if padding else []
    n = 0
    for _ in range(50):  # a fixed point: the file's size depends on the text, its limit on the size
        entries = [{"kind": e["kind"], "length": len(b), "crc32": zlib.crc32(b)} for e, b in sections]
        head = json.dumps({"sections": entries, "x": ""}, separators=(",", ":")).encode("ascii")
        text = head[:-2] + b"a" * n + b'"}'
        data = build_file(sections, spec_deflate(text))
        limit = header_limit(len(data))
        if len(text) == limit + over:
            return text, data, limit
        n += limit + over - len(text)
    raise AssertionError("no fixed point")


def test_deflated_sections_as_specified(tmp_path):
    """Spec 5.1, 5.2, 11: metadata and graph are stored deflated; length and CRC are of the stored
    bytes; a stream that is invalid, incomplete or followed by more bytes is a FormatError."""
    path = tmp_path / "m.dcz"
    meta = json.dumps({"producer": "tests", "n": [1, 2, 3]}, separators=(",", ":")).encode("ascii")
    assert _opens(path, build_file([({"kind": "metadata"}, spec_deflate(meta))])) == ([], json.loads(meta))
    assert spec_read(path)["metadata"] == meta
    model, _ = _graph_model("w", (2, 2))
    graph = model.SerializeToString()
    w = dcformat.encode_raw("w", np.ones((2, 2), np.float32))
    dcformat.write(path, [w], graph=model)
    with dcformat.open(path) as r:
        assert r.graph_bytes == graph
    assert spec_read(path)["graph"] == graph
    for stored in (spec_deflate(meta) + b"\x00", spec_deflate(meta)[:-1], b"\x07\x00", zlib.compress(meta), meta, b""):
        for kind, read in (("metadata", lambda r: r.metadata), ("graph", lambda r: r.graph_bytes)):
            path.write_bytes(build_file([({"kind": kind}, stored)]))
            with dcformat.open(path) as r:  # the header is fine; the section is checked when it is read
                with pytest.raises(dcformat.FormatError):
                    read(r)
            with pytest.raises((AssertionError, zlib.error)):
                spec_read(path)
    # the section CRC is checked before inflating
    data = bytearray(build_file([({"kind": "metadata"}, b"\x07\x00")], header={"sections": [
        {"kind": "metadata", "length": 2, "crc32": zlib.crc32(b"\x07\x00") ^ 1}]}))
    path.write_bytes(bytes(data))
    with dcformat.open(path) as r:
        with pytest.raises(dcformat.ChecksumError):
            r.metadata


def test_offsets_come_from_the_tiling_rule(tmp_path):
    """Spec 3.2, 3.3: entries carry no offset; sections start at align_up(end of previous, 8), the
    first after the stored header; a reader never takes a place from the header (an "offset" key is
    an unknown key, ignored)."""
    x = np.arange(3, dtype=np.uint8)  # 3-byte sections: the padding between them is exercised
    a, b = dcformat.encode_raw("a", x), dcformat.encode_raw("b", x + 1)
    path = tmp_path / "t.dcz"
    dcformat.write(path, [a, b])
    data = path.read_bytes()
    header = read_header(path)
    assert all("offset" not in e for e in header["sections"])
    sec = [({"kind": "tensor", "tensor": e["tensor"]}, body) for e, body in
           zip(header["sections"], (x.tobytes(), (x + 1).tobytes()))]
    assert build_file(sec) == data  # the tiling of 3.3, byte for byte
    hl = struct.unpack_from("<I", data, 12)[0]
    first = -(-(24 + hl) // 8) * 8
    assert data[first : first + 3] == x.tobytes() and data[first + 8 : first + 11] == (x + 1).tobytes()
    assert len(data) == first + 11
    entries = [dict(e, offset=0) for e in header["sections"]]  # a wrong "offset" changes nothing
    path.write_bytes(build_file(sec, header={"sections": entries}))
    with dcformat.open(path) as r:
        _same(r["a"], x)
        _same(r["b"], x + 1)
    # non-zero padding between sections, or a byte after the last one, is a FormatError
    for pos in (first + 3, first + 7):
        bad = bytearray(data)
        bad[pos] = 1
        path.write_bytes(bytes(bad))
        with pytest.raises(dcformat.FormatError):
            dcformat.open(path)
    path.write_bytes(data + b"\x00")
    with pytest.raises(dcformat.FormatError):
        dcformat.open(path)


def test_packed_code_lengths_as_specified(tmp_path):
    """Spec 8.1: two 4-bit code lengths per byte, symbol 2i high; for an odd alphabet the last low
    nibble must be zero; then zero padding to a multiple of 8 (HuffmanError otherwise)."""
    sym = np.array([0, 0, 1, 2, 0, 4, 4, 3, 0, 0])
    part = streams.encode_stream(sym, 5, 256).tobytes()
    lengths = [v for byte in part[:3] for v in (byte >> 4, byte & 0x0F)]
    assert lengths[5] == 0 and lengths[:5] == huffman.code_lengths(np.bincount(sym, minlength=5)).tolist()
    assert spec_decode_stream(part, sym.size, 5, 256) == sym.tolist()
    cb = [0.0, 0.5, 1.5, -2.0, 3.0]
    t = dcformat.encode_codebook("t", cb, sym, encoding="codebook-dense", lane_size=256)
    assert t.info.parts["indices"] == len(part)
    path = tmp_path / "p.dcz"
    dcformat.write(path, [t])
    (entry,) = read_header(path)["sections"]
    body = path.read_bytes()[-entry["length"] :]
    at = len(body) - len(part)  # the indices part is the last one
    assert body[at:] == part
    for pos, bit, why in ((at + 2, 0x01, "unused low nibble"), (at + 3, 0x10, "padding"), (at + 7, 0x80, "padding")):
        bad = bytearray(body)
        bad[pos] |= bit
        with pytest.raises(AssertionError):
            spec_decode_stream(bytes(bad[at:]), sym.size, 5, 256)
        with pytest.raises(dcformat.HuffmanError):
            streams.parse_stream(np.frombuffer(bytes(bad[at:]), np.uint8), sym.size, 5, 256, "t", 0)
        path.write_bytes(build_file([({"kind": "tensor", "tensor": entry["tensor"]}, bytes(bad))]))
        with dcformat.open(path) as r:
            with pytest.raises(dcformat.HuffmanError):
                r["t"]


def test_graph_reference_as_specified(tmp_path):
    """An initializer that refers to a record as spec 5.2 says is filled from that record."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    model, onnx = _graph_model("fc.weight", (4, 3))
    path = tmp_path / "g.dcz"
    dcformat.write(path, [dcformat.encode("fc.weight", w)], graph=model)
    rebuilt = dcformat.to_onnx(path)
    from onnx import numpy_helper

    (init,) = rebuilt.graph.initializer
    assert init.data_location != onnx.TensorProto.EXTERNAL
    _same(numpy_helper.to_array(init), w)


def test_expansion_bound_as_specified(tmp_path):
    """A tensor declaring more than MAX_EXPANSION x file size + EXPANSION_SLACK bytes is refused at open."""
    n = 1 << 24  # one-symbol dense code: 64 MiB of float32 from about a kilobyte
    t = dcformat.encode_codebook("big", [1.0], np.zeros(n, np.uint8), encoding="codebook-dense",
                                 lane_size=constants.MAX_LANE_SIZE)
    path = tmp_path / "big.dcz"
    size = dcformat.write(path, [t], checked=False)
    assert 4 * n > constants.MAX_EXPANSION * size + constants.EXPANSION_SLACK
    with pytest.raises(dcformat.LimitError):
        dcformat.open(path)
    with dcformat.open(path, max_decoded_bytes=4 * n) as r:  # a caller may raise the bound explicitly
        assert r.info("big").decoded_nbytes == 4 * n
    # 5.4: the writer pads such a file until the bound covers it, and no further
    padded = dcformat.write(path, [t])
    assert constants.MAX_EXPANSION * padded + constants.EXPANSION_SLACK >= 4 * n
    assert constants.MAX_EXPANSION * (padded - 16) + constants.EXPANSION_SLACK < 4 * n
    assert spec_read(path)["big"].shape == (n,)
    with dcformat.open(path) as r:
        assert [s.kind for s in r.sections] == ["tensor", "padding"] and (r["big"] == 1.0).all()

"""Hostile float-planes tensors (format 1.1, spec 6.1 item 10, 7.4, 8, 11): bad plane lists and
part sizes, damaged streams, wrong counts. Each must raise the DczError subclass the spec names,
at the stage it names (at open for the descriptor, when the tensor is read for its data), and
nothing else. Files are valid ones from dcformat.write, edited with tests/attacks/make_attacks.py's
Dcz surgery (lengths and CRCs recomputed, so only the intended rule is broken).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import DczError, HuffmanError, TensorError
from dcformat import records as dcz_records

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
import make_attacks as ma  # noqa: E402

from staged import expect, outcome  # noqa: E402

LANE = 256
N = 2000  # 8 lanes of 256, the last one partial


def weights(n=N, dtype=np.float32, seed=0):
    return (np.random.default_rng(seed).standard_normal(n) * 0.05).astype(dtype)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> bytes:
    """A file with two float-planes tensors: every plane Huffman-coded, and stored/coded mixed."""
    path = tmp_path_factory.mktemp("planes") / "p.dcz"
    w = weights()
    dcformat.write(path, [
        dcformat.encode_float_planes("h", w, planes=["huffman"] * 4, lane_size=LANE),
        dcformat.encode_float_planes("m", w, planes=["stored", "stored", "stored", "huffman"], lane_size=LANE),
    ])
    data = path.read_bytes()
    with dcformat.open(path) as r:  # the sample is valid
        for name in r:
            assert r[name].tobytes() == w.tobytes()
    return data


# ---------------------------------------------------------------- descriptor (at open, 6.1 item 10)
@pytest.mark.parametrize("label, tamper, match", [
    ("no planes", lambda t: t["h"].pop("planes"), "'planes' must list 4"),
    ("planes not a list", lambda t: t["h"].update(planes="huffman"), "'planes' must list 4"),
    ("too few planes", lambda t: t["h"].update(planes=["huffman"] * 3), "'planes' must list 4"),
    ("too many planes", lambda t: t["h"].update(planes=["huffman"] * 5), "'planes' must list 4"),
    ("unknown mode", lambda t: t["h"].update(planes=["huffman", "huffman", "zstd", "huffman"]), "'planes' must list 4"),
    ("mode not a string", lambda t: t["h"].update(planes=[1, 1, 1, 1]), "'planes' must list 4"),
    ("integer dtype", lambda t: t["h"].update(dtype="int32"), "needs a floating-point dtype"),
    ("dtype of another width", lambda t: t["h"].update(dtype="float16"), "'parts' must list plane0, plane1"),
    ("no lane_size", lambda t: t["h"].pop("lane_size"), "'lane_size'"),
    ("lane_size not a power of two", lambda t: t["h"].update(lane_size=300), "not a power of two"),
    ("lane_size too small", lambda t: t["h"].update(lane_size=128), "'lane_size'"),
    ("stored plane marked huffman is fine, huffman marked stored is not",
     lambda t: t["h"].update(planes=["stored", "huffman", "huffman", "huffman"]), "stored plane0 is"),
    ("parts out of order", lambda t: t["m"].update(parts=dict(reversed(list(t["m"]["parts"].items())))),
     "'parts' must list plane0, plane1, plane2, plane3"),
    ("a part missing", lambda t: t["m"]["parts"].pop("plane3"), "'parts' must list"),
    ("nonzeros above N", lambda t: t["m"].update(nonzeros=N + 1), "'nonzeros'"),
])
def test_bad_descriptor_rejected_at_open(sample, tmp_path, label, tamper, match):
    d = ma.Dcz.parse(sample)
    data = d.build(tamper=lambda h: tamper({s["tensor"]["name"]: s["tensor"] for s in h["sections"] if "tensor" in s}))
    expect(tmp_path, data, "open", TensorError, match)


def test_stored_plane_of_wrong_size_rejected_at_open(sample, tmp_path):
    d = ma.Dcz.parse(sample)
    p = d.parts("m")
    for size in (N - 1, N + 1, 0):
        d2 = d.copy()
        d2.set_parts("m", plane1=(p["plane1"] * 2)[:size])
        expect(tmp_path, d2.build(), "open", TensorError, f"stored plane1 is {size} bytes")


def test_a_1_0_reader_refuses_the_encoding(sample, tmp_path, monkeypatch):
    """Spec 2.2: an older reader (no float-planes) refuses the tensor as an unknown encoding."""
    monkeypatch.setattr(dcz_records, "ENCODINGS", ("raw", "codebook-dense", "codebook-sparse"))
    expect(tmp_path, sample, "open", TensorError, "unknown encoding 'float-planes'")


# ---------------------------------------------------------------- streams (when read, 11 rows 4 and 6)
def _stream(d, name, k):
    return ma.StreamParts.split(d.parts(name)[f"plane{k}"], 256, N, LANE)


def test_coded_plane_too_short(sample, tmp_path):
    d = ma.Dcz.parse(sample)
    d.set_parts("m", plane3=d.parts("m")["plane3"][:100])  # inside the 128-byte code-length table
    expect(tmp_path, d.build(), "read", HuffmanError, "shorter than its code table and lane table", "m")


@pytest.mark.parametrize("label, edit, match", [
    ("over-subscribed code", lambda s: s.lengths.__setitem__(slice(0, 4), bytes([1, 1, 1, 1])), "over-subscribed"),
    ("incomplete code", lambda s: s.lengths.__setitem__(int(np.flatnonzero(np.frombuffer(bytes(s.lengths), np.uint8))[0]), 15),
     "code lengths"),
    ("no symbols", lambda s: s.lengths.__setitem__(slice(None), bytes(256)), "code has no symbols"),
    ("first lane offset", lambda s: s.offsets.__setitem__(0, 1), "first lane offset"),
    ("offsets decrease", lambda s: s.offsets.__setitem__(3, s.offsets[2] - 1), "lane offsets decrease"),
    ("offset past the payload", lambda s: s.offsets.__setitem__(-1, len(s.payload) + 1), "past the payload"),
    ("extra byte in a lane", lambda s: s.payload.extend(b"\x00"), "unused trailing bytes"),
    ("lane cut short", lambda s: s.payload.__delitem__(slice(-1, None)), "codes run past the end of the lane"),
])
def test_damaged_plane_stream(sample, tmp_path, label, edit, match):
    d = ma.Dcz.parse(sample)
    s = _stream(d, "h", 2)
    edit(s)
    d.set_stream("h", "plane2", s)
    expect(tmp_path, d.build(), "read", HuffmanError, match, "h")


def test_lane_error_names_plane_and_lowest_lane(sample, tmp_path):
    """Two bad lanes in two planes: the lowest-numbered lane is reported, with its plane (11 row 6)."""
    d = ma.Dcz.parse(sample)
    s3 = _stream(d, "h", 3)
    s1 = _stream(d, "h", 1)
    # lane 5 of plane 3 gets a spare byte (its end moves the next offsets), lane 2 of plane 1 too
    for s, lane in ((s3, 5), (s1, 2)):
        at = s.lane_end(lane)
        s.payload[at:at] = b"\x00"
        for j in range(lane + 1, len(s.offsets)):
            s.offsets[j] += 1
    d.set_stream("h", "plane3", s3)
    d.set_stream("h", "plane1", s1)
    expect(tmp_path, d.build(), "read", HuffmanError, "plane1 stream lane 2", "h")


def test_padding_bits_in_a_lane(sample, tmp_path):
    d = ma.Dcz.parse(sample)
    s = _stream(d, "h", 3)
    for lane in range(len(s.offsets)):  # a lane whose last byte has unused bits: set the lowest one
        last = s.lane_end(lane) - 1
        if last >= s.offsets[lane] and not s.payload[last] & 1:
            s.payload[last] |= 1
            break
    d.set_stream("h", "plane3", s)
    stage, err = outcome(tmp_path, d.build(), "h")
    assert stage == "read" and isinstance(err, HuffmanError), repr(err)
    assert "padding bits" in str(err) or "codes run past" in str(err)


def test_empty_tensor_with_non_empty_stream(tmp_path):
    path = tmp_path / "e.dcz"
    dcformat.write(path, [dcformat.encode_float_planes("e", np.zeros(0, np.float32), planes=["huffman"] * 4)])
    d = ma.Dcz.parse(path.read_bytes())
    d.set_parts("e", plane3=ma.make_stream(256, {0: 1}, [0]))
    expect(tmp_path, d.build(), "read", HuffmanError, "a stream of 0 symbols must be empty", "e")


def test_wrong_nonzeros_rejected_after_decoding(sample, tmp_path):
    d = ma.Dcz.parse(sample)
    data = d.build(tamper=lambda h: [s["tensor"].update(nonzeros=s["tensor"]["nonzeros"] - 1)
                                     for s in h["sections"] if s.get("tensor", {}).get("name") == "m"])
    expect(tmp_path, data, "read", TensorError, "non-zero elements", "m")


def test_zero_bit_plane_decodes_everywhere(tmp_path):
    """A single-symbol (0-bit) plane stream over many lanes holds that byte in every element."""
    x = np.full(1000, 0.375, np.float32)
    x[::7] = -0.375
    path = tmp_path / "c.dcz"
    t = dcformat.encode_float_planes("c", x, planes=["huffman"] * 4, lane_size=LANE)
    dcformat.write(path, [t])
    with dcformat.open(path) as r:
        assert r["c"].tobytes() == x.tobytes()
    assert t.parts["plane3"].size == 128 + 8 * 4  # the exponent: one symbol, no payload


def test_payload_mutations_fail_cleanly(sample, tmp_path):
    """Random byte changes in coded planes (CRCs fixed): a DczError or a decode, never anything else."""
    rng = random.Random(18)
    d = ma.Dcz.parse(sample)
    outcomes = set()
    for trial in range(60):
        d2 = d.copy()
        k = rng.randrange(4)
        part = bytearray(d2.parts("h")[f"plane{k}"])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(part))
            part[at] = rng.randrange(256)
        d2.set_parts("h", **{f"plane{k}": bytes(part)})
        stage, err = outcome(tmp_path, d2.build(), "h")
        outcomes.add((stage, type(err).__name__))
    assert outcomes <= {("ok", "NoneType"), ("read", "HuffmanError"), ("read", "TensorError")}, outcomes
    assert ("read", "HuffmanError") in outcomes


def test_header_json_of_sample_is_what_the_spec_says(sample):
    """The descriptors of the sample carry lane_size and planes, and nothing codebook-ish."""
    d = ma.Dcz.parse(sample)
    for name, planes in (("h", ["huffman"] * 4), ("m", ["stored", "stored", "stored", "huffman"])):
        desc = d.desc(name)
        assert list(desc) == ["name", "dtype", "shape", "encoding", "nonzeros", "lane_size", "planes", "parts"]
        assert desc["planes"] == planes and desc["encoding"] == "float-planes"
        assert list(desc["parts"]) == ["plane0", "plane1", "plane2", "plane3"]
    assert json.loads(json.dumps(d.entries))  # plain JSON

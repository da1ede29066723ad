"""Hostile records with per-channel scales (format 1.2, spec 6.1 item 11, 7.5, 11): bad axes, dtypes,
counts and part layouts (refused at open, TensorError), non-finite or truncated scales and wrong counts
(refused when read), mutations; older readers refuse, never misread. Files are valid ones from
dcformat.write, edited with tests/attacks/make_attacks.py's Dcz surgery (lengths and CRCs recomputed, so
only the intended rule is broken).
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import dcformat
from dcformat import DczError, HuffmanError, TensorError, VersionError
from dcformat.reader import DczReader

sys.path.insert(0, str(Path(__file__).parent / "attacks"))
import make_attacks as ma  # noqa: E402

from staged import expect, outcome  # noqa: E402

from clitools import cli, one_line_error  # noqa: E402

LANE = 256
CB = np.array([-1.0, -0.25, 0.5, 2.0], np.float32)
SP_CB = np.array([0.0, -1.0, 0.5, 2.0], np.float32)


def _tensors():
    rng = np.random.default_rng(21)
    d_scales = np.exp(rng.uniform(-4, 2, 40)).astype(np.float32)
    s_scales = (rng.standard_normal(50) * 3).astype(np.float32)
    s_idx = np.where(rng.random((60, 50)) < 0.3, rng.integers(1, 4, (60, 50)), 0)
    return [
        dcformat.encode_codebook("d", CB, rng.integers(0, 4, (40, 25)), scales=d_scales, encoding="codebook-dense",
                                 lane_size=LANE),
        dcformat.encode_codebook("s", SP_CB, s_idx, scales=s_scales, scale_axis=1, scale_dtype="float16",
                                 encoding="codebook-sparse", gap_bits=2, lane_size=LANE),
        dcformat.encode("plain", np.arange(10, dtype=np.float32)),
    ]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("scales") / "s.dcz"
    ts = _tensors()
    dcformat.write(path, ts)
    with dcformat.open(path) as r:  # the sample is valid
        assert r.version == (1, 2)
        for t in ts:
            r[t.name]
    return path.read_bytes()


def _edit(name, fn):
    def tamper(h):
        for s in h["sections"]:
            if s.get("tensor", {}).get("name") == name:
                fn(s["tensor"])
    return tamper


# ---------------------------------------------------------------- descriptor (at open, 6.1 items 3 and 11)
@pytest.mark.parametrize("label, name, edit, match", [
    ("axis = rank", "d", lambda t: t.update(scale_axis=2), "'scale_axis' must be an integer in [0, 1], got 2"),
    ("negative axis", "d", lambda t: t.update(scale_axis=-1), "'scale_axis' must be an integer in [0, 1]"),
    ("axis a float", "d", lambda t: t.update(scale_axis=0.0), "'scale_axis' must be an integer"),
    ("axis a bool", "d", lambda t: t.update(scale_axis=False), "'scale_axis' must be an integer"),
    ("axis a string", "d", lambda t: t.update(scale_axis="0"), "'scale_axis' must be an integer"),
    ("axis missing", "d", lambda t: t.pop("scale_axis"), "'scale_axis' must be an integer"),
    ("axis null", "d", lambda t: t.update(scale_axis=None), "'scale_axis' must be an integer"),
    ("dtype missing", "s", lambda t: t.pop("scale_dtype"), "scale_dtype must be one of ('float32', 'float16')"),
    ("dtype float64", "s", lambda t: t.update(scale_dtype="float64"), "scale_dtype must be one of"),
    ("dtype bfloat16", "s", lambda t: t.update(scale_dtype="bfloat16"), "scale_dtype must be one of"),
    ("dtype a list", "s", lambda t: t.update(scale_dtype=["float16"]), "scale_dtype must be one of"),
    ("wrong count: other axis", "d", lambda t: t.update(scale_axis=1),
     "scales part is 160 bytes, 25 x float32 (shape[1] of [40, 25]) needs 100"),
    ("wrong count: other dtype", "d", lambda t: t.update(scale_dtype="float16"),
     "scales part is 160 bytes, 40 x float16 (shape[0] of [40, 25]) needs 80"),
    ("wrong count: other shape", "s", lambda t: t.update(shape=[50, 60], scale_axis=1), "60 x float16"),
    ("keys without the part", "d", lambda t: t["parts"].pop("scales") and t.update(
        parts={"codebook": t["parts"]["codebook"], "indices": t["parts"]["indices"]}),
     "'parts' must list codebook, scales, indices in that order"),
    ("part without the keys", "s", lambda t: (t.pop("scale_axis"), t.pop("scale_dtype")),
     "'parts' must list codebook, lane_bases, gaps, indices in that order"),
    ("scales before codebook", "d", lambda t: t.update(parts={"scales": t["parts"]["scales"], **{
        k: v for k, v in t["parts"].items() if k != "scales"}}), "'parts' must list codebook, scales, indices"),
    ("scales last", "s", lambda t: t.update(parts={**{k: v for k, v in t["parts"].items() if k != "scales"},
                                                   "scales": t["parts"]["scales"]}),
     "'parts' must list codebook, scales, lane_bases, gaps, indices"),
])
def test_bad_descriptor_rejected_at_open(sample, tmp_path, label, name, edit, match):
    d = ma.Dcz.parse(sample)
    expect(tmp_path, d.build(tamper=_edit(name, edit)), "open", TensorError, match)


def test_keys_on_other_encodings_are_ignored(sample, tmp_path):
    """Fields not listed for an encoding are ignored (spec 6.1): scale keys on a raw tensor change nothing."""
    d = ma.Dcz.parse(sample)
    data = d.build(tamper=_edit("plain", lambda t: t.update(scale_axis=0, scale_dtype="float32")))
    stage, err = outcome(tmp_path, data)
    assert stage == "ok", err


def test_scaled_scalar_rejected_at_open(tmp_path):
    t = dcformat.encode_codebook("one", [0.5], np.zeros(1, int), scales=[2.0], encoding="codebook-dense")
    dcformat.write(tmp_path / "one.dcz", [t])
    d = ma.Dcz.load(tmp_path / "one.dcz")
    expect(tmp_path, d.build(tamper=_edit("one", lambda t: t.update(shape=[]))), "open", TensorError,
           "a scalar has no axis for per-channel scales")


@pytest.mark.parametrize("name, keep", [("d", 0), ("d", 159), ("d", 161), ("s", 98)])
def test_truncated_or_extended_scales_rejected_at_open(sample, tmp_path, name, keep):
    """A scales part of the wrong length (the descriptor's part lengths made to agree with the section)."""
    d = ma.Dcz.parse(sample)
    scales = d.parts(name)["scales"]
    d.set_parts(name, scales=(scales + b"\x00" * 8)[:keep])
    expect(tmp_path, d.build(), "open", TensorError, f"scales part is {keep} bytes")


def test_truncated_file_rejected_at_open(sample, tmp_path):
    for cut in (1, 9, 200):
        stage, err = outcome(tmp_path, sample[:-cut])
        assert stage == "open" and isinstance(err, DczError), (cut, err)


# ---------------------------------------------------------------- scales' values (when read, 7.5, 11 row 3)
F32_BAD = {"nan": 0x7FC00000, "-nan": 0xFFC00001, "inf": 0x7F800000, "-inf": 0xFF800000, "snan": 0x7F800001}
F16_BAD = {"nan": 0x7E00, "-nan": 0xFE01, "inf": 0x7C00, "-inf": 0xFC00, "snan": 0x7C01}


@pytest.mark.parametrize("bad", list(F32_BAD))
@pytest.mark.parametrize("name, channel", [("d", 0), ("d", 39), ("s", 7)])
def test_non_finite_scale_rejected_when_read(sample, tmp_path, bad, name, channel):
    d = ma.Dcz.parse(sample)
    scales = bytearray(d.parts(name)["scales"])
    if name == "d":
        struct.pack_into("<I", scales, 4 * channel, F32_BAD[bad])
        width = 4
    else:
        struct.pack_into("<H", scales, 2 * channel, F16_BAD[bad])
        width = 2
    d.set_parts(name, scales=bytes(scales))
    data = d.build()
    at = ma.section_offsets(data)[d.index(name)] + d.desc(name)["parts"]["codebook"]
    at = -(-at // 8) * 8 + width * channel
    expect(tmp_path, data, "read", TensorError, f"scale {channel} is", name)
    expect(tmp_path, data, "read", TensorError, f"(byte {at}); per-channel scales must be finite", name)
    stage, err = outcome(tmp_path, data, "plain")  # the other tensors still read
    assert stage == "ok", err


def test_lowest_bad_channel_is_named(sample, tmp_path):
    d = ma.Dcz.parse(sample)
    scales = bytearray(d.parts("d")["scales"])
    for c in (30, 12, 35):
        struct.pack_into("<I", scales, 4 * c, F32_BAD["inf"])
    d.set_parts("d", scales=bytes(scales))
    expect(tmp_path, d.build(), "read", TensorError, "scale 12 is inf", "d")


def test_scales_checked_before_the_streams(sample, tmp_path):
    """Spec 11: row 3 (finite scales) before row 4 (streams): a file with both defects gets TensorError."""
    d = ma.Dcz.parse(sample)
    scales = bytearray(d.parts("d")["scales"])
    struct.pack_into("<I", scales, 0, F32_BAD["nan"])
    d.set_parts("d", scales=bytes(scales), indices=d.parts("d")["indices"][:5])
    expect(tmp_path, d.build(), "read", TensorError, "scale 0 is nan", "d")


def test_changed_scale_breaks_nonzeros(sample, tmp_path):
    """A zeroed scale makes the channel +0.0: the declared nonzeros no longer hold (spec 7.5, 11 row 7)."""
    d = ma.Dcz.parse(sample)
    scales = bytearray(d.parts("d")["scales"])
    struct.pack_into("<f", scales, 4 * 3, 0.0)
    d.set_parts("d", scales=bytes(scales))
    expect(tmp_path, d.build(), "read", TensorError, "non-zero elements, the record declares", "d")


def test_scale_mutations_fail_cleanly_or_decode(sample, tmp_path):
    """Random changes to the scales and streams of the scaled tensors (CRCs fixed): a DczError or a decode
    whose values follow the spec from the bytes as they are, never anything else."""
    rng = random.Random(13)
    d = ma.Dcz.parse(sample)
    outcomes = set()
    for trial in range(80):
        d2 = d.copy()
        name = rng.choice(["d", "s"])
        part_name = rng.choice(["scales", "scales", "indices", "codebook"])
        part = bytearray(d2.parts(name)[part_name])
        for _ in range(rng.randint(1, 3)):
            part[rng.randrange(len(part))] = rng.randrange(256)
        d2.set_parts(name, **{part_name: bytes(part)})
        stage, err = outcome(tmp_path, d2.build(), name)
        outcomes.add((stage, type(err).__name__))
    assert outcomes <= {("ok", "NoneType"), ("read", "HuffmanError"), ("read", "TensorError")}, outcomes
    assert ("read", "TensorError") in outcomes


# ---------------------------------------------------------------- versions (2.2)
class Reader11(DczReader):
    MINOR = 1


def test_older_reader_refuses(sample, tmp_path):
    """A 1.1 reader: a 1.2 file's scaled record is a VersionError; in a file that claims 1.1, the parts rule
    refuses it (TensorError) -- never decoded without its scales."""
    expect(tmp_path, sample, "open", VersionError, "tensor 'd'", reader=Reader11)
    d = ma.Dcz.parse(sample)
    d.minor = 1
    expect(tmp_path, d.build(), "open", TensorError, "'parts' must list codebook, indices in that order",
           reader=Reader11)


def test_one_line_errors_from_the_tools(sample, tmp_path, capsys):
    from dcformat.cli import decode_main, inspect_main

    d = ma.Dcz.parse(sample)
    scales = bytearray(d.parts("d")["scales"])
    struct.pack_into("<I", scales, 8, F32_BAD["nan"])
    d.set_parts("d", scales=bytes(scales))
    bad = tmp_path / "nan.dcz"
    bad.write_bytes(d.build())
    code, out, _ = cli(inspect_main, [bad, "--verify"], capsys)
    assert code == 1 and "tensor d: DAMAGED: tensor 'd': scale 2 is nan" in out
    code, _, err = cli(decode_main, [bad, "--state-dict", tmp_path / "out.safetensors"], capsys)
    assert code == 1
    one_line_error(err, "scale 2 is nan")
    assert not (tmp_path / "out.safetensors").exists()  # nothing half-written
    worse = tmp_path / "axis.dcz"
    worse.write_bytes(ma.Dcz.parse(sample).build(tamper=_edit("s", lambda t: t.update(scale_axis=5))))
    code, _, err = cli(inspect_main, [worse], capsys)
    assert code == 1
    one_line_error(err, "'scale_axis' must be an integer in [0, 1], got 5")

"""Float rounding (converters/mantissa.py): the budget search's near-lossless rungs between 8-bit sharing and
an exact copy. Rounding is checked against numpy's own float16 conversion (IEEE round to nearest, ties to
even); the search must pick it under a tight budget and the file must decode to exactly the rounded values."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dcformat
from clitools import cli as _cli
from converters.cli import main as convert_main
from converters.mantissa import estimate_bytes, round_mantissa
from test_convert import FC, build_net


def test_ten_bits_is_float16s_rounding():
    """float32 -> 10 mantissa bits is what a float16 conversion does to values in float16's normal range."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(200_000) * rng.choice([1e-3, 0.1, 10.0], 200_000)).astype(np.float32)
    # every tie too: values exactly halfway between two float16 neighbours
    ties = ((np.uint32(127 << 23) | (np.arange(1024, dtype=np.uint32) << 13) | np.uint32(1 << 12)).view(np.float32))
    w = np.concatenate([w, ties, -ties])
    normal = (np.abs(w) >= np.finfo(np.float16).tiny) & (np.abs(w) <= 60000)
    ref = w[normal].astype(np.float16).astype(np.float32)
    got = round_mantissa(w, 10)[normal]
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_rounding_error_is_within_half_an_ulp_and_idempotent(dtype):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(50_000) * 0.05).astype(dtype)
    for m in (0, 3, 5, 7):
        q = round_mantissa(w, m)
        assert q.dtype == w.dtype and q.shape == w.shape
        nz = np.abs(w) >= np.finfo(dtype).tiny  # normal numbers (subnormals have a fixed absolute grid)
        rel = np.abs(q[nz].astype(np.float64) - w[nz]) / np.abs(w[nz].astype(np.float64))
        assert rel.max() <= 2.0 ** -(m + 1) * (1 + 1e-12)
        assert np.array_equal(round_mantissa(q, m).view(np.uint8), q.view(np.uint8))  # already on the grid
        assert np.array_equal(np.signbit(q), np.signbit(w))


def test_specials_and_overflow():
    big = np.finfo(np.float32).max
    w = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, big, -big, 1 + 2 ** -8, 1 + 3 * 2 ** -8], np.float32)
    q = round_mantissa(w, 7)
    assert np.array_equal(q[:4].view(np.uint32), w[:4].view(np.uint32))  # signed zeros and infinities kept
    assert np.isnan(q[4]) and q[4].view(np.uint32) == w[4].view(np.uint32)
    assert np.isfinite(q[5:7]).all() and q[5] == -q[6] and q[5] < big  # truncated, not rounded to inf
    assert q[7] == 1.0 and q[8] == 1 + 2 ** -6  # ties to even
    with pytest.raises(ValueError):
        round_mantissa(w, 24)
    with pytest.raises(ValueError):
        round_mantissa(np.arange(3), 2)


def test_the_estimate_is_the_encoders_bytes():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((300, 257)) * 0.02).astype(np.float32)
    for m in (23, 10, 7, 5):
        q = round_mantissa(w, m)
        enc = dcformat.encode("w", q)
        assert enc.encoding == "float-planes"
        est = dcformat.estimate_float_planes_bytes(q)
        assert abs(est - dcformat.encode_float_planes("w", q).nbytes) <= 4 * 5  # a byte per lane and plane
        assert abs(estimate_bytes(q) - enc.nbytes) <= 20
    # fewer mantissa bits, fewer bytes: about 8 + m bits a weight below m = 8 (exponent, kept bits, sign and zeros)
    sizes = [estimate_bytes(round_mantissa(w, m)) * 8 / w.size for m in (10, 7, 5)]
    assert sizes[0] > sizes[1] > sizes[2] and sizes[1] < 13


def test_a_tight_budget_rounds_instead_of_keeping_raw(tmp_path, capsys):
    """At --max-error 0.002 8-bit sharing of the fully connected layers is too coarse: the search keeps them as
    rounded floats, which decode to exactly round_mantissa(original, m), smaller than an exact copy."""
    src = tmp_path / "net.onnx"
    w = build_net(src)
    out = tmp_path / "net.dcz"
    code, stdout, err = _cli(convert_main, [src, "-o", out, "--max-error", "0.002", "--graph-opt", "none", "--json"],
                             capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    rows = {r["name"]: r for r in rep["layers"]}
    rounded = [n for n, r in rows.items() if r["action"] == "rounded"]
    assert rounded and set(rounded) <= set(FC) | {"conv2.weight", "fc3.weight"}, {n: r["action"] for n, r in rows.items()}
    dec = dcformat.load_weights(out)
    for name in rounded:
        m = rows[name]["mantissa"]
        assert 0 < m < 23 and rows[name]["bits"] is None and rows[name]["encoding"] == "float-planes"
        assert np.array_equal(dec[name].view(np.uint32), round_mantissa(w[name], m).view(np.uint32))
        assert rows[name]["bytes"] < dcformat.encode(name, w[name]).nbytes * 0.7
    assert rep["fidelity"]["within_budget"] and rep["fidelity"]["max_rel_l2"] <= 0.002
    # the table says it: action "rounded", bits "m<m>"
    code, stdout, err = _cli(convert_main, [src, "-o", tmp_path / "t.dcz", "--max-error", "0.002", "--graph-opt", "none"],
                             capsys)
    line = next(ln for ln in stdout.splitlines() if ln.startswith(rounded[0] + " "))
    assert " rounded " in line and f" m{rows[rounded[0]]['mantissa']} " in line

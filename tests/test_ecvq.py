"""Entropy-constrained weight sharing (converters/ecvq.py)."""

import numpy as np
import pytest

import dcformat
from converters.compress import choose_layout
from converters.ecvq import DEFAULT_STRENGTH, ecvq, parse_strength
from converters.quantize import quantize
from converters.settings import LayerSetting, SettingError


def layer(shape=(200, 300), sparsity=0.9, seed=0):
    """A pruned synthetic layer: Laplacian weights, the smallest ``sparsity`` of them zero."""
    w = np.random.default_rng(seed).laplace(0, 0.05, shape).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0
    return w


def stored(cb, idx, shape):
    enc, gb = choose_layout(cb, idx, "float32")
    return dcformat.encode_codebook("w", cb, idx, shape, "float32", encoding=enc, gap_bits=gb)


def entropy_bits(idx) -> float:
    """Order-0 entropy (bits) of the non-zero indices: what an ideal code of them costs."""
    c = np.bincount(idx[idx != 0].ravel())
    p = c[c > 0] / c.sum()
    return float(-(c[c > 0] * np.log2(p)).sum())


def mse(w, cb, idx) -> float:
    return float(np.mean((cb.astype(np.float64)[idx] - w) ** 2))


@pytest.mark.parametrize("bits", [3, 5, 8])
def test_fewer_bytes_at_bounded_distortion(bits):
    w = layer()
    cb0, i0 = quantize(w, bits)
    e0, b0, d0 = entropy_bits(i0), stored(cb0, i0, w.shape).nbytes, mse(w, cb0, i0)
    info = {}
    cb, idx = ecvq(w, bits, 2.0, info=info)
    e, b, d = entropy_bits(idx), stored(cb, idx, w.shape).nbytes, mse(w, cb, idx)
    assert e < e0 and b < b0, (e, e0, b, b0)  # fewer estimated and actual bytes
    # the trade: ECVQ minimises error + S x (k-means error per weight) x bits, and k-means' own solution was a
    # candidate, so the error it adds is bounded by S x d0 x the bits it saves (bytes x 8; 1.5x for the
    # difference between the bits it models and the bytes stored)
    nnz = np.count_nonzero(w)
    dn, d0n = d * w.size / nnz, d0 * w.size / nnz  # per non-zero weight (zeros are exact)
    assert (dn - d0n) * nnz <= 2.0 * d0n * (b0 - b) * 8 * 1.5
    assert d < 3 * d0
    assert info["centroids"] <= info["centroids_kmeans"] and info["mse"] >= 0
    # stronger: fewer bytes still
    cb2, idx2 = ecvq(w, bits, 8.0)
    assert stored(cb2, idx2, w.shape).nbytes < b


def test_strength_zero_is_plain_kmeans():
    w = layer(sparsity=0.5)
    imp = np.random.default_rng(1).random(w.shape[1]).astype(np.float32) + 0.1
    for kw in ({}, {"importance": imp}, {"init": "kmeans++", "seed": 3}):
        cb, idx = ecvq(w, 4, 0.0, **kw)
        cb0, idx0 = quantize(w, 4, **kw)
        assert np.array_equal(cb, cb0) and np.array_equal(idx, idx0) and idx.dtype == idx0.dtype


def test_deterministic_and_well_formed():
    w = layer(sparsity=0.7, seed=2)
    imp = np.random.default_rng(4).random(w.shape[1]) + 0.5
    a = ecvq(w, 5, 1.0, importance=imp)
    b = ecvq(w.copy(), 5, 1.0, importance=imp.copy())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    cb, idx = a
    assert cb[0] == 0 and np.all(np.diff(cb[1:]) > 0) and idx.shape == w.shape and idx.max() < cb.size
    assert np.all(cb[idx][w == 0] == 0)  # zeros stay zero
    assert cb.size <= 33
    assert stored(cb, idx, w.shape).nbytes < stored(*quantize(w, 5, importance=imp), w.shape).nbytes


def test_importance_moves_the_error():
    """With importance, the important columns keep more precision than the unimportant ones."""
    w = layer(sparsity=0.0, shape=(400, 64), seed=5)
    imp = np.ones(64)
    imp[:32] = 100.0
    cb, idx = ecvq(w, 3, 4.0, importance=imp)
    err = (cb.astype(np.float64)[idx] - w) ** 2
    assert err[:, :32].mean() < err[:, 32:].mean()


def test_prunes_only_where_positions_cost_more_than_they_are_worth():
    w = layer(sparsity=0.5, seed=6)
    w[w != 0] += np.sign(w[w != 0]) * 1e-4  # a few tiny non-zeros: a weight near 0 is cheap to drop
    w.flat[::97] = np.float32(1e-5)
    info = {}
    cb, idx = ecvq(w, 4, 4.0, info=info)
    d = cb[idx]
    gone = (w != 0) & (d == 0)
    assert gone.sum() == info["pruned"] > 0
    for sign in (1, -1):  # only the smallest of each sign go: the zero's cell is an interval around 0
        g, k = sign * w[gone & (sign * w > 0)], sign * w[(d != 0) & (sign * w > 0)]
        assert g.size == 0 or g.max() <= k.min()
    cbk, idxk = ecvq(w, 4, 4.0, prune=False)
    assert np.count_nonzero(cbk[idxk]) == np.count_nonzero(w)


def test_dense_layer_and_edge_cases():
    w = np.random.default_rng(7).standard_normal((64, 64)).astype(np.float32)  # no zeros: no zero entry
    cb, idx = ecvq(w, 4, 2.0)
    assert np.all(cb != 0) and np.count_nonzero(cb[idx]) == w.size
    z = np.zeros((10, 10), np.float32)
    cb, idx = ecvq(z, 4, 2.0)
    assert np.array_equal(cb[idx], z)
    few = np.array([0.0, 1.0, 2.0, 1.0, 0.0] * 20, np.float32)  # exact already: unchanged
    cb, idx = ecvq(few, 4, 2.0)
    assert np.array_equal(cb[idx], few)


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", "", "1e9"])
def test_bad_strength_is_one_line(text):
    with pytest.raises(ValueError) as e:
        parse_strength(text)
    assert "\n" not in str(e.value) and "ECVQ strength" in str(e.value)
    if text:
        with pytest.raises(SettingError) as e:
            LayerSetting.parse("--ecvq", f"fc*={text}", parse_strength)
        assert "\n" not in str(e.value) and str(e.value).startswith("--ecvq:")


def test_strength_parsing():
    assert parse_strength("0") == 0.0 and parse_strength(" 2.5 ") == 2.5
    s = LayerSetting.parse("--ecvq", "fc1*=4,1", parse_strength, DEFAULT_STRENGTH)
    assert s.get("fc1.weight") == 4.0 and s.get("conv.weight") == 1.0
    assert LayerSetting.parse("--ecvq", None, parse_strength, DEFAULT_STRENGTH).get("x") == DEFAULT_STRENGTH


@pytest.mark.parametrize("value", ["abc", "-2", "fc*=nan", "fc*="])
def test_cli_bad_strength_is_one_line(value, tmp_path, capsys):
    from clitools import cli, one_line_error
    from converters.cli import main

    code, _, err = cli(main, [tmp_path / "missing.onnx", "--ecvq", value], capsys)
    assert code == 2
    one_line_error(err, "--ecvq")


def test_pipeline_strength_setting():
    pytest.importorskip("torch")
    from converters import pipeline as P

    s = P.Settings(ecvq="fc1*=4,1")
    assert s.ecvq.get("fc1.weight") == 4.0 and s.ecvq.get("fc2.weight") == 1.0
    assert P.Settings().ecvq.get("fc1.weight") == DEFAULT_STRENGTH
    assert P.Settings().describe()["ecvq"] == DEFAULT_STRENGTH
    with pytest.raises(SettingError) as e:
        P.Settings(ecvq="x")
    assert "\n" not in str(e.value) and "--ecvq" in str(e.value)


def test_pipeline_sharing_uses_the_strength():
    torch = pytest.importorskip("torch")
    from converters import pipeline as P

    torch.manual_seed(0)
    model = P.MLP((64, 128, 10))
    w = dict(model.named_parameters())["fc1.weight"]
    with torch.no_grad():
        w.mul_((w.abs() > w.abs().quantile(0.8)).float())  # pruned 80%
    base = w.detach().clone()
    q0 = P.quantize_layers(model, {"fc1.weight": 5}, strength=0.0)["fc1.weight"]
    with torch.no_grad():
        w.copy_(base)
    q8 = P.quantize_layers(model, {"fc1.weight": 5}, strength={"fc1.weight": 8.0})["fc1.weight"]
    cb0, i0 = quantize(base.numpy(), 5)
    assert np.array_equal(q0.codebook, cb0.astype(np.float32)) and np.array_equal(q0.indices, i0)
    assert np.array_equal(dict(model.named_parameters())["fc1.weight"].detach().numpy(), q8.values())
    assert stored(q8.codebook, q8.indices, base.shape).nbytes < stored(q0.codebook, q0.indices, base.shape).nbytes


@pytest.mark.parametrize("case", range(6))
def test_compiled_assignment_equals_the_numpy_one_bit_for_bit(case, monkeypatch):
    """The assignment step runs compiled (converters/fit_kernels.ecvq_assign); the numpy cost matrix it
    replaced is kept as the reference: the same codebook and indices, over dense and pruned layers,
    importance weights, ties (few distinct values) and the pruning choice."""
    from converters import ecvq as ecvq_module

    rng = np.random.default_rng(200 + case)
    w = (rng.standard_normal(int(rng.integers(500, 40000))) * np.exp(rng.normal(0, 1))).astype(np.float32)
    if case in (1, 4):
        w[rng.random(w.size) < 0.6] = 0  # pruned: positions cost, the zero is a choice
    if case == 2:
        w = np.round(w, 1)  # few distinct values: tied costs
    imp = np.abs(rng.standard_normal(w.size)) if case in (3, 4) else None
    bits, strength = (5, 3, 8, 4, 6, 2)[case], (0.5, 2.0, 0.1, 1.0, 0.3, 8.0)[case]
    got = ecvq(w, bits, strength, importance=imp, prune=case != 4)
    monkeypatch.setattr(ecvq_module, "ASSIGN", "numpy")
    want = ecvq(w, bits, strength, importance=imp, prune=case != 4)
    assert got[0].tobytes() == want[0].tobytes() and np.array_equal(got[1], want[1])

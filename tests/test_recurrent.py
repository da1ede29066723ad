"""Recurrent layers' calibration inputs (converters/recurrent.py) and their weights under the budget."""

import json

import numpy as np
import onnx
import pytest

from converters import hessian, recurrent
from converters.roles import graph_roles
from dcformat import inputs as inp
from dcformat.graph import strip_weights
from models import lstm_model, lstm_reference
from test_convert import ok

HID, IN, SEQ = 4, 3, 5


def _weights(rng, dirs=1, hidden=HID, size=IN, scale=0.5):
    w = (rng.standard_normal((dirs, 4 * hidden, size)) * scale).astype(np.float32)
    r = (rng.standard_normal((dirs, 4 * hidden, hidden)) * scale).astype(np.float32)
    b = (rng.standard_normal((dirs, 8 * hidden)) * 0.1).astype(np.float32)
    return w, r, b


def _calib(rng, n, dirs=1, hidden=HID, size=IN, seq=SEQ, cond=None):
    c = {"x": rng.standard_normal((n, seq, 1, size)).astype(np.float32),
         "h0": rng.standard_normal((n, dirs, 1, hidden)).astype(np.float32),
         "c0": rng.standard_normal((n, dirs, 1, hidden)).astype(np.float32)}
    if cond is not None:
        c["cond"] = np.full(n, cond)
    return c


@pytest.fixture
def weighted_h(monkeypatch):
    """One sensitivity-weighted H per LSTM row (recurrent.SENSITIVITY, off by default)."""
    monkeypatch.setattr(recurrent, "SENSITIVITY", True)


@pytest.fixture
def plain_h(monkeypatch):
    """One H per direction (the second moments themselves), not the sensitivity-weighted H per row."""
    monkeypatch.setattr(recurrent, "SENSITIVITY", False)


def _captured(model, calib):
    graph, arrays = strip_weights(model)
    found, uses = recurrent.layers(graph, arrays, list(arrays))
    recurrent.collect(graph, arrays, calib, inp.declared_inputs(graph), found, uses)
    return found


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_h_of_r_is_the_second_moment_of_the_hidden_states_one_step_back(direction, plain_h):
    """H_W = sum of x x^T over every step; H_R = sum of h_{t-1} h_{t-1}^T with h_{-1} = initial_h (a
    reverse direction steps back from the end), per direction: against a numpy LSTM."""
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    w, r, b = _weights(rng, dirs)
    calib = _calib(rng, 3, dirs)
    found = _captured(lstm_model(w, r, b, direction), calib)
    assert set(found) == {"W", "R"} and found["W"].op == found["R"].op == "RNN" and found["R"].group == dirs
    for d in range(dirs):
        back = direction == "reverse" or d == 1
        hw, hr = np.zeros((IN, IN)), np.zeros((HID, HID))
        for k in range(3):
            x, h0, c0 = calib["x"][k], calib["h0"][k][d], calib["c0"][k][d]
            y = lstm_reference(x, w[d], r[d], b[d], h0, c0, reverse=back)[:, 0]  # seq x hidden
            prev = np.concatenate([y[1:], h0]) if back else np.concatenate([h0, y[:-1]])
            hw += x[:, 0].T.astype(np.float64) @ x[:, 0]
            hr += prev.T @ prev
        np.testing.assert_allclose(found["W"].h[d], hw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(found["R"].h[d], hr, rtol=1e-4, atol=1e-5)
    assert found["R"].rows_seen == 3 * SEQ


def test_capture_inside_an_if_branch_through_gate_reordering(plain_h):
    """silero-vad's layout: 2-D weights in PyTorch's gate order, sliced and concatenated into ONNX's
    inside an If branch (the other branch uses them too): the rows are the 2-D tensor's axis 0 and
    H comes from the branch that ran."""
    rng = np.random.default_rng(1)
    w, r, b = _weights(rng)
    model = lstm_model(w, r, b, in_if=True, pieces=True)
    calib = _calib(rng, 2, cond=True)
    found = _captured(model, calib)
    assert set(found) == {"W2", "R2"} and found["W2"].group == 1
    x, h0, c0 = calib["x"], calib["h0"][:, 0, 0], calib["c0"][:, 0, 0]
    hw = sum(x[k, :, 0].T.astype(np.float64) @ x[k, :, 0] for k in range(2))
    hr = np.zeros((HID, HID))
    for k in range(2):
        y = lstm_reference(x[k], w[0], r[0], b[0], h0[k][None], c0[k][None])[:, 0]
        prev = np.concatenate([h0[k][None], y[:-1]])
        hr += prev.T @ prev
    np.testing.assert_allclose(found["W2"].h[0], hw, rtol=1e-5)
    np.testing.assert_allclose(found["R2"].h[0], hr, rtol=1e-4, atol=1e-5)
    # roles: fc, output channels along axis 0 of the 2-D tensor (rows), as for the 3-D one's axis 1
    graph, arrays = strip_weights(model)
    roles, axes = graph_roles(graph, arrays)
    assert (roles["W2"], axes["W2"], roles["R2"], axes["R2"]) == ("fc", 0, "fc", 0)


def test_zero_hidden_states_give_r_no_h_and_a_transposed_weight_none_at_all(plain_h):
    """A calibration set whose states are zero and sequences one step long says nothing about R (no
    rows: no usable H); a weight the graph transposes before the LSTM is not followed."""
    rng = np.random.default_rng(2)
    w, r, b = _weights(rng)
    calib = _calib(rng, 4, seq=1)
    calib["h0"][:] = 0
    found = _captured(lstm_model(w, r, b), calib)
    assert found["R"].rows_seen == 0 and not found["R"].h[0].any()
    assert found["W"].rows_seen == 4
    m = lstm_model(w, r, b)
    g = m.graph
    t = next(i for i in g.initializer if i.name == "W")
    arr = onnx.numpy_helper.to_array(t).transpose(0, 2, 1).copy()
    t.CopyFrom(onnx.numpy_helper.from_array(arr, "Wt"))
    g.node.insert(0, onnx.helper.make_node("Transpose", ["Wt"], ["W"], perm=[0, 2, 1]))
    found = _captured(m, calib)
    assert "Wt" not in found and "R" in found


def _lstm_files(tmp_path, rng, n=24, hidden=16, size=16, seq=8):
    w, r, b = _weights(rng, 1, hidden, size, scale=0.3)
    head = (rng.standard_normal((hidden, 4)) * 0.5).astype(np.float32)
    model = lstm_model(w, r, b, in_if=True, pieces=True, head=head)
    onnx.save(model, tmp_path / "lstm.onnx")
    # inputs with correlated features (a few strong directions), as real activations have
    mix = rng.standard_normal((size, size)) * np.linspace(2.0, 0.05, size)[:, None]
    calib = _calib(rng, n, 1, hidden, size, seq, cond=True)
    calib["x"] = (calib["x"] @ mix).astype(np.float32)
    np.savez(tmp_path / "calib.npz", **calib)
    return model, calib


def test_lstm_weights_are_shared_within_the_budget_and_compensated(tmp_path):
    """A small LSTM in an If branch (weights reordered in the graph): under --max-error both W and R
    are shared with error compensation, and the output error measured here (ONNX Runtime, the
    decoded model against the original on the calibration inputs) is within the budget."""
    import onnxruntime as ort

    from dcformat import runtime

    rng = np.random.default_rng(3)
    model, calib = _lstm_files(tmp_path, rng)
    rep = tmp_path / "r.json"
    budget = 0.02
    ok(tmp_path / "lstm.onnx", "-o", tmp_path / "l.dcz", "-q", "--calibration", tmp_path / "calib.npz",
       "--max-error", str(budget), "--report", rep)
    rows = {x["name"]: x for x in json.loads(rep.read_text())["layers"]}
    for name in ("W2", "R2"):
        assert rows[name]["action"] == "pruned+shared" and rows[name]["compensated"] is True, rows[name]
        assert rows[name]["bytes"] < 0.5 * rows[name]["params"] * 4
    runtime.save_onnx(tmp_path / "l.dcz", tmp_path / "dec.onnx")
    a = ort.InferenceSession(str(tmp_path / "lstm.onnx"), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(tmp_path / "dec.onnx"), providers=["CPUExecutionProvider"])
    num = den = 0.0
    for k in range(calib["x"].shape[0]):
        feed = {"x": calib["x"][k], "h0": calib["h0"][k], "c0": calib["c0"][k], "cond": np.array(True)}
        ya, yq = a.run(["y"], feed)[0], q.run(["y"], feed)[0]
        num += float(((ya - yq) ** 2).sum())
        den += float((ya ** 2).sum())
    assert np.sqrt(num / den) <= budget


@pytest.mark.parametrize("per_row", [False, True])
def test_compensated_rnn_sharing_beats_plain_rounding_on_the_layer_output(per_row, monkeypatch):
    """For an LSTM's W, whose inputs have a few strong directions, the activation-aware, compensated
    sharing (H from the captured X) has a lower layer output error ||X (W - Q)^T|| than nearest
    rounding to a plain k-means codebook at 4 bits."""
    from converters.budget import local_error, reconstruct

    monkeypatch.setattr(recurrent, "SENSITIVITY", per_row)
    rng = np.random.default_rng(4)
    model, calib = _lstm_files_mem(rng)
    found = _captured(model, calib)
    graph, arrays = strip_weights(model)
    lay, w = found["W2"], arrays["W2"]
    comp = reconstruct(w, 0.0, 4, layer=lay)
    plain = reconstruct(w, 0.0, 4)
    assert local_error(w, comp, lay) < 0.8 * local_error(w, plain, lay)
    rows = 1 if per_row else w.shape[0]  # one H per gate row, or one for the direction
    assert lay.group == w.shape[0] // rows and hessian.to_rows(w, lay)[0].shape == (rows, w.shape[1])


def test_gate_sensitivities_are_the_cell_outputs_derivatives():
    """lstm_sensitivity's squared sensitivity of (h, c) to each gate's pre-activation equals the
    finite-difference derivative of a numpy LSTM step with respect to that gate's bias."""
    rng = np.random.default_rng(5)
    w, r, b = _weights(rng, scale=1.0)
    x = rng.standard_normal((1, 1, IN))
    h0, c0 = rng.standard_normal((1, HID)), rng.standard_normal((1, HID))
    s2 = recurrent.lstm_sensitivity(x, h0[None], c0, w[0].astype(np.float64), r[0].astype(np.float64),
                                    b[0].astype(np.float64), False)[0, 0]
    eps = 1e-6
    for row in range(4 * HID):
        bp, bm = b[0].astype(np.float64).copy(), b[0].astype(np.float64).copy()
        bp[row] += eps
        bm[row] -= eps
        (hp, cp), (hm, cm) = (lstm_reference(x, w[0], r[0], bb, h0, c0, with_c=True) for bb in (bp, bm))
        unit = row % HID
        dh, dc = (hp[0, 0, unit] - hm[0, 0, unit]) / (2 * eps), (cp[0, unit] - cm[0, unit]) / (2 * eps)
        assert s2[row] == pytest.approx(dh * dh + dc * dc, rel=1e-5, abs=1e-12), row


def test_per_row_h_follows_the_graph_reordering(weighted_h):
    """With the weights reordered in the graph (PyTorch's gate order in the record), each record row's
    H is its op row's: the sensitivity-weighted second moment of X, plus the floor."""
    rng = np.random.default_rng(6)
    w, r, b = _weights(rng)
    calib = _calib(rng, 3, cond=True)
    found = _captured(lstm_model(w, r, b, in_if=True, pieces=True), calib)
    lay = found["W2"]
    assert lay.group == 4 * HID
    hs = np.zeros((4 * HID, IN, IN))
    plain = np.zeros((IN, IN))
    for k in range(3):
        x, h0, c0 = (calib[v][k].astype(np.float64) for v in ("x", "h0", "c0"))
        y = lstm_reference(x, w[0], r[0], b[0], h0[0], c0[0])
        prev = np.concatenate([h0, y[:-1]])
        s2 = recurrent.lstm_sensitivity(x, prev, c0[0], w[0].astype(np.float64), r[0].astype(np.float64),
                                        b[0].astype(np.float64), False)
        hs += np.einsum("tbr,tbi,tbj->rij", s2, x, x)
        plain += np.einsum("tbi,tbj->ij", x, x)
    hs += recurrent.SENSITIVITY_FLOOR * (np.einsum("rii->", hs) / hs.shape[0]) / np.trace(plain) * plain
    perm = np.concatenate([np.arange(k * HID, (k + 1) * HID) for k in (0, 2, 3, 1)])  # record row -> op row
    for row in range(4 * HID):
        np.testing.assert_allclose(lay.h[row], hs[perm[row]], rtol=1e-4, atol=1e-8)


def _lstm_files_mem(rng, n=24, hidden=16, size=16, seq=8):
    w, r, b = _weights(rng, 1, hidden, size, scale=0.3)
    model = lstm_model(w, r, b, in_if=True, pieces=True)
    mix = rng.standard_normal((size, size)) * np.linspace(2.0, 0.05, size)[:, None]
    calib = _calib(rng, n, 1, hidden, size, seq, cond=True)
    calib["x"] = (calib["x"] @ mix).astype(np.float32)
    return model, calib

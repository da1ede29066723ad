"""tools/perlayer.py (the per-layer allocation of tools/bench_ecvq.py): the greedy path is the Lagrangian one, and the
dcconvert patterns it writes give every tensor the setting chosen for it."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import perlayer  # noqa: E402


def test_greedy_path_holds_every_lagrangian_optimum():
    rng = np.random.default_rng(3)
    opts = {}
    for t in range(3):
        o = {}
        for k in range(7):
            o[("w", k, 0.0)] = {"bytes": int(rng.integers(100, 2000)), "d": float(rng.random())}
        opts[f"t{t}"] = o
    path = perlayer.greedy_path(opts, "d")
    totals = {(sum(opts[n][k]["bytes"] for n, k in a.items()), round(sum(opts[n][k]["d"] for n, k in a.items()), 12))
              for a in path}
    names = sorted(opts)
    combos = list(itertools.product(*(list(opts[n]) for n in names)))
    for lam in np.geomspace(1e-6, 1.0, 200):
        best = min(combos, key=lambda c: (sum(opts[n][k]["d"] + lam * opts[n][k]["bytes"] for n, k in zip(names, c))))
        r = sum(opts[n][k]["bytes"] for n, k in zip(names, best))
        d = round(sum(opts[n][k]["d"] for n, k in zip(names, best)), 12)
        assert (r, d) in totals, (lam, r, d)
    # along the path the bytes only fall and the distortion only rises
    seq = [(sum(opts[n][k]["bytes"] for n, k in a.items()), sum(opts[n][k]["d"] for n, k in a.items())) for a in path]
    assert all(b1 > b2 and d1 <= d2 for (b1, d1), (b2, d2) in zip(seq, seq[1:]))


def _mlp(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 12)).astype(np.float32)
    w1[np.abs(w1) < 0.7] = 0
    w2 = rng.normal(size=(5, 16)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (("fc1.weight", w1), ("fc1.bias", rng.normal(size=16).astype(np.float32)),
                                                         ("fc2.weight", w2), ("fc2.bias", rng.normal(size=5).astype(np.float32)))]
    nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("alloc", [
    {"fc1.weight": ("w", 3, 2.0), "fc1.bias": "exact", "fc2.weight": ("w", 5, 0.0), "fc2.bias": ("b", 4, 1.0)},
    {"fc1.weight": ("w", 4, 0.0), "fc1.bias": ("b", 3, 0.0), "fc2.weight": ("w", 4, 0.0), "fc2.bias": ("b", 6, 0.0)},
    {"fc1.weight": ("w", 2, 1.0), "fc1.bias": "exact", "fc2.weight": ("w", 6, 4.0), "fc2.bias": "exact"},
])
def test_settings_text_gives_each_tensor_its_setting(tmp_path, alloc):
    from converters import cli
    from converters import compress as cmp
    from converters import settings as st
    from converters.ecvq import parse_strength
    from converters.roles import parse_overrides

    src = _mlp(str(tmp_path / "mlp.onnx"))
    txt = perlayer.settings_text(alloc)
    s = cmp.Settings(sparsity=st.LayerSetting.parse("--sparsity", "0", st.fraction),
                     bits=st.LayerSetting.parse("--bits", txt["bits"], st.bits),
                     ecvq=st.LayerSetting.parse("--ecvq", txt["ecvq"], parse_strength), min_size=0, compensate=False,
                     roles=parse_overrides(txt["role"]))
    rep = cli.convert(src, str(tmp_path / "out.dcz"), s, manual=True)
    rows = {r["name"]: r for r in rep["layers"]}
    for name, k in alloc.items():
        r = rows[name]
        if k == perlayer.EXACT:
            assert r["bits"] is None and r["encoding"] == "raw", (txt, r)
        else:
            assert r["bits"] == k[1], (txt, r)
            assert float((r.get("ecvq") or {}).get("strength", 0.0)) == k[2], (txt, r)


def test_knapsack_is_the_best_allocation_within_each_budget():
    rng = np.random.default_rng(5)
    opts = {f"t{t}": {("w", k, 0.0): {"bytes": int(rng.integers(50, 900)), "d": float(rng.random())} for k in range(6)}
            for t in range(3)}
    names = sorted(opts)
    combos = list(itertools.product(*(list(opts[n]) for n in names)))
    budgets = [400, 700, 1000, 1500, 2000, 2600]
    for b, alloc in zip(budgets, perlayer.knapsack(opts, "d", budgets, unit=1)):
        within = [c for c in combos if sum(opts[n][k]["bytes"] for n, k in zip(names, c)) <= b]
        if not within:
            assert alloc is None
            continue
        best = min(sum(opts[n][k]["d"] for n, k in zip(names, c)) for c in within)
        assert sum(opts[n][k]["bytes"] for n, k in alloc.items()) <= b
        assert sum(opts[n][k]["d"] for n, k in alloc.items()) == pytest.approx(best)

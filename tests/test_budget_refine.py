"""converters.budget._refine: the greedy pass that spends what the measured error leaves of the limit
after the re-plans, on plans whose per-layer error model is optimistic (the measured error a multiple
of the predicted one, more for some layers than for others), and in the search of a small model."""

from __future__ import annotations

import json
import math

import numpy as np

from converters import budget
from converters.cli import main as convert_main
from clitools import cli as _cli

from test_budget_local import _mlp


def _options(rng, layers=8):
    """Per layer: raw, then ever cheaper options with ever larger predicted errors (the scan's shape)."""
    opts = {}
    for i in range(layers):
        n = int(rng.integers(2_000, 20_000))
        e8 = float(rng.uniform(0.002, 0.01))
        row = [{"sparsity": None, "bits": None, "scale_axis": None, "err2": 0.0, "bytes": 4.0 * n}]
        for k, b in enumerate((8, 6, 5, 4, 3)):
            e = e8 * 2.0 ** (1.5 * k)
            row.append({"sparsity": 0.0, "bits": b, "scale_axis": None, "err2": e * e, "bytes": n * (b + 0.3) / 8})
        opts[f"l{i}"] = row
    return opts


def _measured(factors):
    """A model error the additive prediction underestimates: each layer's error times its factor."""
    def error(plan):
        return math.sqrt(sum((factors[n] ** 2) * c["err2"] for n, c in plan.items()))
    return error


def _run(options, factors, target, limit):
    plan = budget.choose(options, target)
    error = _measured(factors)
    res = budget.Search(budget=limit)
    calls = []

    def measure():
        calls.append(dict(plan))
        return error(plan)

    start = (dict(plan), error(plan))
    err = budget._refine(res, plan, options, lambda name: None, measure, start[1], limit)
    return start, plan, err, res, calls


def test_refine_spends_the_measured_headroom_and_never_returns_a_plan_over_the_limit():
    rng = np.random.default_rng(0)
    options = _options(rng)
    factors = {n: (4.0 if i % 3 == 0 else 1.5) for i, n in enumerate(sorted(options))}  # optimistic, unevenly
    limit = 0.03
    # the plan the re-plans would stop at: measured well within the limit, at a tight predicted target
    (before, err0), plan, err, res, calls = _run(options, factors, 0.004, limit)
    assert err0 < budget.REFINE_UNTIL * limit
    assert err <= limit and err == _measured(factors)(plan)  # what it returns is the kept plan's measurement
    assert budget._plan_bytes(plan) < budget._plan_bytes(before)  # smaller than the plan it started from
    assert err > err0  # the saving is paid with measured error, not predicted
    assert len(calls) <= budget.REFINE_TRIALS and len(res.refinements) == len(calls)
    kept = [r for r in res.refinements if r["kept"]]
    assert kept and all(r["error"] <= limit for r in kept) and all(r["bytes_saved"] > 0 for r in kept)
    assert any(not r["kept"] for r in res.refinements) or err >= budget.REFINE_UNTIL * limit
    # deterministic: the same inputs give the same plan and the same trials
    _, plan2, err2, res2, _ = _run(options, factors, 0.004, limit)
    assert plan2 == plan and err2 == err and res2.refinements == res.refinements


def test_refine_keeps_a_plan_it_cannot_improve_and_one_already_over_the_limit():
    rng = np.random.default_rng(1)
    options = _options(rng, layers=4)
    factors = dict.fromkeys(options, 50.0)  # every move is far over the limit
    (before, err0), plan, err, res, calls = _run(options, factors, 0.0005, 0.03)
    assert err0 <= 0.03
    assert plan == before and err == err0  # every batch was undone
    assert res.refinements and not any(r["kept"] for r in res.refinements)
    assert len(calls) <= budget.REFINE_TRIALS
    (before, err0), plan, err, res, calls = _run(options, factors, 0.01, 0.03)
    assert err0 > 0.03 and plan == before and err == err0 and not calls  # the back-off's business, not refine's


def test_search_on_a_small_model_ends_within_its_limit(tmp_path, capsys):
    """The whole search of a small MLP: the verified error stays within VERIFY_SHARE x the budget, every
    refinement it kept was measured within it, and the held-out error within HELD_SHARE x the budget."""
    _mlp(tmp_path / "m.onnx", dims=(32, 128, 128, 10))
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((256, 32)).astype(np.float32))
    code, stdout, err = _cli(convert_main, [tmp_path / "m.onnx", "-o", tmp_path / "m.dcz", "--json", "--calibration",
                                            tmp_path / "c.npz", "--max-error", "0.05", "--min-size", "0"], capsys)
    assert code == 0, err
    srch = json.loads(stdout)["search"]
    limit = budget.VERIFY_SHARE * 0.05
    assert srch["verified_error"] <= limit
    assert all(r["error"] <= limit for r in srch["refinements"] if r["kept"])
    assert srch["held_out_error"] is not None and srch["held_out_error"] <= budget.HELD_SHARE * 0.05


def test_refine_moves_raw_layers_to_rounding_in_its_first_batch():
    """The search gives the refinement the float-rounding rungs too (the plan's options leave them out): a
    raw layer whose rounding saves half its bytes for next to no error is in the first batch, before the
    codebook moves that save fewer bytes per unit of error use up the limit (PP-OCRv4 rec: the codebook
    moves took the measured error to 0.9996 x the limit, and the rounding of two 230,400-weight layers
    left raw, predicted at 0.00016, then measured just over it: 1.56 MB kept raw)."""
    rng = np.random.default_rng(4)
    options = _options(rng, layers=6)
    for name in ("l0", "l3"):  # raw in the plan (8-bit sharing alone nearly fills the limit), with a rounding
        raw = options[name][0]  # rung of 1e-4 predicted error
        for c in options[name][1:]:
            c["err2"] = max(c["err2"], 0.025 ** 2) * 4
        options[name].append({"sparsity": None, "bits": None, "scale_axis": None, "mantissa": 10,
                              "err2": 1e-8, "bytes": raw["bytes"] * 0.5})
    limit = 0.03
    plan = budget.choose({n: [o for o in v if o.get("mantissa") is None] for n, v in options.items()}, 0.004)
    assert budget._is_raw(plan["l0"]) and budget._is_raw(plan["l3"])
    res = budget.Search(budget=limit)

    def measure():
        return math.sqrt(sum(c["err2"] for c in plan.values()))

    err = budget._refine(res, plan, options, lambda n: None, measure, measure(), limit)
    assert err <= limit
    first = res.refinements[0]
    assert first["kept"] and {"l0", "l3"} <= set(first["layers"])
    assert plan["l0"]["mantissa"] == 10 and plan["l3"]["mantissa"] == 10

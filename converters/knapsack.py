"""The planner both budget searches share: per layer one option, fewest bytes within a budget.

A multiple-choice knapsack: each layer has options ``{"bytes": ..., <cost>: ...}`` and the plan
minimises the total bytes with the summed cost within the budget. Solved by a Lagrangian
search (bisection on the price of a unit of cost) and a greedy pass that spends what is left
of the budget on the options saving the most bytes per unit of cost. Used by the training
pipeline (cost: accuracy points, converters/pipeline/plan.py) and by dcconvert's error budget
(cost: squared output error, converters/budget.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def plan(options: dict[str, list[dict]], cost: str, budget: float, *, tiebreak: Callable[[dict], tuple] = lambda c: (),
         price_limit: float = 1e30, iterations: int = 80, slack: float = 0.0, min_cost: float = 1e-30) -> dict:
    """{layer: chosen option} with sum(option[cost]) <= budget (when any plan can be), fewest bytes.

    ``tiebreak(option)``: what decides between options of equal priced bytes; ``price_limit``:
    the largest price tried; ``slack``: cost the greedy pass may exceed the budget by (rounding);
    ``min_cost``: floor of an option's extra cost when scoring bytes saved per unit of cost.
    """

    def pick(lam):
        return {n: min(o, key=lambda c: (c["bytes"] + lam * c[cost], c[cost], *tiebreak(c))) for n, o in options.items()}

    def total(p):
        return sum(c[cost] for c in p.values())

    lo, hi = 0.0, 1.0
    while total(pick(hi)) > budget and hi < price_limit:
        lo, hi = hi, hi * 10
    for _ in range(iterations):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2
        if total(pick(mid)) <= budget:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    chosen = pick(hi)
    while True:  # spend what is left on the most bytes saved per unit of cost
        spare = budget - total(chosen)
        best, gain = None, 0.0
        for n, opts in options.items():
            cur = chosen[n]
            for c in opts:
                saved = cur["bytes"] - c["bytes"]
                extra = c[cost] - cur[cost]
                if saved > 0 and extra <= spare + slack:
                    score = saved / max(extra, min_cost)
                    if score > gain:
                        best, gain = (n, c), score
        if best is None:
            break
        chosen[best[0]] = best[1]
    return chosen

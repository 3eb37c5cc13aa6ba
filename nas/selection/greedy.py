"""A greedy per-subblock baseline for the MIP (pure): cheapest quality loss per unit of cost saved.

Start from the all-parent choice. While some budget is exceeded, consider every single change of
one subblock to another option of its layer that does not break a budget already met; its
usefulness is the part of each exceeded budget's excess it removes, ``sum_m min(saved_m,
excess_m) / excess_m`` (a cost increase counts negative), and its price is the change in score.
Apply the change with the smallest price per usefulness (ties: the more useful), and repeat.
This is the "best score per unit of latency saved" rule that Puzzle compares its MIP against.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from nas.selection.costs import KINDS, Budget, Infeasible, SelectionProblem, Solution
from nas.selection.errors import SelectionError
from nas.selection.mip import _fits, as_budgets

STRATEGY = "greedy"


def solve_greedy(
    problem: SelectionProblem,
    budgets: Sequence[Budget] | Mapping[str, float],
    *,
    batch: int = 1,
) -> tuple[Solution, ...] | Infeasible:
    """One greedy choice within the budgets (status ``heuristic``), or ``Infeasible`` when a budget
    is below its smallest achievable value. Raises ``SelectionError`` if the greedy walk gets stuck
    under several interacting budgets that the MIP might still meet."""
    budgets = as_budgets(budgets)
    for budget in budgets:
        smallest = problem.min_cost(budget.metric)
        if not _fits(smallest, budget.value):
            return Infeasible(budget.metric, budget.value, smallest, False, budget, batch)
    t0 = time.perf_counter()
    current = [list(pair) for pair in problem.parent_indices()]
    totals = {b.metric: problem.cost(_freeze(current), b.metric) for b in budgets}
    limit = {b.metric: b.value for b in budgets}
    max_steps = 4 * sum(len(layer.attention) + len(layer.ffn) for layer in problem.layers)
    for _ in range(max_steps):
        excess = {m: totals[m] - limit[m] for m in limit if not _fits(totals[m], limit[m])}
        if not excess:
            break
        best = None  # (price per usefulness, -usefulness, layer, kind index, option index)
        for i, layer in enumerate(problem.layers):
            for k, kind in enumerate(KINDS):
                options = layer.options(kind)
                now = options[current[i][k]]
                for j, option in enumerate(options):
                    if j == current[i][k]:
                        continue
                    saved = {m: now.costs[m] - option.costs[m] for m in limit}
                    if any(
                        m not in excess and not _fits(totals[m] - saved[m], limit[m]) for m in limit
                    ):
                        continue
                    useful = sum(min(saved[m], excess[m]) / excess[m] for m in excess)
                    if useful <= 0:
                        continue
                    key = ((option.score - now.score) / useful, -useful, i, k, j)
                    if best is None or key < best:
                        best = key
        if best is None:
            raise SelectionError(
                "greedy selection got stuck between budgets "
                f"{', '.join(b.label for b in budgets)}; use the puzzle-mip strategy"
            )
        _, _, i, k, j = best
        old = problem.layers[i].options(KINDS[k])[current[i][k]]
        new = problem.layers[i].options(KINDS[k])[j]
        for m in totals:
            totals[m] += new.costs[m] - old.costs[m]
        current[i][k] = j
    else:
        raise SelectionError(
            f"greedy selection did not meet {', '.join(b.label for b in budgets)} in {max_steps} "
            "steps; use the puzzle-mip strategy"
        )
    return (
        Solution.of(problem, _freeze(current), "heuristic", STRATEGY, time.perf_counter() - t0),
    )


def _freeze(current: list[list[int]]) -> tuple[tuple[int, int], ...]:
    return tuple((a, f) for a, f in current)

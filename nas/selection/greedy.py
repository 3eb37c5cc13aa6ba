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

from nas.selection.costs import Budget, Infeasible, SelectionProblem, Solution
from nas.selection.errors import SelectionError
from nas.selection.mip import _fits, as_budgets

STRATEGY = "greedy"


def solve_greedy(
    problem: SelectionProblem,
    budgets: Sequence[Budget] | Mapping[str, float],
    *,
    batch: int = 1,
) -> tuple[Solution, ...] | Infeasible:
    """One greedy choice within the max bounds (status ``heuristic``), or ``Infeasible`` when a
    bound is below its smallest achievable value. A move changes one subblock of an additive
    layer, or the block of a joint layer. Raises ``SelectionError`` for min bounds (use the MIP)
    or if the greedy walk gets stuck under several interacting bounds that the MIP might meet."""
    budgets = as_budgets(budgets)
    if any(b.bound != "max" for b in budgets):
        raise SelectionError("the greedy baseline takes max bounds only; use puzzle-mip")
    for budget in budgets:
        smallest = problem.min_cost(budget.metric)
        if not _fits(smallest, budget.value):
            return Infeasible(budget.metric, budget.value, smallest, False, budget, batch)
    t0 = time.perf_counter()
    current = list(problem.parent_indices())
    totals = {b.metric: problem.cost(tuple(current), b.metric) for b in budgets}
    limit = {b.metric: b.value for b in budgets}
    moves = [_moves(layer) for layer in problem.layers]
    max_steps = 4 * sum(len(layer.attention) + len(layer.ffn) for layer in problem.layers)
    for _ in range(max_steps):
        excess = {m: totals[m] - limit[m] for m in limit if not _fits(totals[m], limit[m])}
        if not excess:
            break
        best = None  # (price per usefulness, -usefulness, layer, new pair)
        for i, layer in enumerate(problem.layers):
            now = current[i]
            for pair in moves[i].get(now, ()):
                saved = {m: layer.pair_cost(*now, m) - layer.pair_cost(*pair, m) for m in limit}
                if any(
                    m not in excess and not _fits(totals[m] - saved[m], limit[m]) for m in limit
                ):
                    continue
                useful = sum(min(saved[m], excess[m]) / excess[m] for m in excess)
                if useful <= 0:
                    continue
                price = layer.pair_score(*pair) - layer.pair_score(*now)
                key = (price / useful, -useful, i, pair)
                if best is None or key < best:
                    best = key
        if best is None:
            raise SelectionError(
                "greedy selection got stuck between budgets "
                f"{', '.join(b.label for b in budgets)}; use the puzzle-mip strategy"
            )
        _, _, i, pair = best
        layer = problem.layers[i]
        for m in totals:
            totals[m] += layer.pair_cost(*pair, m) - layer.pair_cost(*current[i], m)
        current[i] = pair
    else:
        raise SelectionError(
            f"greedy selection did not meet {', '.join(b.label for b in budgets)} in {max_steps} "
            "steps; use the puzzle-mip strategy"
        )
    return (Solution.of(problem, tuple(current), "heuristic", STRATEGY, time.perf_counter() - t0),)


def _moves(layer) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Per allowed pair, the pairs one move away: any other block of a joint layer; in an
    additive layer, the pairs that change exactly one subblock."""
    pairs = layer.pairs()
    if layer.is_joint:
        return {p: [q for q in pairs if q != p] for p in pairs}
    return {p: [q for q in pairs if (q[0] == p[0]) != (q[1] == p[1])] for p in pairs}

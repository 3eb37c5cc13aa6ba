"""Puzzle's mixed-integer selection with PuLP (CBC): pure, no torch, no ray.

Formulation for one request (a set of budgets, one per cost metric):

    binary x[l, a] (attention option a in layer l), y[l, f] (FFN option f in layer l)
    sum_a x[l, a] == 1,  sum_f y[l, f] == 1                         for every layer l
    minimise   sum_{l,a} score[l,a] x[l,a] + sum_{l,f} score[l,f] y[l,f]
    subject to fixed[m] + sum cost_m x + sum cost_m y <= budget[m]   for every budget m

Budget rows are divided by their largest coefficient so that parameter counts (1e8) and
milliseconds (1e-2) give the solver rows of the same scale. Diverse solutions: after each solution
(a*_l, f*_l), continuous ``same[l] >= x[l, a*_l] + y[l, f*_l] - 1`` (1 exactly when layer l
repeats the earlier choice) and ``sum_l same[l] <= L - k`` force at least ``k`` layers to differ
from every earlier solution.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

import pulp

from nas.selection.costs import KINDS, Budget, Infeasible, SelectionProblem, Solution
from nas.selection.errors import SelectionError, SolveTimeout

STRATEGY = "puzzle-mip"
# a solution may exceed a budget by this relative amount (the solver's feasibility tolerance)
BUDGET_RTOL = 1e-6


def as_budgets(budgets: Sequence[Budget] | Mapping[str, float]) -> tuple[Budget, ...]:
    """Accept ``{metric: value}`` or ``Budget`` objects; one budget per metric."""
    if isinstance(budgets, Mapping):
        out = tuple(Budget(m, float(v), m, float(v)) for m, v in budgets.items())
    else:
        out = tuple(budgets)
    metrics = [b.metric for b in out]
    if len(set(metrics)) != len(metrics):
        raise SelectionError(f"one budget per metric, got {metrics}")
    return out


def _fits(value: float, budget: float) -> bool:
    return value <= budget + BUDGET_RTOL * max(1.0, abs(budget))


class _Model:
    """The PuLP model of one problem under some budgets, extendable with diversity cuts.

    Layers whose options of one kind have identical costs on the constrained metrics form a
    class (in a homogeneous model: all layers). For a class of several layers, integer counts
    ``n[c, o]`` (layers of the class taking option ``o``) carry the budget rows and the choice
    variables are continuous: once the counts are integral, what is left is a transportation
    problem (totally unimodular), so its optimal vertex is integral. Branching on counts instead of
    on interchangeable binaries removes the symmetry that makes CBC slow to prove optimality.
    Diversity cuts need binary choices, so ``forbid_near`` makes them binary.
    """

    def __init__(
        self,
        problem: SelectionProblem,
        budgets: Sequence[Budget],
        objective: str | None,
        aggregate: bool = True,
    ):
        self.problem = problem
        self.lp = pulp.LpProblem("selection", pulp.LpMinimize)
        self.cuts = 0
        self.binary = not aggregate
        metrics = [b.metric for b in budgets] + ([objective] if objective else [])
        # per kind, per layer, per option: the choice variable
        self.choice: dict[str, list[list[pulp.LpVariable]]] = {}
        rows: dict[str, list] = {m: [] for m in metrics}  # metric -> [(variable, cost)]
        for kind in KINDS:
            classes: dict[tuple, list[int]] = {}
            for i, layer in enumerate(problem.layers):
                key = tuple(tuple(o.costs[m] for m in metrics) for o in layer.options(kind))
                classes.setdefault(key if aggregate else (i,), []).append(i)
            self.choice[kind] = [[] for _ in problem.layers]
            for c, members in enumerate(classes.values()):
                options = problem.layers[members[0]].options(kind)
                shared = len(members) > 1
                for i in members:
                    self.choice[kind][i] = [
                        self._variable(
                            f"{kind[0]}_{i}_{o}",
                            0,
                            1,
                            pulp.LpContinuous if shared else pulp.LpBinary,
                        )
                        for o in range(len(options))
                    ]
                    self.lp += pulp.lpSum(self.choice[kind][i]) == 1, f"one_{kind}_{i}"
                for o, option in enumerate(options):
                    if shared:
                        count = self._variable(f"n_{kind}_{c}_{o}", 0, len(members), pulp.LpInteger)
                        self.lp += (
                            pulp.lpSum(self.choice[kind][i][o] for i in members) == count,
                            f"count_{kind}_{c}_{o}",
                        )
                        terms = [(count, 1.0)]
                    else:
                        terms = [(self.choice[kind][members[0]][o], 1.0)]
                    for m in metrics:
                        rows[m] += [(v, w * option.costs[m]) for v, w in terms]
        if objective is None:  # minimise the summed scores
            self.lp += pulp.LpAffineExpression(
                [
                    (self.choice[kind][i][o], option.score)
                    for i, layer in enumerate(problem.layers)
                    for kind in KINDS
                    for o, option in enumerate(layer.options(kind))
                ]
            )
        else:  # minimise one cost (to find the smallest achievable under the other budgets)
            self.lp += pulp.LpAffineExpression(rows[objective])
        for budget in budgets:
            metric = budget.metric
            scale = max((abs(c) for _, c in rows[metric]), default=1.0) or 1.0
            self.lp += (
                pulp.LpAffineExpression([(v, c / scale) for v, c in rows[metric]])
                <= (budget.value - problem.fixed(metric)) / scale,
                f"budget_{metric}",
            )

    def _variable(self, name: str, low=None, up=None, cat=pulp.LpContinuous) -> pulp.LpVariable:
        if hasattr(self.lp, "add_variable"):  # PuLP >= 3.3
            return self.lp.add_variable(name, low, up, cat=cat)
        return pulp.LpVariable(name, low, up, cat=cat)

    def make_binary(self) -> None:
        self.binary = True
        for kind in KINDS:
            for variables in self.choice[kind]:
                for v in variables:  # bounds are already [0, 1]; PuLP spells binary "Integer"
                    v.cat = pulp.LpInteger

    def forbid_near(self, indices, diversity_layers: int) -> None:
        """Require at least ``diversity_layers`` layers to differ from ``indices``."""
        self.make_binary()
        k = self.cuts
        same = [self._variable(f"same_{k}_{i}", 0, 1) for i in range(self.problem.num_layers)]
        for i, (a, f) in enumerate(indices):
            attention, ffn = self.choice["attention"][i][a], self.choice["ffn"][i][f]
            self.lp += same[i] >= attention + ffn - 1, f"same_{k}_{i}"
        self.lp += (
            pulp.lpSum(same) <= self.problem.num_layers - diversity_layers,
            f"differ_{k}",
        )
        self.cuts += 1

    def solve(
        self, time_limit_s: float, threads: int | None, mip_gap: float | None = None
    ) -> tuple[str, tuple | None, float]:
        """Returns (status, indices or None, seconds); status: optimal, time_limit, infeasible,
        no_solution."""
        with warnings.catch_warnings():  # PuLP 3.3 deprecates the bundled-CBC class name
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(
                msg=False, timeLimit=time_limit_s, threads=threads, gapRel=mip_gap
            )
        t0 = time.perf_counter()
        self.lp.solve(solver)
        seconds = time.perf_counter() - t0
        if self.lp.status == pulp.LpStatusInfeasible:
            return "infeasible", None, seconds
        if self.lp.sol_status == pulp.LpSolutionOptimal:
            status = "optimal"
        elif self.lp.sol_status == pulp.LpSolutionIntegerFeasible:
            status = "time_limit"
        elif self.lp.status == pulp.LpStatusNotSolved:
            return "no_solution", None, seconds
        else:
            raise SelectionError(
                f"the MIP solver ended with status {pulp.LpStatus[self.lp.status]}"
            )
        values = {
            kind: [[v.value() or 0.0 for v in layer] for layer in self.choice[kind]]
            for kind in KINDS
        }
        if any(
            1e-6 < value < 1 - 1e-6 for kind in KINDS for layer in values[kind] for value in layer
        ):  # not a vertex (e.g. a heuristic's point): solve again with binary choices
            if self.binary:
                raise SelectionError("the MIP solver returned a fractional choice")
            self.make_binary()
            status, indices, more = self.solve(time_limit_s, threads, mip_gap)
            return status, indices, seconds + more
        indices = tuple(
            (
                max(range(len(a)), key=a.__getitem__),
                max(range(len(f)), key=f.__getitem__),
            )
            for a, f in zip(values["attention"], values["ffn"], strict=True)
        )
        return status, indices, seconds


def solve_mip(
    problem: SelectionProblem,
    budgets: Sequence[Budget] | Mapping[str, float],
    *,
    solutions: int = 1,
    diversity_layers: int = 1,
    time_limit_s: float = 10.0,
    threads: int | None = None,
    mip_gap: float | None = None,
    aggregate: bool = True,
    batch: int = 1,
) -> tuple[Solution, ...] | Infeasible:
    """Best-scoring choices within the budgets: up to ``solutions`` of them, each differing from
    every earlier one in at least ``diversity_layers`` layers, best first.

    Returns a non-empty tuple of ``Solution`` (status ``optimal`` or ``time_limit``: feasible but
    not proven optimal when CBC hit ``time_limit_s``), or ``Infeasible`` naming the first budget
    that cannot be met and the exact smallest achievable value (with the cheapest option in every
    layer, or, when each budget alone is feasible, under the other budgets). Fewer than
    ``solutions`` come back when no further diverse choice fits. ``batch`` only phrases throughput
    messages. ``mip_gap`` (relative) lets CBC stop once within that fraction of the optimum
    (default: CBC's own, i.e. proven optimal). ``aggregate=False`` turns off the count
    formulation for layers with identical costs (see ``_Model``; for comparison). Raises ``SolveTimeout`` if the limit passes before any feasible choice is found.
    """
    budgets = as_budgets(budgets)
    if solutions < 1 or diversity_layers < 1:
        raise SelectionError("solutions and diversity_layers must be >= 1")
    for budget in budgets:
        smallest = problem.min_cost(budget.metric)
        if not _fits(smallest, budget.value):
            return Infeasible(budget.metric, budget.value, smallest, False, budget, batch)
    model = _Model(problem, budgets, objective=None, aggregate=aggregate)
    found: list[Solution] = []
    while len(found) < solutions:
        status, indices, seconds = model.solve(time_limit_s, threads, mip_gap)
        if status == "infeasible" and not found:
            return _joint_infeasible(problem, budgets, time_limit_s, threads, batch)
        if status == "no_solution" and not found:
            raise SolveTimeout(
                f"the MIP found no feasible choice within {time_limit_s:g} s; raise "
                "strategy.time_limit_s or loosen the budget"
            )
        if indices is None:
            break
        solution = Solution.of(problem, indices, status, STRATEGY, seconds)
        for budget in budgets:
            if not _fits(solution.costs[budget.metric], budget.value):
                raise SelectionError(
                    f"the MIP returned a choice over the {budget.metric} budget "
                    f"({solution.costs[budget.metric]:.6g} > {budget.value:.6g})"
                )
        found.append(solution)
        if diversity_layers > problem.num_layers:
            break
        model.forbid_near(indices, diversity_layers)
    return tuple(found)


def _joint_infeasible(
    problem: SelectionProblem,
    budgets: Sequence[Budget],
    time_limit_s: float,
    threads: int | None,
    batch: int,
) -> Infeasible:
    """Each budget alone is feasible but not all together: find one the others make impossible."""
    for budget in budgets:
        others = [b for b in budgets if b.metric != budget.metric]
        model = _Model(problem, others, objective=budget.metric)
        status, indices, _ = model.solve(time_limit_s, threads)
        if indices is None:
            continue
        smallest = problem.cost(indices, budget.metric)
        if not _fits(smallest, budget.value):
            return Infeasible(budget.metric, budget.value, smallest, True, budget, batch)
    first = budgets[0]
    return Infeasible(first.metric, first.value, problem.min_cost(first.metric), True, first, batch)


def solve_sweep(
    problem: SelectionProblem,
    requests: Sequence[Sequence[Budget] | Mapping[str, float]],
    **options,
) -> list[tuple[Solution, ...] | Infeasible]:
    """``solve_mip`` for each request (one set of budgets each), in order."""
    return [solve_mip(problem, budgets, **options) for budgets in requests]

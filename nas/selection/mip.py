"""Puzzle's mixed-integer selection with PuLP (CBC or HiGHS): pure, no torch, no ray.

Formulation for one request (a set of bounds solved together):

    additive layer l: binary x[l, a] (attention option a), y[l, f] (FFN option f),
        sum_a x[l, a] == 1,  sum_f y[l, f] == 1
    joint layer l: binary z[l, b] (block b), sum_b z[l, b] == 1
    minimise   sum score[l,a] x[l,a] + sum score[l,f] y[l,f] + sum score[l,b] z[l,b]
    subject to fixed[m] + sum cost_m x + sum cost_m y + sum cost_m z <= budget  (a max bound)
                                                                    >= budget  (a min bound)

Bound rows are divided by their largest coefficient so that parameter counts (1e8) and
milliseconds (1e-2) give the solver rows of the same scale. Diverse solutions: after each solution,
continuous ``same[l]`` (1 exactly when layer l repeats the earlier choice: ``>= x + y - 1`` or
``>= z``) and ``sum_l same[l] <= L - k`` force at least ``k`` layers to differ from every earlier
solution. Per-layer fixed choices and forbidden options are a smaller problem (``restrict``).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence

import pulp

from nas.selection.costs import BUDGET_RTOL, Budget, Infeasible, SelectionProblem, Solution
from nas.selection.errors import SelectionError, SolveTimeout

STRATEGY = "puzzle-mip"
SOLVERS = ("highs", "cbc")
# picked by bench/mip_speed.py: HiGHS (in process) is faster on every library measured there
DEFAULT_SOLVER = "highs"
# the relative optimality gap the solvers are asked to prove (HiGHS's own default is 1e-4; CBC
# stopped at up to 8e-6 in bench/mip_speed.py)
MIP_RTOL = 1e-7
UNITS = ("attention", "ffn", "block")


def as_budgets(budgets: Sequence[Budget] | Mapping[str, float]) -> tuple[Budget, ...]:
    """Accept ``{metric: value}`` (max bounds) or ``Budget`` objects; at most one max and one min
    bound per metric."""
    if isinstance(budgets, Mapping):
        out = tuple(Budget(m, float(v), m, float(v)) for m, v in budgets.items())
    else:
        out = tuple(budgets)
    keys = [(b.metric, b.bound) for b in out]
    if len(set(keys)) != len(keys):
        raise SelectionError(f"one max and one min bound per metric, got {[b.label for b in out]}")
    return out


def _fits(value: float, budget: float) -> bool:
    return value <= budget + BUDGET_RTOL * max(1.0, abs(budget))


class _Model:
    """The PuLP model of one problem under some bounds, extendable with diversity cuts.

    Choice variables: per additive layer one per attention and one per FFN option, per joint layer
    one per block. Layers whose options of one kind (attention, FFN or joint block) have identical
    costs on the constrained metrics form a class (in a homogeneous model: all layers). With
    ``aggregate``, a class of several layers gets integer counts ``n[c, o]`` (layers of the class
    taking option ``o``) that carry the bound rows, and its choice variables are continuous: once
    the counts are integral, what is left is a transportation problem (totally unimodular), so its
    optimal vertex is integral. Branching on counts instead of on interchangeable binaries removes
    the symmetry that makes CBC slow to prove optimality. Diversity cuts need binary choices, so
    ``forbid_near`` makes them binary.
    """

    def __init__(
        self,
        problem: SelectionProblem,
        budgets: Sequence[Budget],
        objective: tuple[str, str] | None,
        aggregate: bool = True,
    ):
        self.problem = problem
        self.lp = pulp.LpProblem("selection", pulp.LpMinimize)
        self.cuts = 0
        self.binary = not aggregate
        metrics = [b.metric for b in budgets] + ([objective[0]] if objective else [])
        # per unit (attention, ffn, block), per layer, per option: the choice variable
        self.choice: dict[str, list[list[pulp.LpVariable]]] = {}
        rows: dict[str, list] = {m: [] for m in metrics}  # metric -> [(variable, cost)]
        scores = []
        for unit in UNITS:
            members_of = [i for i, layer in enumerate(problem.layers) if _has(layer, unit)]
            classes: dict[tuple, list[int]] = {}
            for i in members_of:
                options = _items(problem.layers[i], unit)
                key = tuple(tuple(o.costs[m] for m in metrics) for o in options)
                classes.setdefault(key if aggregate else (i,), []).append(i)
            self.choice[unit] = [[] for _ in problem.layers]
            for c, members in enumerate(classes.values()):
                shared = len(members) > 1
                for i in members:
                    options = _items(problem.layers[i], unit)
                    self.choice[unit][i] = [
                        self._variable(
                            f"{unit[0]}_{i}_{o}",
                            0,
                            1,
                            pulp.LpContinuous if shared else pulp.LpBinary,
                        )
                        for o in range(len(options))
                    ]
                    self.lp += pulp.lpSum(self.choice[unit][i]) == 1, f"one_{unit}_{i}"
                    scores += [
                        (v, o.score) for v, o in zip(self.choice[unit][i], options, strict=True)
                    ]
                for o, option in enumerate(_items(problem.layers[members[0]], unit)):
                    if shared:
                        count = self._variable(f"n_{unit}_{c}_{o}", 0, len(members), pulp.LpInteger)
                        self.lp += (
                            pulp.lpSum(self.choice[unit][i][o] for i in members) == count,
                            f"count_{unit}_{c}_{o}",
                        )
                        terms = [(count, 1.0)]
                    else:
                        terms = [(self.choice[unit][members[0]][o], 1.0)]
                    for m in metrics:
                        rows[m] += [(v, w * option.costs[m]) for v, w in terms]
        if objective is None:  # minimise the summed scores
            self.lp += pulp.LpAffineExpression(scores)
        else:  # minimise (or maximise) one cost: the best achievable under the other bounds
            sign = 1.0 if objective[1] == "max" else -1.0
            self.lp += pulp.LpAffineExpression([(v, sign * c) for v, c in rows[objective[0]]])
        for k, budget in enumerate(budgets):
            metric = budget.metric
            scale = max((abs(c) for _, c in rows[metric]), default=1.0) or 1.0
            lhs = pulp.LpAffineExpression([(v, c / scale) for v, c in rows[metric]])
            rhs = (budget.value - problem.fixed(metric)) / scale
            row = lhs <= rhs if budget.bound == "max" else lhs >= rhs
            self.lp += row, f"budget_{k}_{metric}"

    def _variable(self, name: str, low=None, up=None, cat=pulp.LpContinuous) -> pulp.LpVariable:
        if hasattr(self.lp, "add_variable"):  # PuLP >= 3.3
            return self.lp.add_variable(name, low, up, cat=cat)
        return pulp.LpVariable(name, low, up, cat=cat)

    def make_binary(self) -> None:
        self.binary = True
        for unit in UNITS:
            for variables in self.choice[unit]:
                for v in variables:  # bounds are already [0, 1]; PuLP spells binary "Integer"
                    v.cat = pulp.LpInteger

    def forbid_near(self, indices, diversity_layers: int) -> None:
        """Require at least ``diversity_layers`` layers to differ from ``indices``."""
        self.make_binary()
        k = self.cuts
        same = [self._variable(f"same_{k}_{i}", 0, 1) for i in range(self.problem.num_layers)]
        for i, (a, f) in enumerate(indices):
            layer = self.problem.layers[i]
            if layer.is_joint:
                j = layer.blocks.index(layer.block(a, f))
                self.lp += same[i] >= self.choice["block"][i][j], f"same_{k}_{i}"
                continue
            attention, ffn = self.choice["attention"][i][a], self.choice["ffn"][i][f]
            self.lp += same[i] >= attention + ffn - 1, f"same_{k}_{i}"
        self.lp += (
            pulp.lpSum(same) <= self.problem.num_layers - diversity_layers,
            f"differ_{k}",
        )
        self.cuts += 1

    def solve(
        self,
        time_limit_s: float,
        threads: int | None,
        mip_gap: float | None = None,
        solver: str = DEFAULT_SOLVER,
    ) -> tuple[str, tuple | None, float]:
        """Returns (status, indices or None, seconds); status: optimal, time_limit, infeasible,
        no_solution."""
        t0 = time.perf_counter()
        self.lp.solve(_solver(solver, time_limit_s, threads, mip_gap))
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
            unit: [[v.value() or 0.0 for v in layer] for layer in self.choice[unit]]
            for unit in UNITS
        }
        if any(
            1e-6 < value < 1 - 1e-6 for unit in UNITS for layer in values[unit] for value in layer
        ):  # not a vertex (e.g. a heuristic's point): solve again with binary choices
            if self.binary:
                raise SelectionError("the MIP solver returned a fractional choice")
            self.make_binary()
            status, indices, more = self.solve(time_limit_s, threads, mip_gap, solver)
            return status, indices, seconds + more
        indices = []
        for i, layer in enumerate(self.problem.layers):
            if layer.is_joint:
                block = layer.blocks[_argmax(values["block"][i])]
                indices.append((block.attention, block.ffn))
            else:
                indices.append((_argmax(values["attention"][i]), _argmax(values["ffn"][i])))
        return status, tuple(indices), seconds


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _has(layer, unit: str) -> bool:
    return layer.is_joint == (unit == "block")


def _items(layer, unit: str):
    return layer.blocks if unit == "block" else layer.options(unit)


_BANNER_SHOWN = False


def _silence_highs_banner() -> None:
    """HiGHS prints a banner on stdout (from C++, ignoring ``msg=False``) when the first solver
    object of a process is made; make that one with stdout pointed at /dev/null, so that
    ``nas select --format csv`` writes nothing but the table."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True


def _solver(name: str, time_limit_s: float, threads: int | None, mip_gap: float | None):
    """A PuLP solver: ``cbc`` (bundled CBC, a subprocess per solve) or ``highs`` (HiGHS in
    process through ``highspy``). Both prove optimality unless ``mip_gap`` (relative) is given."""
    if name == "highs":
        _silence_highs_banner()
        gap = MIP_RTOL if mip_gap is None else mip_gap
        return pulp.HiGHS(  # one thread unless asked: less CPU per solve in bench/mip_speed.py
            msg=False, timeLimit=time_limit_s, threads=threads or 1, gapRel=gap, gapAbs=1e-9
        )
    if name != "cbc":
        raise SelectionError(f"unknown MIP solver {name!r}; use one of {', '.join(SOLVERS)}")
    with warnings.catch_warnings():  # PuLP 3.3 deprecates the bundled-CBC class name
        warnings.simplefilter("ignore", DeprecationWarning)
        gap = MIP_RTOL if mip_gap is None else mip_gap  # CBC's own default stops near 1e-5
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, threads=threads, gapRel=gap)


def solve_mip(
    problem: SelectionProblem,
    budgets: Sequence[Budget] | Mapping[str, float],
    *,
    solutions: int = 1,
    diversity_layers: int = 1,
    time_limit_s: float = 10.0,
    threads: int | None = None,
    mip_gap: float | None = None,
    aggregate: bool = False,
    solver: str = DEFAULT_SOLVER,
    batch: int = 1,
    workload=None,
) -> tuple[Solution, ...] | Infeasible:
    """Best-scoring choices within all the bounds together: up to ``solutions`` of them, each
    differing from every earlier one in at least ``diversity_layers`` layers, best first.

    Returns a non-empty tuple of ``Solution`` (status ``optimal`` or ``time_limit``: feasible but
    not proven optimal when the solver hit ``time_limit_s``), or ``Infeasible`` naming the binding
    bound and the exact best achievable value of its metric (with the cheapest, or for a min bound
    the largest, option in every layer; or, when each bound alone is feasible, under the other
    bounds). Fewer than ``solutions`` come back when no further diverse choice fits. ``solver``:
    ``highs`` or ``cbc`` (see ``SOLVERS``). ``mip_gap`` (relative) lets the solver stop once
    within that fraction of the optimum (default: proven optimal). ``aggregate`` turns on the count
    formulation for layers with identical costs (see ``_Model``; measured in bench/mip_speed.py).
    ``batch`` / ``workload`` only phrase throughput messages. Raises ``SolveTimeout`` if the limit
    passes before any feasible choice is found.
    """
    budgets = as_budgets(budgets)
    if solutions < 1 or diversity_layers < 1:
        raise SelectionError("solutions and diversity_layers must be >= 1")
    for budget in budgets:
        best = (problem.min_cost if budget.bound == "max" else problem.max_cost)(budget.metric)
        if not budget.holds(best):
            return Infeasible(budget.metric, budget.value, best, False, budget, batch, workload)
    model = _Model(problem, budgets, objective=None, aggregate=aggregate)
    found: list[Solution] = []
    while len(found) < solutions:
        status, indices, seconds = model.solve(time_limit_s, threads, mip_gap, solver)
        if status == "infeasible" and not found:
            return _joint_infeasible(
                problem, budgets, time_limit_s, threads, solver, batch, workload
            )
        if status == "no_solution" and not found:
            raise SolveTimeout(
                f"the MIP found no feasible choice within {time_limit_s:g} s; raise "
                "strategy.time_limit_s or loosen the budget"
            )
        if indices is None:
            break
        solution = Solution.of(problem, indices, status, STRATEGY, seconds)
        for budget in budgets:
            if not budget.holds(solution.costs[budget.metric]):
                raise SelectionError(
                    f"the MIP returned a choice outside {budget.label} "
                    f"({budget.metric} {solution.costs[budget.metric]:.6g})"
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
    solver: str,
    batch: int,
    workload,
) -> Infeasible:
    """Each bound alone is feasible but not all together: find one the others make impossible
    (the binding bound) and its best achievable value under them."""
    for budget in budgets:
        others = [b for b in budgets if b is not budget]
        model = _Model(problem, others, objective=(budget.metric, budget.bound))
        status, indices, _ = model.solve(time_limit_s, threads, None, solver)
        if indices is None:
            continue
        best = problem.cost(indices, budget.metric)
        if not budget.holds(best):
            return Infeasible(budget.metric, budget.value, best, True, budget, batch, workload)
    first = budgets[0]
    return Infeasible(
        first.metric, first.value, problem.min_cost(first.metric), True, first, batch, workload
    )


def solve_sweep(
    problem: SelectionProblem,
    requests: Sequence[Sequence[Budget] | Mapping[str, float]],
    **options,
) -> list[tuple[Solution, ...] | Infeasible]:
    """``solve_mip`` for each request (one set of bounds each), in order."""
    return [solve_mip(problem, budgets, **options) for budgets in requests]

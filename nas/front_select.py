"""Building a Pareto front from a costed selection problem (pure Python + pandas).

``select_front`` runs the budgeted strategies (``puzzle-mip``, ``greedy``) per target, adds
the points of the other strategies (``CandidatePoint``), drops dominated points and returns a
``FrontResult``; ``nas.pareto`` stores, reads and queries it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from nas.eval_sets import MEASURED_COLUMNS
from nas.selection.costs import (
    LATENCY_METRICS,
    Budget,
    Choices,
    Infeasible,
    SelectionProblem,
    Workload,
)
from nas.selection.dominance import non_dominated
from nas.selection.errors import SelectionError
from nas.selection.greedy import solve_greedy
from nas.selection.mip import DEFAULT_SOLVER, solve_mip
from nas.selection.targets import Target, request_label

STRATEGIES_WITH_BUDGETS = ("puzzle-mip", "greedy")


@dataclass(frozen=True)
class CandidatePoint:
    """A student proposed by a strategy that does not take budgets (``amoeba-dp``,
    ``diswot-evolution``): its per-layer choices and, optionally, its own quality estimate
    (otherwise the summed scores of its options)."""

    strategy: str
    choices: Choices
    predicted_kl: float | None = None
    target: str = ""


@dataclass
class FrontResult:
    """``front``: the non-dominated points sorted by the primary metric; ``baselines``: baseline
    points (not part of the front); ``meta``: see the module docstring."""

    front: pd.DataFrame
    baselines: pd.DataFrame
    meta: dict = field(default_factory=dict)
    alternates: pd.DataFrame = field(default_factory=pd.DataFrame)


def cost_column(metric: str) -> str:
    """Front column of a cost metric: latencies are ``predicted_<metric>``, others as they are."""
    return f"predicted_{metric}" if metric in LATENCY_METRICS else metric


def point_id(choices: Choices) -> str:
    digest = hashlib.sha1(json.dumps([list(c) for c in choices]).encode()).hexdigest()
    return f"p{digest[:10]}"


def select_front(
    problem: SelectionProblem,
    targets: Sequence[Target],
    strategies_points: Sequence[CandidatePoint] = (),
    *,
    strategies: Sequence[str] = ("puzzle-mip",),
    baselines: Sequence[str] = ("greedy",),
    solutions_per_budget: int = 1,
    diversity_layers: int = 1,
    time_limit_s: float = 10.0,
    batch: int = 1,
    on_infeasible: str = "raise",
    solver: str = DEFAULT_SOLVER,
    aggregate: bool = False,
    workload: Workload | None = None,
) -> FrontResult:
    """Sweep every target value with the budgeted strategies, add the other strategies' points,
    drop dominated points, and return the front (the selection stage's whole job, pure).

    Inputs: ``problem`` (scores and costs per option); ``targets`` (each swept value together with
    the target's fixed bounds is one request, all its bounds solved together; ``workload``, default
    ``batch`` sequences of one token, converts throughputs); ``strategies_points``
    (points of ``amoeba-dp`` / ``diswot-evolution``, costed here from their choices; points the
    problem does not allow, e.g. after ``restrict``, are left out);
    ``strategies``: which budgeted strategies to run per value (``puzzle-mip``, ``greedy``);
    ``baselines``: budgeted strategies run per value whose points go to ``baselines`` instead.

    A point is dominated when another is no worse on every target metric (the primary one when
    there are no targets) and on ``predicted_kl``, and better on one; identical choices are kept
    once (first strategy wins). An infeasible target value raises ``InfeasibleBudget`` (one line,
    naming the smallest achievable value) unless ``on_infeasible="record"``, which lists it in
    ``meta["infeasible"]``. Raises ``SelectionError`` if nothing at all is found.

    Output: ``FrontResult`` with ``front`` (columns as in the module docstring, sorted by the
    primary cost), ``baselines`` (same columns plus ``label``) and ``meta``; store it with
    ``write_front(job_dir, result, problem)``. The pipeline's selection stage is expected to do::

        targets = [Target.of(t) for t in spec.targets]
        points = [CandidatePoint("amoeba-dp", mask_choices(m.mask)) for m in dp_masks]  # if asked
        result = select_front(
            problem, targets, points,
            strategies=["puzzle-mip"] if "puzzle-mip" in spec.strategy.names else [],
            solutions_per_budget=spec.strategy.solutions_per_budget,
            diversity_layers=spec.strategy.diversity_layers,
            time_limit_s=spec.strategy.time_limit_s, batch=decode_batch,
        )
        write_front(store.dir, result, problem)
    """
    unknown = set(strategies) | set(baselines)
    unknown -= set(STRATEGIES_WITH_BUDGETS)
    if unknown:
        raise SelectionError(f"unknown budgeted strategies {sorted(unknown)}")
    workload = workload or Workload(batch)
    requests = [r for t in targets for r in t.requests(problem, workload)]
    budgets = [b for r in requests for b in r]
    metrics = []
    for b in budgets:
        if b.metric not in metrics:
            metrics.append(b.metric)
    if not metrics:
        metrics = [next((m for m in LATENCY_METRICS if m in problem.metrics), problem.metrics[0])]
    rows, baseline_rows, alternate_rows, infeasible = [], [], [], []
    options = {
        "solutions": solutions_per_budget,
        "diversity_layers": diversity_layers,
        "time_limit_s": time_limit_s,
        "solver": solver,
        "aggregate": aggregate,
        "workload": workload,
    }
    for request in requests:
        label = request_label(request)
        for strategy in (*strategies, *baselines):
            if strategy == "greedy" and any(b.bound == "min" for b in request):
                continue  # the greedy walk only lowers costs
            result = _solve(problem, request, strategy, options)
            if isinstance(result, Infeasible):
                if on_infeasible == "raise":
                    raise result.error()
                if result.message() not in infeasible:
                    infeasible.append(result.message())
                continue
            target_rows = baseline_rows if strategy in baselines else rows
            for solution in result:
                row = _row(
                    problem, solution.choices, strategy, label, solution.status, solution.score
                )
                target_rows.append(row)
                if strategy not in baselines and solutions_per_budget > 1:
                    alternate_rows.append(dict(row))
    for point in strategies_points:
        try:
            indices = problem.indices(point.choices)
        except SelectionError:  # a choice the rules (fix / forbid) or the blocks exclude
            continue
        kl = problem.score(indices) if point.predicted_kl is None else float(point.predicted_kl)
        rows.append(
            _row(problem, problem.names(indices), point.strategy, point.target, "heuristic", kl)
        )
    if not rows:
        raise SelectionError(
            "selection found no student: "
            + ("; ".join(infeasible) if infeasible else "no targets and no strategy points")
        )
    candidates = len(rows)
    keys = [*(cost_column(m) for m in metrics), "predicted_kl"]
    front = non_dominated(_dedupe(rows), lambda r: [r[k] for k in keys])
    parent = problem.parent_indices()
    meta = {
        "version": 1,
        "primary_metric": metrics[0],
        "primary_column": cost_column(metrics[0]),
        "objectives": [cost_column(m) for m in metrics] + ["predicted_kl"],
        "latency_metrics": [m for m in LATENCY_METRICS if m in problem.metrics],
        "parent": {cost_column(m): v for m, v in problem.costs(parent).items()}
        | {"predicted_kl": 0.0},
        "smallest": {cost_column(m): problem.min_cost(m) for m in problem.metrics},
        "targets": [request_label(r) for r in requests],
        "budgets": [
            {"metric": b.metric, "value": b.value, "bound": b.bound, "label": b.label}
            for b in budgets
        ],
        "infeasible": infeasible,
        "candidates": candidates,
        "points": len(front),
        "batch": workload.batch,
    }
    columns = _columns(problem)
    front_frame = pd.DataFrame(front, columns=columns).sort_values(
        [meta["primary_column"], "predicted_kl"], kind="stable", ignore_index=True
    )
    base_frame = pd.DataFrame(_dedupe(baseline_rows), columns=columns)
    base_frame.insert(0, "label", base_frame["strategy"])
    alternates = pd.DataFrame(alternate_rows, columns=columns)
    return FrontResult(front_frame, base_frame, meta, alternates)


def _solve(problem, request: list[Budget], strategy: str, options: dict):
    if strategy == "greedy":
        return solve_greedy(problem, request, batch=options["workload"].batch)
    return solve_mip(problem, request, **options)


def _columns(problem: SelectionProblem) -> list[str]:
    latency = [cost_column(m) for m in LATENCY_METRICS if m in problem.metrics]
    others = [m for m in problem.metrics if m not in LATENCY_METRICS and m != "params"]
    return [
        "point_id",
        "strategy",
        "target",
        "status",
        "choices",
        *latency,
        "params",
        *(others if "memory_mib" in others else ["memory_mib", *others]),
        "predicted_kl",
        *MEASURED_COLUMNS,
    ]


def _row(problem, choices: Choices, strategy, target, status, kl) -> dict:
    indices = problem.indices(choices)
    row = {
        "point_id": point_id(choices),
        "strategy": strategy,
        "target": target,
        "status": status,
        "choices": [list(c) for c in choices],
        "predicted_kl": float(kl),
    }
    for metric, value in problem.costs(indices).items():
        row[cost_column(metric)] = value
    for column in MEASURED_COLUMNS:
        row[column] = None
    return row


def _dedupe(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for row in rows:
        if row["point_id"] not in seen:
            seen.add(row["point_id"])
            out.append(row)
    return out

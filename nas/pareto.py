"""The Pareto front of a job: build it from the selection strategies, store it, query it, plot it.

Files under ``results/<job>/pareto/`` (each written atomically):

- ``front.json``: a list of point records; ``front.csv``: the same table (``choices`` as a JSON
  string). Columns: ``point_id`` (stable: a hash of the choices), ``strategy``, ``target`` (the
  budget it answers, e.g. ``prefill_latency_ms<=3.2``; empty for points not from a budget),
  ``status``, ``choices`` (per layer ``[attention canonical, ffn canonical]``),
  ``predicted_<latency metric>`` for each profiled phase, ``params``, ``memory_mib``,
  ``predicted_kl`` (summed replace-one-block scores), and ``measured_latency_ms``,
  ``measured_kl``, ``measured_lm_loss``, ``measured_perplexity`` (empty until students are
  measured; see ``record_measurement``).
- ``meta.json``: the primary metric (x axis; what ``max_latency_ms`` filters), the parent point,
  the smallest achievable cost per metric, the targets, infeasible targets and counts.
- ``baselines.json`` (optional): records with ``label`` plus the same cost / quality columns,
  e.g. the greedy selection at the same budgets; plotted, never part of the front.
- ``problem.json``: the ``SelectionProblem`` the front was built from.
- ``alternates.json`` (with ``solutions_per_budget`` > 1): every MIP solution of every budget,
  with its ``target``; the rerank stage measures them and keeps the best of each budget.

Pure Python + pandas; matplotlib is imported only to write a PNG.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from compress.atomic import atomic_write_json, atomic_write_text
from nas.errors import RecordCorrupt
from nas.eval_sets import MEASURED_COLUMNS, measured_columns
from nas.layout import JobLayout, read_json_record
from nas.selection.costs import (
    LATENCY_METRICS,
    Budget,
    Choices,
    Infeasible,
    SelectionProblem,
    Workload,
)
from nas.selection.errors import FrontMissing, NoPointFits, SelectionError
from nas.selection.greedy import solve_greedy
from nas.selection.mip import DEFAULT_SOLVER, solve_mip
from nas.selection.targets import Bound, Target, request_label

__all__ = ["Bound", "CandidatePoint", "FrontResult", "Target", "select_front", "write_front"]

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
    front = _non_dominated(_dedupe(rows), [cost_column(m) for m in metrics])
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


def _non_dominated(rows: list[dict], columns: list[str]) -> list[dict]:
    keys = [*columns, "predicted_kl"]
    out = []
    for row in rows:
        dominated = any(
            all(other[k] <= row[k] for k in keys) and any(other[k] < row[k] for k in keys)
            for other in rows
            if other is not row
        )
        if not dominated:
            out.append(row)
    return out


# --- storage ------------------------------------------------------------------------------------
def front_dir(job_dir: str | Path) -> Path:
    return JobLayout(job_dir).pareto


def _records(frame: pd.DataFrame) -> list[dict]:
    out = []
    for record in frame.to_dict("records"):
        out.append({k: _plain(v) for k, v in record.items()})
    return out


def _plain(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return _plain(value.item())
    return value


def _write_table(folder: Path, name: str, frame: pd.DataFrame) -> None:
    records = _records(frame)
    atomic_write_text(
        folder / f"{name}.json", json.dumps(records, indent=1, allow_nan=False) + "\n"
    )
    flat = frame.copy()
    if "choices" in flat:
        flat["choices"] = [json.dumps(c) for c in flat["choices"]]
    atomic_write_text(folder / f"{name}.csv", flat.to_csv(index=False))


def write_front(
    job_dir: str | Path, result: FrontResult, problem: SelectionProblem | None = None
) -> Path:
    """Store a front (and its baselines, meta and problem) under ``<job_dir>/pareto``."""
    folder = front_dir(job_dir)
    if problem is not None:
        atomic_write_json(folder / JobLayout(job_dir).problem.name, problem.to_dict())
    if len(result.baselines):
        atomic_write_text(
            folder / "baselines.json",
            json.dumps(_records(result.baselines), indent=1, allow_nan=False) + "\n",
        )
    if len(result.alternates):
        _write_table(folder, "alternates", result.alternates)
    atomic_write_json(JobLayout(job_dir).front_meta, result.meta)
    _write_table(folder, "front", result.front)
    return folder


def rewrite_front(job_dir: str | Path, frame: pd.DataFrame, **meta_fields) -> None:
    """Replace the stored front with ``frame`` (same columns, plus any new ones) and merge
    ``meta_fields`` into its meta; both writes are atomic, the meta first."""
    meta = read_meta(job_dir) | meta_fields | {"points": len(frame)}
    atomic_write_json(JobLayout(job_dir).front_meta, meta)
    _write_table(front_dir(job_dir), "front", frame)


def rewrite_meta(job_dir: str | Path, **meta_fields) -> dict:
    """Merge ``meta_fields`` into the stored meta (atomic); returns the new meta."""
    meta = read_meta(job_dir) | meta_fields
    atomic_write_json(JobLayout(job_dir).front_meta, meta)
    return meta


def read_meta(job_dir: str | Path) -> dict:
    path = JobLayout(job_dir).front_meta
    if not path.exists():
        raise FrontMissing(
            f"{Path(job_dir).name} has no Pareto front yet; run the job through its selection stage"
        )
    meta = _read_table_json(path, job_dir)
    if not isinstance(meta, dict):
        raise RecordCorrupt(f"{path} is not a mapping; rerun the job's selection stage")
    return meta


def _read_table_json(path: Path, job_dir: str | Path):
    return read_json_record(path, f"the Pareto front of job {Path(job_dir).name}")


def _table(path: Path, job_dir: str | Path) -> pd.DataFrame:
    """A stored list of records as a frame; ``RecordCorrupt`` when it is not one."""
    data = _read_table_json(path, job_dir)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise RecordCorrupt(f"{path} is not a list of records; rerun the job's selection stage")
    return pd.DataFrame(data)


def read_front(job_dir: str | Path) -> pd.DataFrame:
    """The whole stored front (``choices`` as lists), in stored order."""
    meta = read_meta(job_dir)
    frame = pd.DataFrame(JobLayout(job_dir).front_records())
    for column in measured_columns(meta):
        if column not in frame:
            frame[column] = None
    frame.attrs["meta"] = meta
    return frame


def read_alternates(job_dir: str | Path) -> pd.DataFrame:
    """Every budgeted MIP solution (``alternates.json``), or an empty frame when none."""
    path = JobLayout(job_dir).pareto_file("alternates.json")
    if not path.exists():
        return pd.DataFrame()
    return _table(path, job_dir)


def read_baselines(job_dir: str | Path) -> pd.DataFrame:
    """Baseline points (``baselines.json``), or an empty frame when the job has none."""
    path = JobLayout(job_dir).pareto_file("baselines.json")
    if not path.exists():
        return pd.DataFrame()
    return _table(path, job_dir)


def latency_column(meta: dict) -> str | None:
    """The column ``max_latency_ms`` filters on: the primary metric if it is a latency, else the
    first profiled latency; None without any latency."""
    if meta["primary_metric"] in LATENCY_METRICS:
        return meta["primary_column"]
    return cost_column(meta["latency_metrics"][0]) if meta.get("latency_metrics") else None


def query_front(
    job_dir: str | Path,
    max_latency_ms: float | None = None,
    max_memory_mib: float | None = None,
) -> pd.DataFrame:
    """Points of the stored front within the limits, sorted by latency (else the primary cost).

    Raises ``FrontMissing`` without a front, ``SelectionError`` for a latency limit on a front
    without latency, and ``NoPointFits`` (one line naming the fastest / smallest point and the
    smallest value the library can reach) when the limits exclude every point.
    """
    frame = read_front(job_dir)
    try:
        return _filter_front(frame, max_latency_ms, max_memory_mib)
    except (KeyError, TypeError, ValueError) as exc:  # a front.json edited or damaged by hand
        raise RecordCorrupt(
            f"the Pareto front of job {Path(job_dir).name} lacks or mangles {exc}; "
            "rerun the job's selection stage"
        ) from None


def _filter_front(
    frame: pd.DataFrame, max_latency_ms: float | None, max_memory_mib: float | None
) -> pd.DataFrame:
    meta = frame.attrs["meta"]
    latency = latency_column(meta)
    order = latency or meta["primary_column"]
    keep = pd.Series(True, index=frame.index)
    for limit, column, unit in (
        (max_latency_ms, latency, "ms"),
        (max_memory_mib, "memory_mib", "MiB"),
    ):
        if limit is None:
            continue
        if column is None:
            raise SelectionError(
                "this front has no latency column; profile a phase to filter on it"
            )
        if not (frame[column] <= limit).any():
            smallest = meta.get("smallest", {}).get(column)
            reach = (
                f"; the smallest {column} this library can reach is {smallest:.6g} {unit} "
                "(add a lower target and rerun selection)"
                if smallest is not None
                else ""
            )
            raise NoPointFits(
                f"no point of the front has {column} <= {limit:g} {unit}: the smallest on the "
                f"front is {frame[column].min():.6g} {unit}{reach}"
            )
        keep &= frame[column] <= limit
    out = frame[keep].sort_values([order, "predicted_kl"], kind="stable", ignore_index=True)
    if out.empty:
        raise NoPointFits(
            f"no point of the front meets latency <= {max_latency_ms} ms and memory <= "
            f"{max_memory_mib} MiB together; loosen one of them"
        )
    out.attrs["meta"] = meta
    return out


def record_measurement(job_dir: str | Path, point_id: str, **measured: float) -> None:
    """Fill ``measured_*`` columns of one point (keys: ``latency_ms``, ``kl``, ``lm_loss``,
    ``perplexity``, and per eval set ``perplexity@SET`` ...) and rewrite the front atomically."""
    frame = read_front(job_dir)
    if point_id not in set(frame["point_id"]):
        raise SelectionError(f"no point {point_id} in the front of {Path(job_dir).name}")
    known = measured_columns(frame.attrs["meta"])
    for key, value in measured.items():
        column = f"measured_{key}"
        if column not in known:
            raise SelectionError(f"unknown measurement {key!r}; known: {', '.join(known)}")
        frame[column] = frame[column].astype(object)
        frame.loc[frame["point_id"] == point_id, column] = float(value)
    _write_table(front_dir(job_dir), "front", frame)


def plot_front(job_dir: str | Path, path: str | Path, quality: list[str] | None = None) -> Path:
    """Write the latency-vs-quality plot of a stored front: ``.png`` or ``.html`` (inline SVG);
    see ``nas.pareto_plot.plot_job`` (``quality``: the sets of its quality panels)."""
    from nas.pareto_plot import plot_job

    return plot_job(job_dir, Path(path), quality)

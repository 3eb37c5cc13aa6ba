"""The Pareto front of a job: store it, read it, query it (built by ``nas.front_select``,
plotted by ``nas.pareto_plot``).

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

Pure Python + pandas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from compress.atomic import atomic_write_json, atomic_write_text
from nas.errors import RecordCorrupt
from nas.eval_sets import MEASURED_COLUMNS, measured_columns
from nas.front_select import (
    STRATEGIES_WITH_BUDGETS,
    CandidatePoint,
    FrontResult,
    cost_column,
    point_id,
    select_front,
)
from nas.layout import JobLayout, read_json_record
from nas.selection.costs import LATENCY_METRICS, SelectionProblem
from nas.selection.errors import FrontMissing, NoPointFits, SelectionError
from nas.selection.targets import Bound, Target

__all__ = [
    "MEASURED_COLUMNS",
    "STRATEGIES_WITH_BUDGETS",
    "Bound",
    "CandidatePoint",
    "FrontResult",
    "Target",
    "cost_column",
    "point_id",
    "select_front",
    "write_front",
]



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

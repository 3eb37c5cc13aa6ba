"""Downstream accuracy of a job's parent and students with EleutherAI's lm-evaluation-harness.

``evaluate_points`` runs ``lm_eval.simple_evaluate`` on each asked point (``parent`` or a point
id of the front) through ``compress.lm_eval_model.BlockModelLM`` and stores one record per point
in ``results/<job>/eval/<point>.json``::

    {"point_id": ..., "tasks": {task: {"acc": 0.41, "acc_stderr": 0.03, ...}},
     "samples": {task: items scored}, "limits": {task: N or null}, "lm_eval": version,
     "columns": {"eval_<task>_<metric>": value, ...}}

A later run merges into the record (other tasks stay). ``nas pareto`` joins the ``columns`` of
these records onto the front and onto the parent (``join_eval``); they are never written into
``front.json``. Local tasks (no network) live in ``nas/eval_tasks``; any other name is looked up
among lm-eval's own tasks (``hellaswag``, ``arc_easy``, ``mmlu``...), which download their data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from compress.atomic import atomic_write_json
from compress.errors import UserError
from nas.layout import JobLayout
from nas.store import JobStore

LOCAL_TASKS = Path(__file__).resolve().parent / "eval_tasks"
DEFAULT_TASKS = ("nas_next_word",)
PARENT = "parent"
COLUMN_PREFIX = "eval_"
Report = Callable[[str], None]


class EvalError(UserError):
    """lm-eval is missing, a task is unknown, or its data cannot be loaded."""


def local_tasks() -> list[str]:
    """Names of the tasks shipped in ``nas/eval_tasks`` (one YAML file each)."""
    return sorted(p.stem for p in LOCAL_TASKS.glob("*.yaml"))


def task_manager(tasks: list[str]):
    """An lm-eval ``TaskManager`` knowing the local tasks, and lm-eval's own ones only when a
    name is not local (indexing those takes seconds). Raises ``EvalError`` for unknown names."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvalError(
            "nas eval needs EleutherAI's lm-eval: pip install 'nas-llm[eval]' (or lm-eval)"
        ) from None
    local = set(local_tasks())
    manager = TaskManager(include_path=str(LOCAL_TASKS), include_defaults=bool(set(tasks) - local))
    known = set(manager.all_tasks) | set(manager.all_groups) | set(manager.all_tags)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise EvalError(
            f"unknown lm-eval task {', '.join(map(repr, unknown))}; local tasks: "
            f"{', '.join(sorted(local))}; standard ones include hellaswag, arc_easy, mmlu"
        )
    return manager


def column_name(task: str, metric: str) -> str:
    return f"{COLUMN_PREFIX}{task}_{metric}"


def metrics_of(results: dict) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from ``simple_evaluate``'s ``results`` section: keys like
    ``acc,none`` become ``acc`` (``acc_<filter>`` for another filter); non-numbers are dropped."""
    out: dict[str, dict[str, float]] = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, str) or value is None:
                continue
            metric, filt = key.split(",", 1)
            metrics[metric if filt == "none" else f"{metric}_{filt}"] = float(value)
        out[task] = metrics
    return out


def record_path(store: JobStore, point_id: str) -> Path:
    return store.eval_record(point_id)


def store_result(store: JobStore, point_id: str, evaluated: dict, limit) -> dict:
    """Merge one ``simple_evaluate`` output into the point's record; returns the record."""
    import lm_eval

    path = record_path(store, point_id)
    record = json.loads(path.read_text()) if path.exists() else {"point_id": point_id}
    tasks = record.get("tasks", {}) | metrics_of(evaluated["results"])
    samples = record.get("samples", {}) | {
        task: counts["effective"] for task, counts in evaluated.get("n-samples", {}).items()
    }
    columns = {
        column_name(task, metric): value
        for task, metrics in tasks.items()
        for metric, value in metrics.items()
        if not metric.endswith("_stderr")
    }
    limits = record.get("limits", {}) | {task: limit for task in evaluated["results"]}
    record.update(
        tasks=tasks,
        samples=samples,
        limits=limits,
        lm_eval=getattr(lm_eval, "__version__", "unknown"),
        columns=columns,
    )
    atomic_write_json(path, record)
    return record


def eval_columns(job_dir: str | Path) -> dict[str, dict[str, float]]:
    """``{point id or "parent": {column: value}}`` of every stored record of a job."""
    folder = JobLayout(job_dir).eval
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(path.read_text())
        out[record["point_id"]] = record.get("columns", {})
    return out


def join_eval(job_dir: str | Path, frame):
    """``frame`` (a front query) with the ``eval_*`` columns of its points (null where a point
    was not evaluated) and the parent's in ``frame.attrs["meta"]["parent"]``."""
    records = eval_columns(job_dir)
    columns = sorted({c for cols in records.values() for c in cols})
    if not columns:
        return frame
    frame = frame.copy()
    for column in columns:
        frame[column] = [records.get(pid, {}).get(column) for pid in frame["point_id"]]
    meta = dict(frame.attrs.get("meta", {}))
    meta["parent"] = dict(meta.get("parent", {})) | records.get(PARENT, {})
    frame.attrs["meta"] = meta
    return frame


def load_point_model(store: JobStore, spec, parent, point_id: str, report: Report):
    """The ``BlockModel`` of ``point_id``: the parent, the student the students stage saved as
    ``hf`` when there is one, else the point assembled from the library (healed by GKD when the
    spec asks, as the students stage does)."""
    from compress.student import load_student
    from nas.export import build_point, find_point

    if point_id == PARENT:
        return parent.adapter
    point = find_point(store, point_id)
    saved = store.export(point_id, "hf")
    if (saved / "student.json").is_file():
        return load_student(saved, tokenizer=False).model.eval()
    return build_point(store, spec, parent, point, report)[0]


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval's info/warning logs and its own request-building bar off while it runs (the
    requests themselves show a ``compress.progress`` bar)."""
    import lm_eval.api.task as task_module

    logger = logging.getLogger("lm_eval")
    level, bar = logger.level, getattr(task_module, "tqdm", None)
    logger.setLevel(logging.ERROR)
    if bar is not None:
        task_module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is not None:
            task_module.tqdm = bar


def evaluate_points(
    store: JobStore,
    points: list[str] | None = None,
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    report: Report = print,
) -> dict[str, dict]:
    """Run lm-eval ``tasks`` (default ``nas_next_word``) on ``points`` (default: the parent and
    every point of the front; ``"parent"`` names the parent) and store each point's record.

    ``limit``: at most this many items per task. Returns ``{point id: record}``. Raises
    ``JobError`` for an unknown job or point, ``EvalError`` for an unknown task, a missing
    lm-eval, or a task whose data cannot be loaded."""
    from nas.baseline_stage import load_job_parent
    from nas.export import find_point

    tasks = list(tasks or DEFAULT_TASKS)
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    if not points:
        points = [PARENT, *(str(p["point_id"]) for p in store.front_records())]
    for point_id in points:
        if point_id != PARENT:
            find_point(store, point_id)  # one line naming the known ids, before any work
    manager = task_manager(tasks)
    spec = store.spec()
    parent = load_job_parent(spec)
    max_length = int(getattr(parent.hf_model.config, "max_position_embeddings", 2048) or 2048)
    import lm_eval

    from compress.lm_eval_model import BlockModelLM

    out = {}
    for point_id in points:
        t0 = time.perf_counter()
        model = load_point_model(store, spec, parent, point_id, report)
        lm = BlockModelLM(model, parent.tokenizer, min(max_length, 2048), batch_size, name=point_id)
        try:
            with _quiet_lm_eval():
                evaluated = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=tasks,
                    task_manager=manager,
                    limit=limit,
                    log_samples=False,
                    bootstrap_iters=1000,
                )
        except (OSError, ValueError, ConnectionError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EvalError(
                f"lm-eval could not run {', '.join(tasks)}: {first} (standard tasks download "
                "their data from the Hugging Face Hub; offline, use the local nas_next_word)"
            ) from None
        record = store_result(store, point_id, evaluated, limit)
        out[point_id] = record
        summary = ", ".join(
            f"{task} {metric} {value:.4f}"
            for task, metrics in metrics_of(evaluated["results"]).items()
            for metric, value in metrics.items()
            if not metric.endswith("_stderr")
        )
        report(f"[eval] {point_id}: {summary} ({time.perf_counter() - t0:.1f}s)")
    return out

"""Exporting a job's Pareto points and recording their measured columns.

``export_point`` reads the job's Pareto table (``<job>/pareto/front.json``: records with
``point_id`` and ``choices``, one ``[attention, ffn]`` pair per layer), assembles that student
from the job's block library, heals it with GKD when the spec asks (``export.gkd``), and
writes it as ``onnx`` (prefill + decode graphs, parity checked), ``tensorrt`` (engines built
from those graphs) or ``hf`` (the student directory). ``write_measured`` fills a point's
``measured_*`` columns in ``front.json`` and ``front.csv`` (through ``nas.pareto``).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from compress.atomic import atomic_write_json
from nas.errors import JobError
from nas.pareto import MEASURED_COLUMNS
from nas.spec import SearchSpec
from nas.store import JobStore

FORMATS = ("onnx", "tensorrt", "hf")
Report = Callable[[str], None]


# --- the Pareto table -------------------------------------------------------------------------
def front_path(job_dir: str | Path) -> Path:
    return Path(job_dir) / "pareto" / "front.json"


def _records(data) -> list[dict]:
    """The point records of a front.json: a list, or a mapping with a ``points`` list."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("points"), list):
        return data["points"]
    raise JobError("front.json is neither a list of points nor a mapping with 'points'")


def read_front(store: JobStore) -> list[dict]:
    """The job's Pareto points; ``JobError`` (one line) when the table does not exist yet."""
    path = front_path(store.dir)
    if not path.is_file():
        raise JobError(
            f"job {store.job_id} has no Pareto front yet ({path}); run the job through its "
            "selection stage first"
        )
    try:
        return _records(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise JobError(f"{path} is not valid JSON: {exc}") from None


def find_point(store: JobStore, point_id: str) -> dict:
    """The record of ``point_id``; ``JobError`` listing a few known ids when it is missing."""
    points = read_front(store)
    for point in points:
        if str(point.get("point_id")) == str(point_id):
            return point
    known = ", ".join(str(p.get("point_id")) for p in points[:8])
    more = f" (and {len(points) - 8} more)" if len(points) > 8 else ""
    raise JobError(f"job {store.job_id} has no point {point_id!r}; points: {known or 'none'}{more}")


def point_choices(point: dict) -> list[list[str]]:
    """Per-layer ``[attention, ffn]`` of a record (a list, or a JSON string as in the CSV)."""
    choices = point.get("choices")
    if isinstance(choices, str):
        choices = json.loads(choices)
    if not isinstance(choices, list) or not choices:
        raise JobError(f"point {point.get('point_id')!r} has no per-layer choices")
    return choices


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path`` so concurrent writers of the table take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_measured(job_dir: str | Path, point_id: str, measured: dict) -> dict:
    """Set the ``measured_*`` columns of one point in front.json and front.csv (atomic
    rewrite through ``nas.pareto.record_measurement``; concurrent callers take turns).

    Only the keys in ``MEASURED_COLUMNS`` and per-eval-set ``measured_*@SET`` keys are written. Returns the updated record; raises a
    ``UserError`` when the table or the point does not exist.
    """
    from nas.pareto import record_measurement

    path = front_path(job_dir)
    values = {
        k.removeprefix("measured_"): float(v)
        for k, v in measured.items()
        if k in MEASURED_COLUMNS or (k.startswith("measured_") and "@" in k)
    }
    with _locked(path):
        record_measurement(job_dir, str(point_id), **values)
        records = _records(json.loads(path.read_text()))
    return next(r for r in records if str(r.get("point_id")) == str(point_id))


# --- building and exporting a point -----------------------------------------------------------
def job_spec(store: JobStore) -> SearchSpec:
    return SearchSpec.model_validate(store.manifest()["spec"])


def job_splits(spec: SearchSpec, store: JobStore, parent):
    """The job's calibration splits (made and stored if the job has none yet)."""
    from nas.pipeline import prepare_data

    return prepare_data(spec, store, parent)


def build_point(store: JobStore, spec: SearchSpec, parent, point: dict, report: Report = print):
    """The point's student from the job's library, healed with GKD if the spec asks.

    Returns (student BlockModel, GKD record or None).
    """
    from compress.student import assemble_student, library_loader

    choices = point_choices(point)
    student = assemble_student(
        parent.adapter, choices, library_loader(store.path("library"), parent.adapter)
    ).eval()
    record = None
    if spec.export.gkd is not None:
        from compress.gkd import GKDSettings, heal_student

        g = spec.export.gkd
        splits = job_splits(spec, store, parent)
        settings = GKDSettings(
            tokens=g.tokens, batch_size=g.batch_size, lr=g.lr, hidden_weight=g.hidden_weight
        )
        student, record = heal_student(
            student, parent.adapter, splits.train, settings, splits.eval, report=report
        )
        report(
            f"[export] GKD: eval KL {record['eval_kl_before']:.4f} -> {record['eval_kl_after']:.4f}"
        )
    return student, record


def engine_shapes(spec: SearchSpec):
    """TensorRT profile shapes from the spec's hardware phases (defaults: batch 1, data seq)."""
    from compress.export_tensorrt import EngineShapes

    batch, seq, context = 1, spec.data.seq_len, spec.data.seq_len
    for phase in spec.hardware.phases:
        batch = max(batch, phase.batch)
        if phase.phase == "prefill" and phase.seq:
            seq = phase.seq
        if phase.phase == "decode" and phase.context:
            context = phase.context
    return EngineShapes(batch=batch, seq=seq, context=context)


def export_point(
    store: JobStore,
    point_id: str,
    fmt: str,
    out_dir: str | Path,
    precision: str | None = None,
    report: Report = print,
) -> dict:
    """Export one Pareto point of a job to ``out_dir``; returns a summary record.

    Raises ``JobError`` for an unknown format or point, ``LibraryError`` when a chosen
    variant is not in the library, ``TensorRTUnavailable`` without TensorRT (checked before
    any work), ``ExportError`` when the ONNX parity check fails.
    """
    if fmt not in FORMATS:
        raise JobError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    point = find_point(store, point_id)
    spec = job_spec(store)
    if precision is None:
        measure = spec.hardware.measure
        precision = measure.precision if measure is not None else "fp32"
    if fmt == "tensorrt":
        from compress.export_tensorrt import import_tensorrt

        import_tensorrt()
    from compress.loading import load_parent
    from nas.pipeline import _dtype

    out = Path(out_dir)
    parent = load_parent(spec.model.source, dtype=_dtype(spec.model.dtype))
    student, gkd = build_point(store, spec, parent, point, report)
    summary: dict = {"job": store.job_id, "point_id": str(point_id), "format": fmt}
    summary.update(export_student(store, spec, parent, student, point, fmt, out, precision, report))
    summary["gkd"] = gkd
    atomic_write_json(out / "point.json", {**summary, "point": point})
    summary["files"] = sorted(str(f) for f in out.iterdir() if f.is_file() and f.name[0] != ".")
    report(f"[export] point {point_id} of job {store.job_id} -> {out} ({fmt})")
    return summary


def measure_and_record(
    store: JobStore, point_id: str, student, parent_model, eval_tokens, latency_fn=None
) -> dict:
    """Measure a built student (``compress.measured.measure_point``) and write its columns."""
    from compress.measured import measure_point

    measured = measure_point(student, parent_model, eval_tokens, latency_fn)
    write_measured(store.dir, point_id, measured)
    return measured


def export_student(
    store: JobStore,
    spec: SearchSpec,
    parent,
    student,
    point: dict,
    fmt: str,
    out: Path,
    precision: str = "fp32",
    report: Report = print,
) -> dict:
    """Write one built student in one format to ``out``; returns what the export reported
    (``parity`` for ONNX, ``tensorrt`` for engines, nothing for ``hf``)."""
    summary: dict = {}
    if fmt == "hf":
        from compress.student import save_student

        save_student(
            student,
            out,
            point_choices(point),
            tokenizer=parent.tokenizer,
            parent_source=spec.model.source,
            hf_config=parent.hf_model.config.to_dict(),
        )
    else:
        prompt = job_splits(spec, store, parent).eval[:1, :32]
        if fmt == "onnx":
            from compress.export_onnx import export_onnx

            result = export_onnx(student, out, prompt_ids=prompt, exporter=spec.export.exporter)
            summary["parity"] = result.parity
            report(f"[export] ONNX parity: {result.parity['summary']}")
        else:
            from compress.export_tensorrt import export_tensorrt

            summary["tensorrt"] = export_tensorrt(
                student, out, engine_shapes(spec), precision, prompt_ids=prompt
            )
    return summary

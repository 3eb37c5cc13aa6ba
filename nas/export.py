"""Exporting a job's Pareto points and recording their measured columns.

``export_point`` reads the job's Pareto table (``<job>/pareto/front.json``: records with
``point_id`` and ``choices``, one ``[attention, ffn]`` pair per layer; ``parent`` names the
parent itself), assembles that student from the job's block library, heals it with GKD when
the spec asks (``export.gkd``), and writes it as ``onnx`` (one decoder graph, parity checked,
ready for onnxruntime-genai), ``tensorrt`` (engines built from prefill/decode graphs) or
``hf`` (a transformers folder). Every export lands in the job first
(``students/<id>/<format>``, or ``<format>-<precision>`` for a precision other than the
spec's) with a ``nas_export.json`` marker; an export the job already holds in that format
and precision is hard-linked (copied across file systems) to ``--out`` instead of redone.
``write_measured`` fills a point's ``measured_*`` columns in ``front.json`` and
``front.csv`` (through ``nas.pareto``).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from compress.atomic import atomic_write_json
from compress.errors import UserError
from nas.errors import JobError, NotFound
from nas.layout import JobLayout
from nas.pareto import MEASURED_COLUMNS
from nas.spec import SearchSpec
from nas.store import JobStore

FORMATS = ("onnx", "tensorrt", "hf")
PRECISIONS = ("fp32", "fp16", "bf16")
PARENT_POINT = "parent"
MARKER = "nas_export.json"
Report = Callable[[str], None]


# --- the Pareto table -------------------------------------------------------------------------
def find_point(store: JobStore, point_id: str) -> dict:
    """The record of ``point_id``; ``JobError`` listing a few known ids when it is missing."""
    points = store.front_records()
    for point in points:
        if str(point.get("point_id")) == str(point_id):
            return point
    known = ", ".join(str(p.get("point_id")) for p in points[:8])
    more = f" (and {len(points) - 8} more)" if len(points) > 8 else ""
    raise NotFound(f"job {store.job_id} has no point {point_id!r}; points: {known or 'none'}{more}")


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

    path = JobLayout(job_dir).front
    values = {
        k.removeprefix("measured_"): float(v)
        for k, v in measured.items()
        if k in MEASURED_COLUMNS or (k.startswith("measured_") and "@" in k)
    }
    with _locked(path):
        record_measurement(job_dir, str(point_id), **values)
        records = JobLayout(job_dir).front_records()
    return next(r for r in records if str(r.get("point_id")) == str(point_id))


# --- building and exporting a point -----------------------------------------------------------
def job_splits(spec: SearchSpec, store: JobStore, parent):
    """The job's calibration splits (made and stored if the job has none yet)."""
    from nas.baseline_stage import prepare_data

    return prepare_data(spec, store, parent)


def build_point(store: JobStore, spec: SearchSpec, parent, point: dict, report: Report = print):
    """The point's student from the job's library, refit and healed with GKD if the spec asks.

    ``export.refit`` runs first (``compress.refit``), then ``export.gkd`` trains the result;
    each is kept only when it does not raise the KL on the job's calibration eval split (a
    record's ``kept``), else undone. Returns (student
    BlockModel, record or None): ``{"refit": ..., "gkd": ...}`` for the steps that ran.
    """
    from compress.student import assemble_student, library_loader

    choices = point_choices(point)
    trains = spec.export.gkd is not None or spec.export.refit is not None
    student = assemble_student(
        parent.adapter,
        choices,
        library_loader(store.library, parent.adapter),
        share_parent=not trains,  # nothing changes its weights: the parent's, not a copy
    ).eval()
    if not trains:
        return student, None
    splits = job_splits(spec, store, parent)
    record = {}
    if spec.export.refit is not None:
        record["refit"] = _refit(student, parent.adapter, splits, spec.export.refit, report)
    if spec.export.gkd is not None:
        from compress.gkd import GKDSettings, heal_student

        g = spec.export.gkd
        settings = GKDSettings(
            tokens=g.tokens,
            batch_size=g.batch_size,
            lr=g.lr,
            hidden_weight=g.hidden_weight,
            train_embeddings=g.train_embeddings,
        )
        saved = {k: v.clone() for k, v in student.state_dict().items()}
        student, gkd = heal_student(
            student, parent.adapter, splits.train, settings, splits.eval, report=report
        )
        gkd["kept"] = gkd["eval_kl_after"] <= gkd["eval_kl_before"]
        if not gkd["kept"]:  # a student already close to the parent can be pushed away
            student.load_state_dict(saved)
        record["gkd"] = gkd
        report(
            f"[export] GKD: eval KL {gkd['eval_kl_before']:.4f} -> {gkd['eval_kl_after']:.4f}"
            + ("" if gkd["kept"] else " (worse: undone)")
        )
    return student, record


def _refit(student, parent, splits, section, report: Report) -> dict:
    """``compress.refit`` on the train split, undone when the eval split's KL got worse."""
    from compress.evaluate import ParentLogits, evaluate
    from compress.refit import RefitSettings, refit_student

    reference = ParentLogits(parent, splits.eval)
    before = evaluate(student, splits.eval, reference).kl
    saved = {k: v.clone() for k, v in student.state_dict().items()}
    settings = RefitSettings(
        tokens=section.tokens, ridge=section.ridge, batch_size=section.batch_size
    )
    record = refit_student(student, parent, splits.train, settings, report=report)
    after = evaluate(student, splits.eval, reference).kl
    record.update(eval_kl_before=before, eval_kl_after=after, kept=after <= before)
    if not record["kept"]:
        student.load_state_dict(saved)
    report(
        f"[export] refit: eval KL {before:.4f} -> {after:.4f}"
        + ("" if record["kept"] else " (worse: undone)")
    )
    return record


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


def parent_point(num_layers: int) -> dict:
    """The pseudo point ``parent``: every layer keeps the parent's attention and FFN."""
    return {"point_id": PARENT_POINT, "choices": [["attention:parent", "ffn:parent"]] * num_layers}


def default_precision(spec: SearchSpec) -> str:
    if spec.export.precision is not None:
        return spec.export.precision
    return spec.hardware.measure.precision if spec.hardware.measure is not None else "fp32"


def job_export_dir(store: JobStore, spec: SearchSpec, point_id: str, fmt: str, precision: str):
    """Where the job keeps ``point_id`` exported in ``fmt`` and ``precision``."""
    name = fmt if precision == default_precision(spec) else f"{fmt}-{precision}"
    return store.export(point_id, name)


def held_export(folder: Path, fmt: str, precision: str, choices) -> bool:
    """Whether ``folder`` holds a finished export of these choices in ``fmt`` and ``precision``."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same = marker.get("format") == fmt and marker.get("precision") == precision
    return same and marker.get("choices") == choices


def place(src: Path, out: Path) -> str:
    """Put the files of ``src`` into ``out``: ``linked`` (hard links, same file system),
    ``copied``, or ``in place`` when they are the same folder."""
    import os
    import shutil

    if out.exists() and out.resolve() == src.resolve():
        return "in place"
    out.mkdir(parents=True, exist_ok=True)
    mode = "linked"
    for path in sorted(src.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        target = out / path.name
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
            mode = "copied"
    return mode


def export_point(
    store: JobStore,
    point_id: str,
    fmt: str,
    out_dir: str | Path,
    precision: str | None = None,
    report: Report = print,
) -> dict:
    """Export one Pareto point (or ``parent``) of a job to ``out_dir``; returns a summary.

    Reuses the job's export of the point in that format and precision when it has one
    (``summary["reused"]``: ``linked`` / ``copied`` / ``in place``; ``None`` when exported
    now). Raises ``JobError`` for an unknown format, precision or point, ``LibraryError``
    when a chosen variant is not in the library, ``TensorRTUnavailable`` without TensorRT
    (checked before any work), ``ExportError`` when a parity check fails.
    """
    import time

    if fmt not in FORMATS:
        raise JobError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    spec = store.spec()
    precision = precision or default_precision(spec)
    if precision not in PRECISIONS:
        raise JobError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if str(point_id) != PARENT_POINT:
        point = find_point(store, point_id)
        choices = point_choices(point)
    else:
        point, choices = None, None  # the parent's layer count comes with the parent
    out = _writable_folder(Path(out_dir))
    folder = job_export_dir(store, spec, point_id, fmt, precision)
    summary: dict = {"job": store.job_id, "point_id": str(point_id), "format": fmt}
    summary["precision"] = precision
    marker = json.loads((folder / MARKER).read_text()) if (folder / MARKER).is_file() else {}
    if held_export(folder, fmt, precision, choices or marker.get("choices")):
        summary.update(marker.get("summary", {}), reused=place(folder, out))
        report(f"[export] reused the job's {folder} ({summary['reused']})")
    else:
        if fmt == "tensorrt":
            from compress.export_tensorrt import import_tensorrt

            import_tensorrt()
        from nas.baseline_stage import load_job_parent

        parent = load_job_parent(spec)
        if point is None:
            point = parent_point(parent.shape.num_layers)
            student, healing = parent.adapter, None
        else:
            student, healing = build_point(store, spec, parent, point, report)
        for stale in folder.glob("*") if folder.is_dir() else []:  # an older, unmarked export
            if stale.is_file():
                stale.unlink()
        done = export_student(store, spec, parent, student, point, fmt, folder, precision, report)
        summary.update(done, healing=healing, reused=None)
        place(folder, out)
    summary["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "point.json", {**summary, "point": point or marker.get("point")})
    summary["files"] = sorted(str(f) for f in out.iterdir() if f.is_file() and f.name[0] != ".")
    report(f"[export] point {point_id} of job {store.job_id} -> {out} ({fmt}, {precision})")
    return summary


def _writable_folder(out: Path) -> Path:
    """``out`` as an existing writable folder; ``JobError`` (one line) when it cannot be."""
    if out.exists() and not out.is_dir():
        raise JobError(f"export folder {out} exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create the export folder {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise JobError(f"cannot write to the export folder {out}: permission denied")
    return out


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
    """Write one built student in one format and precision to ``out`` (parity checked) and
    mark it finished (``nas_export.json``); returns what the export reported."""
    import copy

    from compress.export.hf import precision_dtype

    (out / MARKER).unlink(missing_ok=True)
    summary: dict = {}
    prompt = job_splits(spec, store, parent).eval[:1, :32]
    parent_config = parent.hf_model.config.to_dict()
    choices = point_choices(point)
    if fmt == "hf":
        from compress.export.hf import export_hf

        summary["hf"] = export_hf(
            student, out, choices, parent.tokenizer, parent_config, spec.model.source,
            precision, prompt_ids=prompt, release=parent.release,
        )  # fmt: skip
        report(f"[export] transformers parity: {summary['hf']['parity']['summary']}")
    elif fmt == "onnx":
        from compress.export.genai import genai_parity, import_genai, write_genai_files
        from compress.export_onnx import ExportError, export_onnx

        dtype = precision_dtype(precision)
        same = student.norm.weight.dtype == dtype
        model = student if same else copy.deepcopy(student).to(dtype)
        result = export_onnx(model, out, prompt_ids=prompt, exporter=spec.export.exporter)
        summary["parity"] = result.parity
        report(f"[export] ONNX parity: {result.parity['summary']}")
        try:
            write_genai_files(model, out, parent.tokenizer, parent_config)
            import_genai()
        except UserError as exc:
            report(f"[export] onnxruntime-genai check skipped: {exc}")
        else:
            summary["genai"] = genai_parity(model, out, prompt)
            if not summary["genai"]["passed"]:
                raise ExportError(f"onnxruntime-genai greedy tokens differ in {out}")
            report("[export] onnxruntime-genai: 32 greedy tokens equal")
    else:
        from compress.export_tensorrt import export_tensorrt

        summary["tensorrt"] = export_tensorrt(
            student, out, engine_shapes(spec), precision, prompt_ids=prompt
        )
    marker = {"format": fmt, "precision": precision, "point_id": str(point["point_id"])}
    marker.update(choices=choices, point=point, summary=summary)
    atomic_write_json(out / MARKER, marker)
    return summary

"""The students stage: every front point becomes a real student, measured and exported.

For each point (resumable: a point whose ``students/<id>/measured.json`` exists is skipped):
assemble it from the library (healed by GKD when the spec has ``export.gkd``), measure its
whole-model latency with the primary profile's backend and settings and its quality on the
eval split (KL to the parent, LM loss, perplexity), write those into the Pareto table's
measured columns, and export it in the spec's formats under ``students/<id>/``.
"""

from __future__ import annotations

import json
import time

from compress.atomic import atomic_write_json
from nas.spec import SearchSpec
from nas.stage_io import Prepared, Report, Selection, Students
from nas.store import JobStore


def stage_students(
    spec: SearchSpec,
    store: JobStore,
    prepared: Prepared,
    selection: Selection,
    report: Report = print,
) -> Students:
    """Build, measure (with ``selection``'s primary profile) and export every front point."""
    if store.stage_done("students"):
        rec = store.read_stage("students")
        report(f"[students] done before: {rec['measured']} points measured")
        return Students(rec["measured"], rec["exported"])
    from compress.evaluate import evaluate
    from compress.measured import profile_latency_fn
    from compress.progress import track
    from nas.export import build_point, measure_and_record, write_measured
    from nas.pareto import read_front

    t0 = time.perf_counter()
    parent = prepared.parent
    if spec.export.points == "none":
        store.write_stage("students", {"measured": 0, "exported": {}, "wall_s": 0.0})
        return Students(0, {})
    if "tensorrt" in spec.export.formats:
        from compress.export_tensorrt import import_tensorrt

        import_tensorrt()  # fail before any work when TensorRT is missing
    profile = selection.primary_profile
    latency_fn = profile_latency_fn(profile) if spec.export.measure else None
    if latency_fn is not None and spec.ray.latency_resource:
        latency_fn = _pinned(latency_fn, spec)
    eval_tokens = prepared.splits.eval
    if spec.export.eval_tokens is not None:
        eval_tokens = eval_tokens[: max(1, spec.export.eval_tokens // prepared.splits.seq_len)]
    front = read_front(store.dir)
    exported: dict = {}
    parent_file = store.parent_measured
    if latency_fn is not None and not parent_file.exists():
        lat = latency_fn(parent.adapter)
        # the parent against itself: one pass per batch, KL exactly 0
        q = evaluate(parent.adapter, eval_tokens, parent.adapter, spec.scoring.batch_size)
        per_set = _eval_set_quality(spec, prepared, parent.adapter)
        atomic_write_json(parent_file, {"measured_latency": lat, **q.to_dict(), **per_set})
        report(
            f"[students] parent: {lat['median_ms']:.2f} ms ({profile.describe()})"
            + _describe_sets(per_set)
        )
    if parent_file.exists():
        _record_parent(store, json.loads(parent_file.read_text()))
    for i, point in enumerate(track(front.to_dict("records"), "[students] points")):
        pid = point["point_id"]
        folder, marker = store.student(pid), store.measured(pid)
        if marker.exists():
            exported[pid] = json.loads(marker.read_text()).get("formats", [])
            continue
        student, healing = build_point(store, spec, parent, point, report)
        measured = {}
        if latency_fn is not None:
            measured = measure_and_record(
                store, pid, student, parent.adapter, eval_tokens, latency_fn
            )
            per_set = _eval_set_quality(spec, prepared, student)
            if per_set:
                write_measured(store.dir, pid, per_set)
                measured.update(per_set)
            report(
                f"[students] {pid} ({i + 1}/{len(front)}): {measured['measured_latency_ms']:.2f} ms, "
                f"KL {measured['measured_kl']:.4f}, perplexity {measured['measured_perplexity']:.3f}"
                + _describe_sets(per_set)
            )
        formats = _export(spec, store, student, parent, point, folder, report)
        exported[pid] = formats
        atomic_write_json(
            marker, {"point_id": pid, "healing": healing, "formats": formats, **measured}
        )
        store.set_progress("students", i + 1, len(front))
    record = {
        "measured": len(front) if latency_fn is not None else 0,
        "exported": exported,
        "profile": profile.describe(),
        "wall_s": time.perf_counter() - t0,
    }
    store.write_stage("students", record)
    report(
        f"[students] {len(front)} points built, measured and exported in {record['wall_s']:.1f}s"
    )
    return Students(record["measured"], exported)


def _eval_set_quality(spec: SearchSpec, prepared: Prepared, model) -> dict:
    """``measured_{perplexity,kl,lm_loss}@SET`` of ``model`` on each of the spec's eval sets."""
    from compress.evaluate import evaluate
    from nas.eval_sets import measured_set_values

    out: dict = {}
    for name, tokens in prepared.eval_sets.items():
        q = evaluate(model, tokens, prepared.parent.adapter, spec.scoring.batch_size)
        out.update(measured_set_values(name, q.to_dict()))
    return out


def _describe_sets(per_set: dict) -> str:
    return "".join(
        f"; {k.removeprefix('measured_perplexity@')}: perplexity {v:.3f}"
        for k, v in per_set.items()
        if k.startswith("measured_perplexity@")
    )


def _record_parent(store: JobStore, measured: dict) -> None:
    """The parent's measured columns into the front's meta (``meta["parent"]``)."""
    from nas.pareto import read_meta, rewrite_meta

    columns = {
        "measured_latency_ms": measured["measured_latency"]["median_ms"],
        "measured_kl": measured["kl"],
        "measured_lm_loss": measured["lm_loss"],
        "measured_perplexity": measured["perplexity"],
    } | {k: v for k, v in measured.items() if k.startswith("measured_") and "@" in k}
    rewrite_meta(store.dir, parent=read_meta(store.dir)["parent"] | columns)


def _export(spec: SearchSpec, store, student, parent, point, folder, report) -> list[str]:
    from nas.export import default_precision, export_student

    precision = default_precision(spec)
    for fmt in spec.export.formats:
        export_student(store, spec, parent, student, point, fmt, folder / fmt, precision, report)
    return list(spec.export.formats)


def _pinned(latency_fn, spec: SearchSpec):
    """Run ``latency_fn`` as a Ray task on a node advertising ``spec.ray.latency_resource``
    (e.g. ``hw:h100``), so latency is measured on the target hardware, not on the driver."""
    import ray

    from nas.ray_runtime import ensure_ray, task_options

    ensure_ray(spec.ray)
    remote = ray.remote(**task_options(num_cpus=1, resource=spec.ray.latency_resource))(_call)

    def measure(model):
        return ray.get(remote.remote(latency_fn, model))

    return measure


def _call(fn, *args):
    return fn(*args)

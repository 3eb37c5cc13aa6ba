"""The library API the CLI and the HTTP service call: one function per user action."""

from __future__ import annotations

from pathlib import Path

from nas.pipeline import run_job
from nas.spec import SearchSpec, load_spec
from nas.store import DEFAULT_RESULTS, JobStore, list_jobs, new_job_id


def validate(spec_path: str | Path) -> SearchSpec:
    """Load and check a spec, including that its eval sets share no document with its
    calibration sources (reads the text sources); raises ``SpecError`` or ``DataError``."""
    from nas.pipeline import check_eval_sets

    spec = load_spec(spec_path)
    check_eval_sets(spec)
    return spec


def results_root(spec: SearchSpec | None, results: str | Path | None) -> Path:
    """``--results`` wins, then the spec's ``ray.storage``, then ``./results``."""
    if results is not None:
        return Path(results)
    if spec is not None and spec.ray.storage:
        return Path(spec.ray.storage)
    return DEFAULT_RESULTS


def run(
    spec_path: str | Path,
    job_id: str | None = None,
    results: str | Path | None = None,
    report=print,
    until: str | None = None,
) -> JobStore:
    """Create a job from a spec file and run its pipeline; returns the job's store."""
    spec = load_spec(spec_path)
    store = JobStore.create(
        results_root(spec, results),
        job_id or new_job_id(spec.name),
        spec.model_dump(mode="json"),
        str(Path(spec_path).resolve()),
    )
    report(f"job {store.job_id} -> {store.dir}")
    run_job(spec, store, report, until=until)
    return store


def resume(
    job_id: str, results: str | Path | None = None, report=print, until: str | None = None
) -> JobStore:
    """Finish an existing job: stages and items already recorded are not redone."""
    store = JobStore.open(results_root(None, results), job_id)
    spec = SearchSpec.model_validate(store.manifest()["spec"])
    report(
        f"resuming job {store.job_id} ({', '.join(store.manifest()['stages_done']) or 'no stage'} done)"
    )
    run_job(spec, store, report, until=until)
    return store


def jobs(results: str | Path | None = None) -> list[dict]:
    return list_jobs(results_root(None, results))


def submit(
    spec_path: str | Path,
    address: str,
    job_id: str | None = None,
    results: str | Path | None = None,
) -> str:
    """Submit a spec to a Ray cluster; results land in ``--results``/``ray.storage``."""
    from nas import cluster

    spec = load_spec(spec_path)
    root = results_root(spec, results)
    return cluster.submit(spec, address, job_id or new_job_id(spec.name), Path(root))


def wait(address: str, job_id: str, timeout_s: float = 3600) -> str:
    from nas import cluster

    return cluster.wait(address, job_id, timeout_s)


def status(job_id: str, results: str | Path | None = None, address: str | None = None) -> dict:
    """The store's view of a job (stage, items done) plus the Ray state when ``address`` is given."""
    from nas import cluster

    info = cluster.progress(JobStore.open(results_root(None, results), job_id))
    if address:
        info["ray"] = cluster.ray_status(address, job_id)
    return info


def export_point(
    job_id: str,
    point_id: str,
    fmt: str,
    out_dir: str | Path,
    results: str | Path | None = None,
    precision: str | None = None,
    report=print,
) -> list[str]:
    """Export one Pareto point of a job as ``onnx``, ``tensorrt`` or ``hf`` into ``out_dir``;
    returns the files written. Raises ``JobError`` for a missing job or point."""
    from nas.export import export_point as _export

    store = JobStore.open(results_root(None, results), job_id)
    return _export(store, point_id, fmt, out_dir, precision=precision, report=report)["files"]


def pareto(
    job_id: str,
    results: str | Path | None = None,
    max_latency_ms: float | None = None,
    max_memory_mib: float | None = None,
):
    """The job's Pareto front as a ``pandas.DataFrame`` within the limits, sorted by latency.

    Raises ``FrontMissing`` before selection ran and ``NoPointFits`` (naming the smallest
    achievable value) when the limits exclude every point."""
    from nas.pareto import query_front

    store = JobStore.open(results_root(None, results), job_id)
    return query_front(store.dir, max_latency_ms=max_latency_ms, max_memory_mib=max_memory_mib)


def plot_pareto(job_id: str, path: str | Path, results: str | Path | None = None) -> Path:
    """Write the job's latency-vs-quality plot (``.png`` or ``.html``); returns the path."""
    from nas.pareto import plot_front

    store = JobStore.open(results_root(None, results), job_id)
    return plot_front(store.dir, path)


def profile(
    model: str,
    backend: str,
    phase: str,
    batch: int,
    seq: int,
    out: str | Path,
    context: int = 512,
    variants: list[str] | None = None,
    space: str | Path | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    students: int = 8,
    seed: int = 0,
    stack: int = 8,
    repeats: int | None = None,
    report=print,
    min_block_ms: float = 50.0,
):
    """Measure a hardware profile of ``model``'s shape and write it to ``out``.

    Variants: ``variants`` (canonical strings), else the space of the spec file ``space``, else
    ``compress.profile_cli.default_variants``. Raises ``UserError`` subclasses for bad input."""
    from compress.profile_cli import measure_profile_file

    spec_space = load_spec(space).space if space is not None else None
    return measure_profile_file(
        model,
        backend,
        phase,
        batch,
        seq,
        out,
        context,
        variants,
        spec_space,
        threads,
        precision,
        students,
        seed,
        stack,
        repeats,
        report,
        min_block_ms,
    )


def validate_profile(path: str | Path, students: int = 8, seed: int = 0, report=print):
    """Re-measure a profile's random students (with its entries, interleaved); store the MAPE."""
    from compress.profile_cli import validate_profile_file

    return validate_profile_file(path, students, seed, report)

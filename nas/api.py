"""The library API the CLI and the HTTP service call: one function per user action."""

from __future__ import annotations

from pathlib import Path

from nas.pipeline import run_job
from nas.spec import SearchSpec, load_spec
from nas.store import DEFAULT_RESULTS, JobStore, list_jobs, new_job_id


def validate(spec_path: str | Path) -> SearchSpec:
    """Load and check a spec; raises ``SpecError``."""
    return load_spec(spec_path)


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


def submit(spec_path: str | Path, address: str, job_id: str | None = None, results: str | Path | None = None) -> str:
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

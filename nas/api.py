"""The library API the CLI and the HTTP service call: one function per user action."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nas.pipeline import run_job
from nas.spec import SearchSpec, load_spec
from nas.storage import is_uri
from nas.store import DEFAULT_RESULTS, JobStore, list_jobs, new_job_id

if TYPE_CHECKING:
    from compress.profile import HardwareProfile
    from compress.profile_cli import ProfileRequest


def validate(spec_path: str | Path) -> SearchSpec:
    """Load and check a spec, including that its eval sets share no document with its
    calibration sources (reads the text sources); raises ``SpecError`` or ``DataError``."""
    from nas.baseline_stage import check_eval_sets

    spec = load_spec(spec_path)
    check_eval_sets(spec)
    return spec


def init_folder(folder: str | Path, force: bool = False) -> list[Path]:
    """Write the shipped specs and profiles into ``folder`` (see ``nas.shipped``)."""
    from nas.shipped import init_folder as write_shipped

    return write_shipped(folder, force)


def results_root(spec: SearchSpec | None, results: str | Path | None) -> str | Path:
    """``--results`` wins, then the spec's ``ray.storage``, then ``./results``; a URI
    (``s3://bucket/prefix``, ``gs://``, ``file://``) stays a string (``nas.storage``)."""
    root = results if results is not None else (spec.ray.storage if spec is not None else None)
    if root is None or root == "":
        return DEFAULT_RESULTS
    return str(root) if is_uri(str(root)) else Path(root)


def open_job(job_id: str, results: str | Path | None, pull: str = "results") -> JobStore:
    """An existing job by id (in ``results``) or by URI (``s3://bucket/prefix/JOB``: the
    last part is the id, the rest the results root); ``NotFound`` when there is none."""
    if is_uri(job_id):
        root, _, job_id = job_id.rstrip("/").rpartition("/")
        return JobStore.open(root, job_id, pull)
    return JobStore.open(results_root(None, results), job_id, pull)


def run(
    spec_path: str | Path,
    job_id: str | None = None,
    results: str | Path | None = None,
    report=print,
    until: str | None = None,
) -> JobStore:
    """Create a job from a spec file and run its pipeline; returns the job's store."""
    spec = load_spec(spec_path)
    store = create_job(spec, job_id, results_root(spec, results), Path(spec_path).resolve())
    report(f"job {store.job_id} -> {store.location(store.dir)}")
    run_job(spec, store, report, until=until)
    return store


def create_job(
    spec: SearchSpec,
    job_id: str | None,
    results: str | Path,
    spec_path: str | Path | None = None,
    state: str = "created",
) -> JobStore:
    """A new job folder for ``spec`` under ``results`` (id: ``job_id`` or a fresh one);
    ``JobBusy`` when the id is taken."""
    job_id = job_id or new_job_id(spec.name)
    path = str(spec_path) if spec_path is not None else None
    return JobStore.create(results, job_id, spec.model_dump(mode="json"), path, state)


def resume(
    job_id: str, results: str | Path | None = None, report=print, until: str | None = None
) -> JobStore:
    """Finish an existing job: stages and items already recorded are not redone."""
    store = open_job(job_id, results, pull="all")
    spec = store.spec()
    done = [str(s) for s in store.manifest().get("stages_done", [])]
    report(f"resuming job {store.job_id} ({', '.join(done) or 'no stage'} done)")
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
    return cluster.submit(spec, address, job_id or new_job_id(spec.name), root)


def wait(address: str, job_id: str, timeout_s: float = 3600) -> str:
    from nas import cluster

    return cluster.wait(address, job_id, timeout_s)


def status(job_id: str, results: str | Path | None = None, address: str | None = None) -> dict:
    """The store's view of a job (stage, items done) plus the Ray state when ``address`` is given."""
    from nas import cluster

    info = cluster.progress(open_job(job_id, results, pull="records"))
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
) -> dict:
    """Export one Pareto point (or ``parent``) of a job as ``onnx``, ``tensorrt`` or ``hf``
    into ``out_dir``; returns ``nas.export.export_point``'s summary (``files``, ``reused``,
    ``seconds``, parity records). Raises ``JobError`` for a missing job or point."""
    from nas.export import export_point as _export

    store = open_job(job_id, results)
    summary = _export(store, point_id, fmt, out_dir, precision=precision, report=report)
    store.push()  # a job on object storage keeps the export too
    return summary


def point(job_id: str, point_id: str, results: str | Path | None = None) -> dict:
    """The record of one point of a job's front; ``NotFound`` naming known ids when missing."""
    from nas.export import find_point

    return find_point(open_job(job_id, results, pull="records"), point_id)


def clean(job_id: str, results: str | Path | None = None) -> dict:
    """Remove a finished job's intermediates; returns bytes before/after/freed and what went.
    Raises ``JobError`` while the job is not finished."""
    from nas.clean import clean_job

    return clean_job(open_job(job_id, results))


def pareto(
    job_id: str,
    results: str | Path | None = None,
    max_latency_ms: float | None = None,
    max_memory_mib: float | None = None,
):
    """The job's Pareto front as a ``pandas.DataFrame`` within the limits, sorted by latency.

    Raises ``FrontMissing`` before selection ran and ``NoPointFits`` (naming the smallest
    achievable value) when the limits exclude every point."""
    from nas.downstream import join_eval
    from nas.pareto import query_front

    store = open_job(job_id, results, pull="records")
    front = query_front(store.dir, max_latency_ms=max_latency_ms, max_memory_mib=max_memory_mib)
    return join_eval(store.dir, front)


def evaluate(
    job_id: str,
    points: list[str] | None = None,
    tasks: list[str] | None = None,
    limit: int | None = None,
    results: str | Path | None = None,
    batch_size: int = 8,
    report=print,
) -> dict[str, dict]:
    """Downstream accuracy with lm-eval for the parent (``"parent"``) and front points (default:
    all of them) on ``tasks`` (default: the local ``nas_next_word``); records are stored under
    ``<job>/eval/`` and joined by ``pareto``. Returns ``{point: record}`` (``nas.downstream``)."""
    from nas.downstream import evaluate_points

    store = open_job(job_id, results)
    records = evaluate_points(store, points, tasks, limit, batch_size, report)
    store.push()
    return records


def plot_pareto(
    job_id: str,
    path: str | Path,
    results: str | Path | None = None,
    quality: list[str] | None = None,
) -> Path:
    """Write the job's latency-vs-quality plot (``.png`` or ``.html``); returns the path.
    ``quality``: eval sets (``SET`` or ``SET:kl``) to plot against measured latency (default:
    all of the job's)."""
    from nas.pareto_plot import plot_job

    store = open_job(job_id, results, pull="records")
    return plot_job(store.dir, Path(path), quality)


def spec_space(spec_path: str | Path) -> tuple[list, list]:
    """The (attention, FFN) entries of a spec file's ``space`` (for ``ProfileRequest.space``)."""
    space = load_spec(spec_path).space
    return list(space.attention), list(space.ffn)


def profile(request: ProfileRequest, report=print) -> HardwareProfile:
    """Measure the hardware profile a ``compress.profile_cli.ProfileRequest`` describes and
    write it to ``request.out``; returns it. Raises ``UserError`` subclasses for bad input."""
    from compress.profile_cli import measure_profile_file

    return measure_profile_file(request, report)


def validate_profile(path: str | Path, students: int = 8, seed: int = 0, report=print):
    """Re-measure a profile's random students (with its entries, interleaved); store the MAPE."""
    from compress.profile_cli import validate_profile_file

    return validate_profile_file(path, students, seed, report)


def select_library(
    library: str | Path,
    budgets: list[str] = (),
    sweep: str | None = None,
    *,
    relative: bool = False,
    score: str = "kl",
    blocks: str = "auto",
    solutions: int = 1,
    diversity: int = 1,
    solver: str = "highs",
    time_limit_s: float = 10.0,
    batch: int = 1,
    prefill_tokens: int = 1,
    decode_steps: int = 1,
    fix: list[str] = (),
    forbid: list[str] = (),
):
    """The Pareto front of a block library file (CSV, JSON or Parquet; format in
    ``nas.selection.block_library``) under bounds, with no model and no torch.

    ``budgets``: bounds held together in every solve (``"memory_mib<=80000"``, ``>=`` for a
    lower bound); ``sweep``: one more bound swept over values (``"decode_latency_ms<=40,50,60"``);
    values are ratios of the parent's with ``relative``. ``fix`` / ``forbid``: ``LAYER/VARIANT``
    (``forbid`` also takes a bare ``VARIANT`` for every layer). ``batch``, ``prefill_tokens``
    (per prefill run, all sequences) and ``decode_steps`` (tokens per sequence one decode runtime
    covers) convert throughputs. Returns a ``FrontResult`` (``.front``, ``.meta``). Raises
    ``SelectionError`` (one line) for a bad file or bound, ``InfeasibleBudget`` naming the
    binding bound and its best achievable value when nothing fits.
    """
    from nas.pareto import Bound, Target, select_front
    from nas.selection.block_library import read_library
    from nas.selection.costs import Workload, parse_bound
    from nas.selection.errors import SelectionError
    from nas.selection_stage import _forbidden

    problem = read_library(library, score=score, blocks=blocks)
    fixed: dict[int, list[str]] = {}
    for text in fix:
        layer, variant = _forbidden(text)
        if layer is None:
            raise SelectionError(f"--fix takes LAYER/VARIANT, got {text!r}")
        fixed.setdefault(layer, []).append(variant)
    problem = problem.restrict(fixed, [_forbidden(f) for f in forbid])
    held = tuple(Bound.parse(b, relative) for b in budgets)
    if sweep is not None:
        metric, bound, _ = parse_bound(sweep.split(",")[0])
        try:
            values = [float(v) for v in sweep.split("=", 1)[1].split(",")]
        except ValueError:
            raise SelectionError(f"--sweep reads METRIC<=V1,V2,..., got {sweep!r}") from None
        target = Target(metric, tuple(values), relative, held, bound)
    elif held:
        target = Target(bounds=held)
    else:
        raise SelectionError("give at least one --budget METRIC<=VALUE or a --sweep")
    return select_front(
        problem,
        [target],
        baselines=(),
        solutions_per_budget=solutions,
        diversity_layers=diversity,
        time_limit_s=time_limit_s,
        solver=solver,
        workload=Workload(batch, prefill_tokens, decode_steps),
        on_infeasible="record",
    )

"""Regenerate every benchmark table with one command, then write results/bench/SUMMARY.md.

    python bench/run_all.py [--job JOB] [--quality-job JOB] [--results DIR] [--only NAME ...]
                            [--quick] [--list] [--keep-going]

Runs each bench script in sequence as a subprocess (its table printed as it goes), in the order
below. Scripts that need a finished quickstart job (``smollm2-135m``) get ``--job``; without
``--job`` the job ``bench-quickstart`` is used, run first with
``nas run search_spaces/quickstart.yaml --job-id bench-quickstart`` (or resumed) when it is not
finished. ``healed_front`` times the GKD-healed students of a finished job of
``search_spaces/quality.yaml`` (about 50 minutes on 2 cores, so never started from here): it runs
with ``--quality-job JOB`` and is skipped otherwise. ``--quick`` passes each script's quick arguments (e.g. ``profile_mape --report-only``,
DisWOT on stories260K only). Scripts marked GPU-only are skipped when torch sees no CUDA device.
Finally every ``results/bench/*.md`` (except SUMMARY.md) is concatenated, in the order of the
scripts that wrote them, into ``results/bench/SUMMARY.md``, which is printed.

Exit code: 0 when every selected script succeeded, 1 otherwise (the summary is still written),
2 for bad arguments (unknown names, a job that does not exist or cannot be finished).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # nas.layout when run as a script
OUT = ROOT / "results" / "bench"
DEFAULT_JOB = "bench-quickstart"
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


@dataclass(frozen=True)
class Bench:
    """One bench script: ``args`` by default, ``quick`` with --quick; ``job``: it takes the
    quickstart job; ``outputs``: the Markdown tables it writes (for the summary's order)."""

    name: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None
    job: str = ""  # "": no job; "job": --job JOB --results DIR; "point": also --point;
    # "quality": --job QUALITY_JOB --results DIR
    gpu: bool = False
    outputs: tuple[str, ...] = field(default_factory=tuple)


BENCHES: tuple[Bench, ...] = (
    Bench("mip_speed", quick=("--solvers", "highs"), outputs=("mip_speed_80x16",)),
    Bench("profile_mape", quick=("--report-only",), outputs=("profile_mape",)),
    Bench("diswot", quick=("--models", "stories260K"), outputs=("diswot",)),
    Bench("bld", outputs=("bld",)),
    Bench("service_latency", job="job", outputs=("service_latency",)),
    Bench("export_speed", job="point", outputs=("export_speed",)),
    Bench("baselines", job="job", outputs=("baselines", "baselines_domination")),
    Bench("healed_front", job="quality", outputs=("healed_front",)),
)
NAMES = tuple(b.name for b in BENCHES)


def say(message: str) -> None:
    print(message, flush=True)


def job_state(results: Path, job: str) -> str | None:
    from nas.layout import JobLayout

    layout = JobLayout(results / job)
    if not layout.manifest_path.exists():
        return None
    return layout.manifest().get("state")


def ensure_job(results: Path, job: str | None) -> str:
    """The finished quickstart job to benchmark: ``job`` if given (must be finished), else
    ``bench-quickstart``, run (or resumed) now when it is not finished."""
    if job is not None:
        state = job_state(results, job)
        if state != "finished":
            raise SystemExit(f"error: job {job} in {results} is {state or 'missing'}, not finished")
        return job
    state = job_state(results, DEFAULT_JOB)
    if state == "finished":
        return DEFAULT_JOB
    nas = [sys.executable, "-m", "nas.cli"]
    if state is None:
        cmd = [*nas, "run", str(QUICKSTART), "--job-id", DEFAULT_JOB, "--results", str(results)]
    else:
        cmd = [*nas, "resume", DEFAULT_JOB, "--results", str(results)]
    say(f"[run_all] {' '.join(cmd[2:])}")
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise SystemExit(f"error: the quickstart job {DEFAULT_JOB} failed; see its output above")
    return DEFAULT_JOB


def half_latency_point(results: Path, job: str) -> str:
    """The front point whose predicted primary latency is closest to half the parent's."""
    from nas.layout import JobLayout

    layout = JobLayout(results / job)
    meta = json.loads(layout.front_meta.read_text())
    column = meta["primary_column"]
    goal = 0.5 * meta["parent"][column]
    front = layout.front_records()
    return min(front, key=lambda p: abs(p[column] - goal))["point_id"]


def has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def command(
    bench: Bench, quick: bool, job: str | None, results: Path, quality_job: str | None = None
) -> list[str]:
    args = list(bench.quick if quick and bench.quick is not None else bench.args)
    if bench.job == "quality":
        args += ["--job", str(quality_job), "--results", str(results)]
    elif bench.job and job is not None:
        args += ["--job", job, "--results", str(results)]
        if bench.job == "point":
            args += ["--point", half_latency_point(results, job)]
    return [sys.executable, str(ROOT / "bench" / f"{bench.name}.py"), *args]


def summary(ran: list[Bench], status: dict[str, str]) -> str:
    """SUMMARY.md: a status line per script, then every table, the selected scripts' first."""
    lines = ["# Benchmark summary", "", "| script | status |", "|:--|:--|"]
    lines += [f"| {name} | {state} |" for name, state in status.items()]
    lines.append("")
    order = [o for b in ran for o in b.outputs] + [o for b in BENCHES for o in b.outputs]
    seen: set[str] = set()
    tables = [OUT / f"{name}.md" for name in order if not (name in seen or seen.add(name))]
    tables += sorted(p for p in OUT.glob("*.md") if p not in tables and p.name != "SUMMARY.md")
    for path in tables:
        if path.exists():
            lines += [f"<!-- {path.name} -->", path.read_text().rstrip(), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", help="a finished quickstart job (default: bench-quickstart)")
    parser.add_argument(
        "--quality-job", help="a finished job of quality.yaml, for healed_front (else skipped)"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"subset of: {' '.join(NAMES)}")
    parser.add_argument("--quick", action="store_true", help="each script's quick arguments")
    parser.add_argument("--list", action="store_true", help="print the scripts and exit")
    parser.add_argument("--keep-going", action="store_true", help="continue after a failure")
    args = parser.parse_args(argv)
    if args.list:
        for b in BENCHES:
            needs = {"quality": "needs --quality-job "}.get(b.job, "needs a job " if b.job else "")
            say(f"{b.name:16s} {needs}{'GPU only' if b.gpu else ''}")
        return 0
    only = [n.removesuffix(".py") for n in args.only or NAMES]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        print(
            f"error: unknown bench {', '.join(unknown)}; known: {' '.join(NAMES)}", file=sys.stderr
        )
        return 2
    selected = [b for b in BENCHES if b.name in only]
    cuda = has_cuda() if any(b.gpu for b in selected) else False
    job = None
    if any(b.job and b.job != "quality" for b in selected):
        try:
            job = ensure_job(args.results, args.job)
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 2
    status: dict[str, str] = {}
    ran: list[Bench] = []
    failed = False
    for bench in selected:
        if bench.gpu and not cuda:
            status[bench.name] = "skipped (GPU only, no CUDA device)"
            say(f"[run_all] {bench.name}: skipped, GPU only")
            continue
        if bench.job == "quality" and not args.quality_job:
            status[bench.name] = "skipped (needs --quality-job, a finished job of quality.yaml)"
            say(f"[run_all] {bench.name}: skipped, no --quality-job")
            continue
        cmd = command(bench, args.quick, job, args.results, args.quality_job)
        say(f"[run_all] {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT).returncode
        wall = time.perf_counter() - t0
        status[bench.name] = f"ok ({wall:.0f}s)" if code == 0 else f"failed (exit {code})"
        ran.append(bench)
        if code != 0:
            failed = True
            say(f"[run_all] {bench.name} failed with exit code {code}")
            if not args.keep_going:
                break
    OUT.mkdir(parents=True, exist_ok=True)
    text = summary(ran, status)
    (OUT / "SUMMARY.md").write_text(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

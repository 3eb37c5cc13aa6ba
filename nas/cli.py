"""The ``nas`` command: a thin shell that parses, calls ``nas.api``, prints, returns a code.

Any ``UserError`` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from compress.errors import UserError

app = typer.Typer(
    help="Hardware-aware NAS and compression for Llama-family LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False)


ResultsOpt = typer.Option(
    None, "--results", help="results root (default: spec's ray.storage or ./results)"
)


@app.command()
def validate(spec: Path = typer.Argument(..., help="search spec (YAML)")) -> None:
    """Check a search spec and print its resolved form."""
    from nas import api

    parsed = api.validate(spec)
    console.print(
        f"[green]ok[/green] {spec}: model {parsed.model.source}, strategies {', '.join(parsed.strategy.names)}"
    )


@app.command()
def run(
    spec: Path = typer.Argument(..., help="search spec (YAML)"),
    job_id: str | None = typer.Option(
        None, "--job-id", help="job id (default: NAME-TIMESTAMP-XXXX)"
    ),
    results: Path | None = ResultsOpt,
    resume_job: str | None = typer.Option(None, "--resume", help="resume this job instead"),
    until: str | None = typer.Option(None, "--until", help="stop after this stage"),
) -> None:
    """Run the pipeline of a spec as a new job (or --resume JOB)."""
    from nas import api

    if resume_job:
        store = api.resume(resume_job, results, report=_say, until=until)
    else:
        store = api.run(spec, job_id, results, report=_say, until=until)
    _say(f"job {store.job_id} {store.manifest()['state']}: {store.dir}")


@app.command()
def resume(job_id: str = typer.Argument(...), results: Path | None = ResultsOpt) -> None:
    """Finish an interrupted job without redoing finished stages or items."""
    from nas import api

    store = api.resume(job_id, results, report=_say)
    _say(f"job {store.job_id} {store.manifest()['state']}: {store.dir}")


@app.command()
def jobs(results: Path | None = ResultsOpt) -> None:
    """List the jobs in the results folder."""
    from nas import api

    rows = api.jobs(results)
    table = Table("job", "state", "stages done", "created")
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))
        table.add_row(row["job_id"], row["state"], ", ".join(row["stages_done"]), created)
    console.print(table)


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="search spec (YAML)"),
    address: str = typer.Option(..., "--address", help="Ray job server, e.g. http://HOST:8265"),
    job_id: str | None = typer.Option(None, "--job-id"),
    results: Path | None = ResultsOpt,
    wait: bool = typer.Option(False, "--wait", help="block until the job ends"),
) -> None:
    """Run a spec as a job on a Ray cluster (Ray Job Submission API); prints the job id."""
    from nas import api

    job = api.submit(spec, address, job_id, results)
    print(job)
    if wait:
        state = api.wait(address, job)
        _say(f"job {job}: {state}")
        if state != "SUCCEEDED":
            raise typer.Exit(1)


@app.command()
def status(
    job_id: str = typer.Argument(...),
    address: str | None = typer.Option(None, "--address", help="also ask this Ray job server"),
    results: Path | None = ResultsOpt,
) -> None:
    """A job's state, its current stage and how many items of each stage are done."""
    from nas import api

    info = api.status(job_id, results, address)
    _say(f"job {info['job_id']}: {info['state']}" + (f" (ray: {info['ray']})" if info.get("ray") else ""))
    _say(f"stages done: {', '.join(info['stages_done']) or 'none'}")
    for stage, count in info["items"].items():
        _say(f"  {stage}: {count['done']}/{count['total']}")


@app.command()
def logs(
    job_id: str = typer.Argument(...),
    address: str = typer.Option(..., "--address"),
    follow: bool = typer.Option(False, "--follow", "-f"),
) -> None:
    """Print (or follow) a cluster job's logs."""
    from nas import cluster

    if follow:
        cluster.follow_logs(address, job_id, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(cluster.logs(address, job_id), end="")


@app.command()
def cancel(job_id: str = typer.Argument(...), address: str = typer.Option(..., "--address")) -> None:
    """Stop a cluster job (finished work stays; `nas resume` continues it)."""
    from nas import cluster

    stopped = cluster.cancel(address, job_id)
    _say(f"job {job_id}: {'stop requested' if stopped else 'already finished'}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    results: Path = typer.Option(Path("results"), "--results"),
    token_file: str | None = typer.Option(None, "--token-file", help="else $NAS_API_TOKEN"),
) -> None:
    """Serve the HTTP API (jobs, status, Pareto queries, export)."""
    from nas import service

    service.serve(host, port, results, token_file)


def main() -> None:
    try:
        app()
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()

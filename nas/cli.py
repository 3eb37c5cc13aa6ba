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
# a pipe or a log file gets wide tables instead of 80 columns of ellipses
console = Console() if sys.stdout.isatty() else Console(width=200)
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


@app.command("init")
def init_cmd(
    folder: Path = typer.Argument(
        Path("."), help="folder to write search_spaces/ and hwprofiles/ into"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite files that exist"),
) -> None:
    """Write the shipped specs and measured profiles into FOLDER (for an installed package)."""
    from nas import api

    written = api.init_folder(folder, force)
    _say(f"wrote {len(written)} files under {folder} (search_spaces/, hwprofiles/)")


@app.command()
def run(
    spec: Path = typer.Argument(..., help="search spec (YAML)"),
    job_id: str | None = typer.Option(
        None, "--job-id", help="job id (default: NAME-TIMESTAMP-XXXX)"
    ),
    results: str | None = ResultsOpt,
    resume_job: str | None = typer.Option(None, "--resume", help="resume this job instead"),
    until: str | None = typer.Option(None, "--until", help="stop after this stage"),
) -> None:
    """Run the pipeline of a spec as a new job (or --resume JOB)."""
    from nas import api

    if resume_job:
        store = api.resume(resume_job, results, report=_say, until=until)
    else:
        store = api.run(spec, job_id, results, report=_say, until=until)
    _finish(store)


@app.command()
def resume(job_id: str = typer.Argument(...), results: str | None = ResultsOpt) -> None:
    """Finish an interrupted job without redoing finished stages or items."""
    from nas import api

    store = api.resume(job_id, results, report=_say)
    _finish(store)


def _finish(store) -> None:
    """After a run: the front as a table and its plot, when the job got that far."""
    from nas import api

    manifest = store.manifest()
    state = manifest["state"]
    times = manifest.get("stage_seconds", {})
    if times:
        _say("stage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    if store.stage_done("selection"):
        plot = store.pareto_file("front.png")
        front = store.front
        if not plot.exists() or plot.stat().st_mtime < front.stat().st_mtime:  # else current
            api.plot_pareto(store.job_id, plot, store.root)
            store.push()  # a job on object storage keeps its plot
        _print_front(store.job_id, api.pareto(store.job_id, store.root))
        _say(f"plot: {store.location(plot)}")
    _say(f"job {store.job_id} {state}: {store.location(store.dir)}")


def _print_front(job_id: str, frame) -> None:
    from nas.eval_sets import with_parent_row
    from nas.pareto_text import front_table

    header, rows = front_table(with_parent_row(frame))
    meta = frame.attrs.get("meta", {})
    caption = f"pred. KL: replace-one-block KL on the {meta.get('objective_kl_source', 'calibration eval split')}"
    if any(h.startswith("meas. ") for h in header):
        caption += "; meas. KL/perplexity: calibration eval split"
    if meta.get("eval_sets"):
        caption += "; X@SET: eval set SET (" + ", ".join(meta["eval_sets"]) + ")"
    if meta.get("quality_note"):
        caption = f"{meta['quality_note'].upper()}; {caption}"
    table = Table(title=f"Pareto front of {job_id} ({len(frame)} points)", caption=caption)
    for i, name in enumerate(header):
        table.add_column(name, no_wrap=i == 0, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
def jobs(results: str | None = ResultsOpt) -> None:
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
    results: str | None = ResultsOpt,
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
    results: str | None = ResultsOpt,
) -> None:
    """A job's state, its current stage and how many items of each stage are done."""
    from nas import api

    info = api.status(job_id, results, address)
    _say(
        f"job {info['job_id']}: {info['state']}"
        + (f" (ray: {info['ray']})" if info.get("ray") else "")
    )
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
def cancel(
    job_id: str = typer.Argument(...), address: str = typer.Option(..., "--address")
) -> None:
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
    no_auth: bool = typer.Option(
        False, "--no-auth", help="serve without a token (loopback host only, Host checked)"
    ),
    data_root: list[Path] | None = typer.Option(
        None, "--data-root", help="folder whose files remote specs may use (repeatable)"
    ),
    max_running: int = typer.Option(1, "--max-running", help="jobs run at once (0: hold all)"),
    max_queued: int = typer.Option(16, "--max-queued", help="jobs waiting at most"),
    allow_host: list[str] | None = typer.Option(
        None, "--allow-host", help="accept only these Host names (repeatable)"
    ),
) -> None:
    """Serve the HTTP API (jobs, status, cancel, Pareto queries, exports)."""
    from nas import service

    service.serve(
        host,
        port,
        results,
        token_file,
        no_auth=no_auth,
        data_roots=data_root,
        max_running=max_running,
        max_queued=max_queued,
        allowed_hosts=allow_host,
    )


@app.command("export")
def export_cmd(
    job_id: str = typer.Argument(..., help="job id"),
    point: str = typer.Option(
        ..., "--point", help="point_id in the job's Pareto table, or 'parent'"
    ),
    fmt: str = typer.Option("onnx", "--format", help="onnx | tensorrt | hf"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    precision: str | None = typer.Option(
        None, "--precision", help="fp32 | fp16 | bf16 (default: the spec's measure precision)"
    ),
    results: str | None = ResultsOpt,
) -> None:
    """Export one Pareto point (or the parent) as an onnxruntime-genai folder, TensorRT
    engines or a transformers folder; reuses what the job already exported."""
    from nas import api

    summary = api.export_point(job_id, point, fmt, out, results, precision, report=_say)
    how = f"reused the job's export ({summary['reused']})" if summary["reused"] else "exported"
    _say(f"wrote {len(summary['files'])} files to {out}: {how} in {summary['seconds']:.1f}s")


@app.command()
def clean(job_id: str = typer.Argument(...), results: str | None = ResultsOpt) -> None:
    """Delete a finished job's intermediates (activations, caches); keeps the library,
    the front and the exported students."""
    from nas import api

    freed = api.clean(job_id, results)
    _say(
        f"job {job_id}: removed {', '.join(freed['removed']) or 'nothing'}; freed "
        f"{freed['bytes_freed'] / 2**20:.1f} MiB ({freed['bytes_before'] / 2**20:.1f} -> "
        f"{freed['bytes_after'] / 2**20:.1f} MiB)"
    )


@app.command()
def pareto(
    job_id: str = typer.Argument(..., help="job id"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="latency limit"),
    max_memory_mib: float | None = typer.Option(None, "--max-memory-mib", help="memory limit"),
    plot: Path | None = typer.Option(None, "--plot", help="also write a plot (.png or .html)"),
    quality: list[str] | None = typer.Option(
        None, "--quality", help="plot: eval set (SET or SET:kl; repeatable; default: all)"
    ),
    results: str | None = ResultsOpt,
) -> None:
    """Query a job's Pareto front (filters, sorted by latency); optionally plot it."""
    from nas import api
    from nas.pareto_text import front_csv, front_json

    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json, got {fmt!r}")
    frame = api.pareto(job_id, results, max_latency_ms, max_memory_mib)
    if plot is not None:
        api.plot_pareto(job_id, plot, results, quality)
    from nas.eval_sets import with_parent_row

    if fmt == "csv":
        sys.stdout.write(front_csv(with_parent_row(frame)))
    elif fmt == "json":
        sys.stdout.write(front_json(with_parent_row(frame)) + "\n")
    else:
        _print_front(job_id, frame)
    if plot is not None:
        err_console.print(f"wrote {plot}", markup=False, highlight=False)


@app.command("select")
def select_cmd(
    library: Path = typer.Argument(..., help="block library (.csv, .json or .parquet)"),
    budget: list[str] | None = typer.Option(
        None, "--budget", help="bound held in every solve, e.g. memory_mib<=80000 (repeatable)"
    ),
    sweep: str | None = typer.Option(
        None, "--sweep", help="one bound over values, e.g. decode_latency_ms<=40,50,60"
    ),
    relative: bool = typer.Option(False, "--relative", help="values are ratios of the parent"),
    score: str = typer.Option("kl", "--score", help="score column to minimise"),
    blocks: str = typer.Option("auto", "--blocks", help="auto | joint | subblock"),
    solutions: int = typer.Option(1, "--solutions", help="diverse solutions per request"),
    diversity: int = typer.Option(1, "--diversity", help="layers each solution must change"),
    solver: str = typer.Option("highs", "--solver", help="highs | cbc"),
    batch: int = typer.Option(1, "--batch", help="decode batch (throughput bounds)"),
    prefill_tokens: int = typer.Option(1, "--prefill-tokens", help="tokens per prefill run"),
    decode_steps: int = typer.Option(1, "--decode-steps", help="tokens per decode runtime"),
    fix: list[str] | None = typer.Option(None, "--fix", help="LAYER/VARIANT (repeatable)"),
    forbid: list[str] | None = typer.Option(None, "--forbid", help="[LAYER/]VARIANT"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
    out: Path | None = typer.Option(None, "--out", help="write the front here (.csv or .json)"),
) -> None:
    """Select students from a block library file under bounds (no model, no torch)."""
    from nas import api
    from nas.pareto_text import front_csv, front_json

    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json, got {fmt!r}")
    result = api.select_library(
        library,
        budget or [],
        sweep,
        relative=relative,
        score=score,
        blocks=blocks,
        solutions=solutions,
        diversity=diversity,
        solver=solver,
        batch=batch,
        prefill_tokens=prefill_tokens,
        decode_steps=decode_steps,
        fix=fix or [],
        forbid=forbid or [],
    )
    frame = result.front
    for line in result.meta.get("infeasible", []):
        err_console.print(line, markup=False, highlight=False)
    if out is not None:
        text = front_json(frame) + "\n" if out.suffix == ".json" else front_csv(frame)
        out.write_text(text)
        err_console.print(f"wrote {out}", markup=False, highlight=False)
    if fmt == "csv":
        sys.stdout.write(front_csv(frame))
    elif fmt == "json":
        sys.stdout.write(front_json(frame) + "\n")
    else:
        _print_front(str(library), frame)


@app.command("eval")
def eval_cmd(
    job_id: str = typer.Argument(..., help="job id"),
    point: list[str] | None = typer.Option(
        None, "--point", help="point id or 'parent' (repeatable; default: parent and every point)"
    ),
    tasks: list[str] | None = typer.Option(
        None, "--tasks", help="lm-eval task (repeatable; default: the local nas_next_word)"
    ),
    limit: int | None = typer.Option(None, "--limit", help="at most N items per task"),
    batch_size: int = typer.Option(8, "--batch-size"),
    results: str | None = ResultsOpt,
) -> None:
    """Downstream accuracy (EleutherAI lm-eval) of the parent and students; `nas pareto` shows it."""
    from nas import api

    records = api.evaluate(job_id, point, tasks, limit, results, batch_size, report=_say)
    _say(f"stored lm-eval results of {len(records)} points under {job_id}/eval/")


@app.command("profile")
def profile_cmd(
    model: str | None = typer.Option(None, "--model", help="HF folder, .gguf or smollm2-135m"),
    backend: str = typer.Option(
        "onnxruntime-cpu", "--backend", help="onnxruntime-cpu | torch-cpu | torch-cuda | tensorrt"
    ),
    phase: str = typer.Option("prefill", "--phase", help="prefill | decode"),
    batch: int = typer.Option(1, "--batch"),
    seq: int = typer.Option(128, "--seq", help="prefill tokens"),
    context: int = typer.Option(512, "--context", help="decode: KV-cache tokens"),
    variants: list[str] | None = typer.Option(
        None, "--variants", help="canonical variant (repeatable), e.g. attention:kv_heads=1"
    ),
    space: Path | None = typer.Option(None, "--space", help="use the space of this spec"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all)"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | bf16"),
    students: int = typer.Option(8, "--students", help="random students for validation"),
    seed: int = typer.Option(0, "--seed"),
    stack: int = typer.Option(8, "--stack", help="copies of a subblock per timed graph"),
    out: Path | None = typer.Option(None, "--out", help="profile file to write"),
    validate_file: Path | None = typer.Option(
        None, "--validate", help="re-measure this profile's random students and store the MAPE"
    ),
) -> None:
    """Measure a hardware latency profile (or --validate an existing one)."""
    from nas import api

    if validate_file is not None:
        prof = api.validate_profile(validate_file, students, seed, report=_say)
        _say(f"{validate_file}: MAPE {prof.validation.mape:.2f} % over {students} students")
        return
    if model is None or out is None:
        raise UserError("nas profile needs --model and --out (or --validate FILE)")
    from compress.latency_backends import MeasureSettings
    from compress.profile_cli import ProfileRequest

    settings = MeasureSettings(
        backend=backend,
        phase=phase,
        batch=batch,
        seq=seq,
        context=context,
        precision=precision,
        threads=threads,
        stack=stack,
    )
    request = ProfileRequest(
        model,
        out,
        settings,
        tuple(variants or ()),
        api.spec_space(space) if space is not None else None,
        students,
        seed,
    )
    prof = api.profile(request, report=_say)
    mape = f", MAPE {prof.validation.mape:.2f} %" if prof.validation else ""
    _say(f"wrote {out}: {len(prof.entries)} entries, fixed {prof.fixed_ms:.3f} ms{mape}")


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

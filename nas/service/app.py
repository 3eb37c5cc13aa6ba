"""HTTP service over the library API (``nas serve``).

Endpoints (JSON; the OpenAPI schema at ``/openapi.json`` declares every status they answer):
``POST /jobs`` queues a job (run as its own ``nas resume`` process, ``max_running`` at a time);
``GET /jobs``; ``GET /jobs/{id}``; ``DELETE /jobs/{id}`` cancels a queued or running job and
moves its folder to ``<results>/.cancelled/``; ``GET /jobs/{id}/pareto`` with the filters of
``nas pareto``; ``POST /jobs/{id}/exports`` queues an export into the job's own folder
(``exports/<point>/<format>``), ``GET .../exports/{point}/{format}`` is its status and
``GET .../archive`` its files as a ``.tar.gz``. Bearer-token auth on all but ``/health``.
Errors are ``{"detail": "<one line>"}``: 400 bad id, 401 auth, 403 a path the server does not
let clients use, 404 unknown, 409 the job's state or a corrupt record forbids it, 413 too big,
422 invalid spec or body, 429 queue full.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import sys
import tarfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from pydantic import ValidationError

from compress.atomic import atomic_write, atomic_write_json
from compress.errors import UserError
from nas import api
from nas.errors import JobBusy, JobError, NotFound, RecordCorrupt
from nas.layout import JobLayout
from nas.selection.errors import FrontMissing, NoPointFits
from nas.service.confine import (
    MAX_BODY_BYTES,
    BodyTooLarge,
    Confinement,
    ExportRequest,
    JobRequest,
    PathRefused,
    parse_body,
)
from nas.service.gate import Gate
from nas.service.runner import QueueFull, Runner, Task
from nas.service.schemas import (
    _WHY,
    ExportStatus,
    JobAccepted,
    JobStatus,
    JobSummary,
    _errors,
    _json_body,
)
from nas.store import JOB_ID_MAX, JOB_ID_PATTERN, JobStore, new_job_id, validate_job_id

TOKEN_ENV = "NAS_API_TOKEN"
Format = Literal["onnx", "tensorrt", "hf"]


# status per typed failure; the first matching class wins
_STATUS = (
    (PathRefused, 403),
    (BodyTooLarge, 413),
    (QueueFull, 429),
    (NotFound, 404),
    (NoPointFits, 404),
    (JobBusy, 409),
    (RecordCorrupt, 409),
    (FrontMissing, 409),
    (UserError, 422),
)


def resolve_token(token_file: str | None) -> str | None:
    """The API token from ``token_file`` if given, else ``$NAS_API_TOKEN``, else None."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if not token:
            raise UserError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _job_id_param():
    return PathParam(..., pattern=JOB_ID_PATTERN, max_length=JOB_ID_MAX)


def create_app(
    results: Path,
    token: str | None,
    data_roots: list[Path] | None = None,
    max_running: int = 1,
    max_queued: int = 16,
    allowed_hosts: set[str] | None = None,
):
    """The ASGI application. ``token=None`` disables auth (``serve`` allows that only on
    loopback with ``--no-auth``); ``allowed_hosts`` (hostnames) restricts the ``Host`` header."""
    results = Path(results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    confine = Confinement(list(data_roots or []))
    jobs_queue = Runner(slots=max_running, capacity=max_queued)
    exports_queue = Runner(slots=min(1, max_running), capacity=max_queued)
    expected = None if token is None else token.encode("utf-8")

    @asynccontextmanager
    async def lifespan(app):
        _requeue(results, jobs_queue)
        yield
        jobs_queue.stop()
        exports_queue.stop()

    app = FastAPI(
        title="nas-llm",
        version="0.2.0",
        description="Hardware-aware NAS service",
        lifespan=lifespan,
    )
    bearer = HTTPBearer(auto_error=False, description="the token of nas serve")

    def auth(request: Request) -> None:
        if expected is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip().encode("latin-1", "replace")  # headers arrive latin-1 decoded
        if scheme.lower() != "bearer" or not secrets.compare_digest(given, expected):
            raise HTTPException(401, _WHY[401], {"WWW-Authenticate": "Bearer"})

    guard = [Depends(auth)] if expected is None else [Security(bearer), Depends(auth)]

    def open_job(job_id: str) -> JobStore:
        try:
            validate_job_id(job_id)
        except JobError as exc:
            raise HTTPException(400, str(exc)) from None
        return JobStore.open(results, job_id)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        status = next(code for cls, code in _STATUS if isinstance(exc, cls))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = (exc.errors() or [{}])[0]
        loc = tuple(err.get("loc") or ("body",))
        where = ".".join(str(p) for p in loc)
        status = 400 if loc[0] == "path" else 422
        return JSONResponse({"detail": f"{where}: {err.get('msg', 'invalid')}"}, status)

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post(
        "/jobs",
        dependencies=guard,
        status_code=202,
        response_model=JobAccepted,
        responses=_errors(400, 401, 403, 409, 413, 422, 429),
        openapi_extra=_json_body(JobRequest),
    )
    async def submit_job(request: Request) -> JobAccepted:
        """Queue a job: ``{"spec": {...}, "job_id": optional}``."""
        body = parse_body(await request.body(), JobRequest)
        job_id = body.job_id or new_job_id(body.spec.name)
        validate_job_id(job_id)
        spec = confine.spec(body.spec, results / job_id)
        store = api.create_job(spec, job_id, results, state="queued")
        try:
            position = jobs_queue.submit(_job_task(results, job_id))
        except QueueFull:
            shutil.rmtree(store.dir, ignore_errors=True)  # this request made it a moment ago
            raise
        return JobAccepted(job_id=job_id, state="queued", queue_position=position)

    @app.get("/jobs", dependencies=guard, response_model=list[JobSummary], responses=_errors(401))
    def jobs() -> list[dict]:
        return api.jobs(results)

    @app.get(
        "/jobs/{job_id}",
        dependencies=guard,
        response_model=JobStatus,
        responses=_errors(400, 401, 404, 409),
    )
    def job_status(job_id: str = _job_id_param()) -> JobStatus:
        store = open_job(job_id)
        info = api.status(job_id, results)
        info["stage_seconds"] = store.manifest().get("stage_seconds", {})
        if jobs_queue.state(job_id) == "queued":
            info["state"], info["queue_position"] = "queued", jobs_queue.position(job_id)
        try:
            return JobStatus.model_validate(info)
        except ValidationError:
            raise RecordCorrupt(f"the manifest of job {job_id} has malformed fields") from None

    @app.delete(
        "/jobs/{job_id}",
        dependencies=guard,
        response_model=JobAccepted,
        responses=_errors(400, 401, 404, 409),
    )
    def cancel_job(job_id: str = _job_id_param()) -> JobAccepted:
        """Cancel a queued or running job; its folder moves to ``.cancelled/`` on the server."""
        from nas.store import job_state

        store = open_job(job_id)
        if not jobs_queue.cancel(job_id):
            state = job_state(store, store.manifest())
            raise JobBusy(
                f"job {job_id} is {state}: only jobs this service queued or runs can be cancelled"
            )
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        keep = results / ".cancelled" / f"{job_id}-{stamp}"
        keep.parent.mkdir(exist_ok=True)
        store.update_manifest(state="cancelled")
        os.replace(store.dir, keep)
        return JobAccepted(job_id=job_id, state="cancelled", queue_position=0)

    @app.get(
        "/jobs/{job_id}/pareto",
        dependencies=guard,
        response_model=list[dict[str, Any]],
        responses=_errors(400, 401, 404, 409, 422),
    )
    def pareto(
        job_id: str = _job_id_param(),
        max_latency_ms: float | None = None,
        max_memory_mib: float | None = None,
    ) -> list[dict]:
        import json

        open_job(job_id)
        frame = api.pareto(job_id, results, max_latency_ms, max_memory_mib)
        return json.loads(frame.to_json(orient="records"))

    def export_dir(store: JobStore, point: str, fmt: str) -> Path:
        return store.service_export(point, fmt)

    def export_status(store: JobStore, point: str, fmt: str) -> ExportStatus:
        from nas.store import read_json_record

        path = export_dir(store, point, fmt).with_name(f"{fmt}.status.json")
        try:
            record = read_json_record(path, f"the {fmt} export status of point {point}")
        except FileNotFoundError:
            raise NotFound(f"job {store.job_id} has no {fmt} export of point {point}") from None
        state = exports_queue.state(f"{store.job_id}/{point}/{fmt}") or record.get("state")
        try:
            return ExportStatus.model_validate({**record, "state": state})
        except ValidationError:
            raise RecordCorrupt(f"{path} has malformed fields") from None

    @app.post(
        "/jobs/{job_id}/exports",
        dependencies=guard,
        status_code=202,
        response_model=ExportStatus,
        responses=_errors(400, 401, 404, 409, 413, 422, 429),
        openapi_extra=_json_body(ExportRequest),
    )
    async def start_export(request: Request, job_id: str = _job_id_param()) -> ExportStatus:
        """Queue an export of one Pareto point into the job's folder (``exports/<point>/<format>``)."""
        from nas.export import PARENT_POINT

        body = parse_body(await request.body(), ExportRequest)
        store = open_job(job_id)
        if body.point != PARENT_POINT:
            api.point(job_id, body.point, results)  # 404/409 now, not a failed export later
        key = f"{job_id}/{body.point}/{body.format}"
        out = export_dir(store, body.point, body.format)
        status_path = out.with_name(f"{body.format}.status.json")
        if exports_queue.state(key) is not None or (
            status_path.exists()
            and export_status(store, body.point, body.format).state
            in ("queued", "running", "finished")
        ):
            raise JobBusy(
                f"the {body.format} export of point {body.point} is queued, running or done"
            )
        shutil.rmtree(out, ignore_errors=True)  # a failed earlier try of this export
        base = {"job_id": job_id, "point": body.point, "format": body.format, "files": []}
        atomic_write_json(status_path, {**base, "state": "queued", "error": None})
        exports_queue.submit(
            Task(
                key,
                [
                    sys.executable,
                    "-m",
                    "nas.cli",
                    "export",
                    job_id,
                    "--point",
                    body.point,
                    "--format",
                    body.format,
                    "--out",
                    str(out),
                    "--results",
                    str(results),
                ],
                out.with_name(f"{body.format}.log"),
                lambda code: _export_done(out, status_path, base, code),
            )
        )
        return ExportStatus.model_validate({**base, "state": "queued"})

    @app.get(
        "/jobs/{job_id}/exports/{point}/{fmt}",
        dependencies=guard,
        response_model=ExportStatus,
        responses=_errors(400, 401, 404, 409),
    )
    def get_export(
        job_id: str = _job_id_param(),
        point: str = _job_id_param(),
        fmt: Format = PathParam(...),
    ) -> ExportStatus:
        return export_status(open_job(job_id), point, fmt)

    @app.get(
        "/jobs/{job_id}/exports/{point}/{fmt}/archive",
        dependencies=guard,
        response_class=FileResponse,
        responses={
            200: {"content": {"application/gzip": {}}, "description": "the export's files"},
            **_errors(400, 401, 404, 409),
        },
    )
    def get_export_archive(
        job_id: str = _job_id_param(),
        point: str = _job_id_param(),
        fmt: Format = PathParam(...),
    ):
        store = open_job(job_id)
        status = export_status(store, point, fmt)
        archive = export_dir(store, point, fmt).with_name(f"{fmt}.tar.gz")
        if status.state != "finished" or not archive.is_file():
            raise JobBusy(f"the {fmt} export of point {point} is {status.state}, not finished")
        return FileResponse(archive, media_type="application/gzip", filename=archive.name)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (JobRequest, ExportRequest):
                part = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(part.pop("$defs", {}))
                components[model.__name__] = part
            # FastAPI's own 422 (a list of errors) is never sent: bad path parameters are 400
            # and every other error is a Problem (see the handlers above)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    reply = operation["responses"].get("422", {})
                    if "HTTPValidationError" in str(reply):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return Gate(app, app.routes, MAX_BODY_BYTES, allowed_hosts)


def _job_task(results: Path, job_id: str) -> Task:
    cmd = [sys.executable, "-m", "nas.cli", "resume", job_id, "--results", str(results)]
    return Task(job_id, cmd, JobLayout(results / job_id).service_log)


def _requeue(results: Path, queue: Runner) -> None:
    """Jobs a previous service queued but never started go back in the queue."""
    for row in sorted(api.jobs(results), key=lambda r: r["created"]):
        if row["state"] == "queued":
            try:
                queue.submit(_job_task(results, row["job_id"]))
            except QueueFull:
                return


def _export_done(out: Path, status_path: Path, base: dict, code: int) -> None:
    """After ``nas export``: the archive of its files, and the status with the error line."""
    state, error, files = "failed", None, []
    if code == 0 and out.is_dir():
        files = sorted(p.name for p in out.iterdir() if p.is_file() and not p.name.startswith("."))

        def write(tmp: Path) -> None:
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(out, arcname=f"{base['point']}-{base['format']}")

        atomic_write(out.with_name(f"{base['format']}.tar.gz"), write)
        state = "finished"
    else:
        log = out.with_name(f"{base['format']}.log")
        lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
        error = (lines[-1] if lines else f"nas export exited {code}")[:500]
    atomic_write_json(status_path, {**base, "state": state, "error": error, "files": files})


def serve(
    host: str,
    port: int,
    results: Path,
    token_file: str | None,
    no_auth: bool = False,
    data_roots: list[Path] | None = None,
    max_running: int = 1,
    max_queued: int = 16,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Run the service until interrupted.

    Without a token only with ``no_auth`` and on a loopback host, and then only requests whose
    ``Host`` is this host (or ``allowed_hosts``) are answered.
    """
    import uvicorn

    token = resolve_token(token_file)
    if token is not None and no_auth:
        raise UserError("--no-auth and a token exclude each other; drop one")
    if token is None and not no_auth:
        raise UserError(
            f"refusing to serve without a token: set ${TOKEN_ENV} or pass --token-file "
            "(or --no-auth, on a loopback host of a single-user machine only)"
        )
    if token is None and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without a token: --no-auth is loopback only")
    for root in data_roots or []:
        if not Path(root).is_dir():
            raise UserError(f"--data-root {root} is not a folder")
    if max_running < 0 or max_queued < 1:
        raise UserError("--max-running must be >= 0 and --max-queued >= 1")
    hosts = set(allowed_hosts or [])
    if token is None:
        hosts |= {host.lower(), "localhost", "127.0.0.1", "::1"}
        print(
            f"warning: serving WITHOUT authentication on {host}:{port} (loopback only)",
            file=sys.stderr,
        )
    gate = create_app(results, token, data_roots, max_running, max_queued, hosts or None)
    uvicorn.run(gate, host=host, port=port, log_level="warning")

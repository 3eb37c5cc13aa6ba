"""HTTP service over the library API (``nas serve``).

Endpoints (JSON): ``POST /jobs`` (spec in the body) starts a job as its own ``nas run``
process; ``GET /jobs``; ``GET /jobs/{id}``; ``GET /jobs/{id}/pareto`` with the same filters as
``nas pareto``; ``POST /jobs/{id}/export``. Bearer-token auth on every endpoint but
``/health``; spec errors are 422 with the one-line message; bad job ids are 400, unknown 404.
The OpenAPI schema is at ``/openapi.json``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from compress.errors import UserError
from nas.errors import JobError, SpecError
from nas.spec import parse_spec
from nas.store import JobStore, list_jobs, new_job_id, validate_job_id

TOKEN_ENV = "NAS_API_TOKEN"


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


def create_app(results: Path, token: str | None, spec_root: Path | None = None):
    """The FastAPI application. ``token=None`` disables auth (loopback only; see ``serve``)."""
    results = Path(results).resolve()
    spec_root = Path(spec_root or Path.cwd()).resolve()
    processes: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    app = FastAPI(title="nas-llm", version="0.1.0", description="Hardware-aware NAS service")

    def auth(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip(), token):
            raise HTTPException(
                401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
            )

    def open_job(job_id: str) -> JobStore:
        try:
            validate_job_id(job_id)
        except JobError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            return JobStore.open(results, job_id)
        except JobError as exc:
            raise HTTPException(404, str(exc)) from None

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/jobs", dependencies=[Depends(auth)], status_code=202)
    def submit_job(body: dict[str, Any] = Body(...)) -> dict:
        """Body: ``{"spec": <mapping or YAML text>, "job_id": optional}``; the job runs as ``nas resume``."""
        import yaml

        raw = body.get("spec")
        if isinstance(raw, str):
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise HTTPException(422, f"spec: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise HTTPException(422, "body.spec must be a mapping or YAML text of one")
        try:
            spec = parse_spec(raw, base_dir=spec_root, origin="spec")
        except SpecError as exc:
            raise HTTPException(422, str(exc)) from None
        job_id = body.get("job_id") or new_job_id(spec.name)
        try:
            validate_job_id(job_id)
        except JobError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            JobStore.create(results, job_id, spec.model_dump(mode="json"), None)
        except JobError as exc:
            raise HTTPException(409, str(exc)) from None
        log = open(results / job_id / "service.log", "ab")
        cmd = [sys.executable, "-m", "nas.cli", "resume", job_id, "--results", str(results)]
        with lock:
            processes[job_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        return {"job_id": job_id, "state": "submitted"}

    @app.get("/jobs", dependencies=[Depends(auth)])
    def jobs() -> list[dict]:
        return list_jobs(results)

    @app.get("/jobs/{job_id}", dependencies=[Depends(auth)])
    def job_status(job_id: str) -> dict:
        from nas.cluster import progress

        store = open_job(job_id)
        status = progress(store)
        proc = processes.get(job_id)
        if proc is not None:
            code = proc.poll()
            status["process"] = "running" if code is None else f"exited {code}"
        return status

    @app.get("/jobs/{job_id}/pareto", dependencies=[Depends(auth)])
    def pareto(
        job_id: str, max_latency_ms: float | None = None, max_memory_mib: float | None = None
    ) -> list[dict]:
        from nas.pareto import query_front

        store = open_job(job_id)
        try:
            frame = query_front(
                store.dir, max_latency_ms=max_latency_ms, max_memory_mib=max_memory_mib
            )
        except UserError as exc:
            raise HTTPException(404, str(exc)) from None
        return json.loads(frame.to_json(orient="records"))

    @app.post("/jobs/{job_id}/export", dependencies=[Depends(auth)])
    def export(job_id: str, body: dict[str, Any] = Body(...)) -> dict:
        """Body: ``{"point": ID or "parent", "format": "onnx"|"tensorrt"|"hf", "out": optional
        folder, "precision": optional "fp32"|"fp16"|"bf16"}``."""
        from nas import api

        store = open_job(job_id)
        point = str(body.get("point", ""))
        fmt = body.get("format", "onnx")
        out = store.path("exports", f"{point}-{fmt}") if not body.get("out") else Path(body["out"])
        try:
            summary = api.export_point(
                job_id, point, fmt, out, results=results, precision=body.get("precision")
            )
            paths = summary["files"]
        except UserError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"job_id": job_id, "point": point, "format": fmt, "out": str(out), "files": paths}

    return app


def serve(host: str, port: int, results: Path, token_file: str | None) -> None:
    """Run the service until interrupted; refuses a non-loopback host without a token."""
    import uvicorn

    token = resolve_token(token_file)
    if token is None and not is_loopback(host):
        raise UserError(
            f"refusing to serve on {host} without a token: set ${TOKEN_ENV} or pass --token-file"
        )
    uvicorn.run(create_app(results, token), host=host, port=port, log_level="warning")

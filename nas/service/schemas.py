"""The shapes the service answers with and the error statuses it declares (OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel


class Problem(BaseModel):
    detail: str


class ItemCount(BaseModel):
    done: int
    total: int


class JobStatus(BaseModel):
    job_id: str
    state: str
    stages_done: list[str]
    current_stage: str | None = None
    items: dict[str, ItemCount] = {}
    stage_seconds: dict[str, float] = {}
    queue_position: int | None = None


class JobSummary(BaseModel):
    job_id: str
    state: str
    stages_done: list[str]
    created: float
    spec_path: str | None = None


class JobAccepted(BaseModel):
    job_id: str
    state: str
    queue_position: int


class ExportStatus(BaseModel):
    job_id: str
    point: str
    format: str
    state: str
    error: str | None = None
    files: list[str] = []


_WHY = {
    400: "invalid job id, point or format in the path",
    401: "missing or invalid bearer token",
    403: "the spec names a path this server does not let clients use",
    404: "no such job, point or export",
    409: "the job's state (or a corrupt record) does not allow this now",
    413: "request body or spec text too large",
    422: "invalid body, spec or query",
    429: "the queue is full",
}


def _errors(*codes: int) -> dict:
    return {c: {"model": Problem, "description": _WHY[c]} for c in codes}


def _json_body(model: type[BaseModel]) -> dict:
    """The OpenAPI request body of a route that reads and checks its JSON itself (strictly,
    with size and depth limits: ``confine.parse_body``); the schema is added in ``openapi``."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}

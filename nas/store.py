"""The results store: ``<root>/<job-id>/manifest.json`` plus one record per finished stage.

Every file goes through ``compress.atomic`` (temp file + rename). A stage is done exactly when
its record ``stages/<stage>.json`` exists, so a resumed job skips it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from compress.atomic import atomic_write_json
from nas.errors import JobError

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_RESULTS = Path("results")


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a safe folder name; raise ``JobError`` otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id) or ".." in job_id:
        raise JobError(
            f"invalid job id {job_id!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..', at most 128 characters)"
        )
    return job_id


def new_job_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return validate_job_id(f"{name}-{stamp}-{secrets.token_hex(2)}")


class JobStore:
    """One job's folder. Construct with ``create`` (new job) or ``open`` (existing job)."""

    def __init__(self, root: Path, job_id: str):
        self.root = Path(root)
        self.job_id = validate_job_id(job_id)
        self.dir = self.root / job_id

    @classmethod
    def create(cls, root: str | Path, job_id: str, spec: dict, spec_path: str | None) -> JobStore:
        store = cls(Path(root), job_id)
        if (store.dir / "manifest.json").exists():
            raise JobError(
                f"job {job_id} already exists in {store.root}; resume it or pick another id"
            )
        store.dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        atomic_write_json(
            store.dir / "manifest.json",
            {
                "job_id": job_id,
                "spec": spec,
                "spec_path": spec_path,
                "state": "created",
                "stages_done": [],
                "created": now,
                "updated": now,
            },
        )
        return store

    @classmethod
    def open(cls, root: str | Path, job_id: str) -> JobStore:
        store = cls(Path(root), job_id)
        if not (store.dir / "manifest.json").exists():
            raise JobError(f"no job {job_id} in {store.root}")
        return store

    # --- manifest --------------------------------------------------------------------------
    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())

    def update_manifest(self, **fields) -> dict:
        manifest = self.manifest()
        manifest.update(fields, updated=time.time())
        atomic_write_json(self.dir / "manifest.json", manifest)
        return manifest

    # --- stages ----------------------------------------------------------------------------
    def stage_path(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def stage_done(self, stage: str) -> bool:
        return self.stage_path(stage).exists()

    def read_stage(self, stage: str) -> dict:
        path = self.stage_path(stage)
        if not path.exists():
            raise JobError(f"job {self.job_id} has no finished stage {stage!r}")
        return json.loads(path.read_text())

    def write_stage(self, stage: str, record: dict) -> None:
        atomic_write_json(self.stage_path(stage), record)
        manifest = self.manifest()
        done = [s for s in manifest.get("stages_done", []) if s != stage] + [stage]
        self.update_manifest(stages_done=done)

    def set_progress(self, stage: str, done: int, total: int) -> None:
        """Record that ``stage`` is running with ``done`` of ``total`` items finished."""
        manifest = self.manifest()
        progress = dict(manifest.get("progress", {}))
        progress[stage] = {"done": int(done), "total": int(total)}
        self.update_manifest(current_stage=stage, progress=progress)

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)


def list_jobs(root: str | Path = DEFAULT_RESULTS) -> list[dict]:
    """Summaries of every job under ``root``, newest first."""
    rows = []
    for manifest_path in sorted(Path(root).glob("*/manifest.json")):
        try:
            m = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rows.append(
            {
                "job_id": m.get("job_id", manifest_path.parent.name),
                "state": m.get("state", "?"),
                "stages_done": m.get("stages_done", []),
                "created": m.get("created", 0.0),
                "spec_path": m.get("spec_path"),
            }
        )
    return sorted(rows, key=lambda r: r["created"], reverse=True)

"""The results store: ``<root>/<job-id>/manifest.json`` plus one record per finished stage.

Every file goes through ``compress.atomic`` (temp file + rename). A stage is done exactly when
its record ``stages/<stage>.json`` exists, so a resumed job skips it. A job folder is created
exclusively (two creators of one id: one wins, the other gets ``JobError``). A record that
cannot be read is a ``RecordCorrupt`` one-line error, never a traceback. The process running a
job holds its driver lease (``nas.driver``), so a job whose driver died reads ``interrupted``.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path

from compress.atomic import atomic_write_json
from nas.errors import JobError, NotFound
from nas.layout import MANIFEST, JobLayout, read_json_record  # noqa: F401

# letters, digits, '_' and '-', with single dots between them (no '..', no trailing dot)
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
JOB_ID_MAX = 128
_JOB_ID = re.compile(JOB_ID_PATTERN)
DEFAULT_RESULTS = Path("results")


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a safe folder name (matched in full); ``JobError`` otherwise."""
    if not isinstance(job_id, str) or len(job_id) > JOB_ID_MAX or not _JOB_ID.fullmatch(job_id):
        raise JobError(
            f"invalid job id {job_id!r}: use letters, digits, '_' and '-' with single dots "
            f"between them (no path separators, at most {JOB_ID_MAX} characters)"
        )
    return job_id


def new_job_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return validate_job_id(f"{name}-{stamp}-{secrets.token_hex(2)}")


class JobStore(JobLayout):
    """One job's folder (paths and readers from ``JobLayout``) and its writes. Construct with
    ``create`` (new job) or ``open`` (existing job)."""

    def __init__(self, root: Path, job_id: str):
        self.root = Path(root)
        super().__init__(self.root / validate_job_id(job_id), job_id)

    @classmethod
    def create(
        cls,
        root: str | Path,
        job_id: str,
        spec: dict,
        spec_path: str | None,
        state: str = "created",
    ) -> JobStore:
        """Create the job's folder and manifest; ``JobBusy`` when the id is taken (atomic:
        of several concurrent creators of one id exactly one succeeds)."""
        from nas.errors import JobBusy

        store = cls(Path(root), job_id)
        taken = JobBusy(
            f"job {job_id} already exists in {store.root}; resume it or pick another id"
        )
        if store.manifest_path.exists():
            raise taken
        store.dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(store.created_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise taken from None
        if store.manifest_path.exists():  # a job made before markers existed
            raise taken
        now = time.time()
        atomic_write_json(
            store.manifest_path,
            {
                "job_id": job_id,
                "spec": spec,
                "spec_path": spec_path,
                "state": state,
                "stages_done": [],
                "created": now,
                "updated": now,
            },
        )
        return store

    @classmethod
    def open(cls, root: str | Path, job_id: str) -> JobStore:
        store = cls(Path(root), job_id)
        if not store.manifest_path.is_file():
            raise NotFound(f"no job {job_id} in {store.root}")
        return store

    # --- manifest ---------------------------------------------------------------------------
    def update_manifest(self, **fields) -> dict:
        manifest = self.manifest()
        manifest.update(fields, updated=time.time())
        atomic_write_json(self.manifest_path, manifest)
        return manifest

    # --- stages ----------------------------------------------------------------------------
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


def job_state(store: JobStore, manifest: dict) -> str:
    """The manifest's state, except ``interrupted`` for a running job whose driver is gone."""
    from nas.driver import driver_alive

    state = str(manifest.get("state", "?"))
    if state == "running" and not driver_alive(store.dir):
        return "interrupted"
    return state


def list_jobs(root: str | Path = DEFAULT_RESULTS) -> list[dict]:
    """Summaries of every job under ``root``, newest first; a job whose manifest cannot be
    read is listed with state ``corrupt`` (never hidden)."""
    rows = []
    for manifest_path in sorted(Path(root).glob(f"*/{MANIFEST}")):
        name = manifest_path.parent.name
        try:
            store = JobStore(Path(root), name)
            m = store.manifest()
            row = {
                "job_id": name,
                "state": job_state(store, m),
                "stages_done": [str(s) for s in m.get("stages_done", [])],
                "created": float(m.get("created", 0.0)),
                "spec_path": m.get("spec_path") if isinstance(m.get("spec_path"), str) else None,
            }
        except (JobError, TypeError, ValueError):
            row = {"job_id": name, "state": "corrupt", "stages_done": [], "created": 0.0}
            row["spec_path"] = None
        rows.append(row)
    return sorted(rows, key=lambda r: r["created"], reverse=True)

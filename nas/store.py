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
from nas.layout import INTERMEDIATES, MANIFEST, JobLayout, read_json_record  # noqa: F401
from nas.storage import Remote, is_uri, mirror_dir, pull_tree, push_files, push_tree

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

    def __init__(self, root: str | Path, job_id: str):
        validate_job_id(job_id)
        self.remote: Remote | None = None
        self._pushed: dict = {}  # relative path -> (size, mtime) last sent to the remote
        if is_uri(root):  # object storage: work in a private local mirror (nas.storage)
            self.root = str(root).rstrip("/")
            self.remote = Remote(f"{self.root}/{job_id}")
            super().__init__(mirror_dir(job_id), job_id)
        else:
            self.root = Path(root)
            super().__init__(self.root / job_id, job_id)

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

        store = cls(root, job_id)
        taken = JobBusy(
            f"job {job_id} already exists in {store.root}; resume it or pick another id"
        )
        if store.manifest_path.exists() or (store.remote and store.remote.exists(MANIFEST)):
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
        store.push()
        return store

    @classmethod
    def open(cls, root: str | Path, job_id: str, pull: str = "results") -> JobStore:
        """An existing job (``NotFound`` otherwise). On object storage its files are pulled
        into the mirror: ``pull="all"`` (a driver resuming it), ``"results"`` (all but the
        intermediates ``nas clean`` removes), ``"records"`` (the JSON and CSV records) or
        ``"manifest"`` (the manifest and the driver's record)."""
        store = cls(root, job_id)
        if store.remote is not None:
            if not store.remote.exists(MANIFEST):
                raise NotFound(f"no job {job_id} in {store.root}")
            store.pull(pull)
        if not store.manifest_path.is_file():
            raise NotFound(f"no job {job_id} in {store.root}")
        return store

    # --- object storage ---------------------------------------------------------------------
    def location(self, path: Path) -> str:
        """What a Ray task is given for ``path`` inside the job: a URI for a job on object
        storage (the task reads it with ``nas.storage.fetch``), else the local path."""
        if self.remote is None:
            return str(path)
        rel = Path(path).relative_to(self.dir).as_posix()
        return self.remote.url("" if rel == "." else rel)

    def push(self) -> int:
        """Send what changed locally to the object store (no-op for a local job)."""
        if self.remote is None:
            return 0
        return push_tree(self.dir, self.remote, self._pushed)

    def pull_folder(self, folder: Path) -> int:
        """Copy what the store holds under ``folder`` (inside the job) into the mirror, e.g.
        what Ray tasks wrote there; 0 for a local job."""
        if self.remote is None:
            return 0
        prefix = Path(folder).relative_to(self.dir).as_posix() + "/"
        return pull_tree(self.remote, self.dir, self._pushed, lambda rel: rel.startswith(prefix))

    def pull(self, what: str = "results") -> int:
        """Copy the job's objects into the mirror (see ``open``); 0 for a local job."""
        if self.remote is None:
            return 0
        intermediates = tuple("/".join(p) + "/" for p in INTERMEDIATES)
        keep = {
            "all": lambda rel: True,
            "results": lambda rel: not rel.startswith(intermediates),
            "records": lambda rel: rel.endswith((".json", ".csv")),
            "manifest": lambda rel: rel in (MANIFEST, self.driver_record.name),
        }[what]
        return pull_tree(self.remote, self.dir, self._pushed, keep)

    # --- manifest ---------------------------------------------------------------------------
    def update_manifest(self, **fields) -> dict:
        manifest = self.manifest()
        manifest.update(fields, updated=time.time())
        atomic_write_json(self.manifest_path, manifest)
        if self.remote is not None:  # the manifest, and the driver's heartbeat with it
            push_files(self.dir, self.remote, self._pushed, [self.driver_record.name, MANIFEST])
        return manifest

    # --- stages ----------------------------------------------------------------------------
    def write_stage(self, stage: str, record: dict) -> None:
        """Record ``stage`` as done: its record, then (object storage) every file it wrote
        and the record go up, then the manifest naming it."""
        atomic_write_json(self.stage_path(stage), record)
        self.push()
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
    if is_uri(root):
        names = [n for n in Remote(str(root)).children() if not n.startswith(".")]
    else:
        names = [p.parent.name for p in sorted(Path(root).glob(f"*/{MANIFEST}"))]
    for name in names:
        try:
            store = JobStore.open(root, name, pull="manifest") if is_uri(root) else None
            store = store or JobStore(Path(root), name)
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

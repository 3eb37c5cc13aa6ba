"""Running jobs on a Ray cluster through the Ray Job Submission API.

``submit`` creates the job's folder in the (shared) results storage with the resolved spec and
starts ``nas resume ID --results STORAGE`` on the cluster; the Ray submission id is the job
id, so ``status``/``logs``/``cancel`` take the same id the results store uses.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from nas.errors import JobError
from nas.ray_runtime import explain
from nas.spec import SearchSpec
from nas.storage import is_uri
from nas.store import JobStore, validate_job_id

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 60.0  # how long to wait for a new cluster's job agent


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, bad address...
        raise JobError(f"cannot reach the Ray job server at {address}: {explain(exc)}") from None


def submit(spec: SearchSpec, address: str, job_id: str, storage: str | Path) -> str:
    """Start the job on the cluster; returns the job id. Results go to ``storage/<job-id>``.

    The job's folder (manifest with the resolved spec) is created here first, and the cluster
    runs ``nas resume JOB --results STORAGE``; so ``storage`` must be a URI (``s3://...``,
    ``nas.storage``) or a path the cluster's head node sees too (a shared filesystem). No ``working_dir`` is shipped:
    a driver that calls ``ray.init`` inside a job loses such a directory as its cwd.
    """
    validate_job_id(job_id)
    client = _client(address)
    storage = str(storage) if is_uri(str(storage)) else Path(storage).resolve()
    JobStore.create(storage, job_id, spec.model_dump(mode="json"), None)
    entrypoint = f"nas resume {shlex.quote(job_id)} --results {shlex.quote(str(storage))}"
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(
                entrypoint=entrypoint, submission_id=job_id, metadata={"nas_job_id": job_id}
            )
        except Exception as exc:
            # a freshly started cluster has no job agent for a few seconds
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            raise JobError(f"the cluster refused job {job_id}: {explain(exc)}") from None


def ray_status(address: str, job_id: str) -> str:
    """The Ray job's state: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    client = _client(address)
    try:
        return str(client.get_job_status(validate_job_id(job_id)).value)
    except Exception as exc:
        raise JobError(f"no job {job_id} on {address}: {explain(exc)}") from None


def wait(address: str, job_id: str, timeout_s: float = 3600, poll_s: float = 2.0) -> str:
    """Block until the Ray job ends (or ``timeout_s``); returns its last state."""
    deadline = time.monotonic() + timeout_s
    state = ray_status(address, job_id)
    while state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = ray_status(address, job_id)
    return state


def logs(address: str, job_id: str) -> str:
    client = _client(address)
    try:
        return client.get_job_logs(validate_job_id(job_id))
    except Exception as exc:
        raise JobError(
            f"no logs for job {job_id} on {address}: {str(exc).splitlines()[0]}"
        ) from None


def follow_logs(address: str, job_id: str, write) -> None:
    """Stream the job's logs to ``write`` until the job ends."""
    import asyncio

    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(validate_job_id(job_id)):
            write(chunk)

    asyncio.run(tail())


def cancel(address: str, job_id: str) -> bool:
    client = _client(address)
    try:
        return bool(client.stop_job(validate_job_id(job_id)))
    except Exception as exc:
        raise JobError(
            f"cannot cancel job {job_id} on {address}: {str(exc).splitlines()[0]}"
        ) from None


def progress(store: JobStore) -> dict:
    """What the results store says: state (``interrupted`` when a running job's driver is
    gone), stages done, and per-stage item counts."""
    from nas.store import job_state

    manifest = store.manifest()
    items = manifest.get("progress", {})
    return {
        "job_id": store.job_id,
        "state": job_state(store, manifest),
        "stages_done": manifest.get("stages_done", []),
        "current_stage": manifest.get("current_stage"),
        "items": items,
    }

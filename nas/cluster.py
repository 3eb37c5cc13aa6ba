"""Running jobs on a Ray cluster through the Ray Job Submission API.

``submit`` packs the resolved spec into a working directory that Ray uploads, and starts
``nas run spec.json --job-id ID --results STORAGE`` on the cluster; the Ray submission id is
the job id, so ``status``/``logs``/``cancel`` take the same id the results store uses.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from nas.errors import JobError
from nas.spec import SearchSpec
from nas.store import JobStore, validate_job_id

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, bad address...
        raise JobError(
            f"cannot reach the Ray job server at {address}: {str(exc).splitlines()[0]}"
        ) from None


def submit(spec: SearchSpec, address: str, job_id: str, storage: Path) -> str:
    """Start the job on the cluster; returns the job id. Results go to ``storage/<job-id>``."""
    validate_job_id(job_id)
    client = _client(address)
    folder = Path(tempfile.mkdtemp(prefix="nas-submit-"))
    try:
        (folder / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        entrypoint = f"nas run spec.json --job-id {job_id} --results {storage.resolve()}"
        try:
            return client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env={"working_dir": str(folder)},
                metadata={"nas_job_id": job_id},
            )
        except Exception as exc:
            raise JobError(
                f"the cluster refused job {job_id}: {str(exc).splitlines()[0]}"
            ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ray_status(address: str, job_id: str) -> str:
    """The Ray job's state: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    client = _client(address)
    try:
        return str(client.get_job_status(validate_job_id(job_id)).value)
    except Exception as exc:
        raise JobError(f"no job {job_id} on {address}: {str(exc).splitlines()[0]}") from None


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
    """What the results store says: state, stages done, and per-stage item counts."""
    manifest = store.manifest()
    items = manifest.get("progress", {})
    return {
        "job_id": store.job_id,
        "state": manifest.get("state"),
        "stages_done": manifest.get("stages_done", []),
        "current_stage": manifest.get("current_stage"),
        "items": items,
    }

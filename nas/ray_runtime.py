"""Ray as an executor: connect to the spec's cluster, the enclosing Ray job, or start a local Ray.

Stages call ``ensure_ray(spec.ray)`` before submitting tasks. Inside a job submitted with
``nas submit``, Ray sets ``RAY_ADDRESS`` and the tasks run on that cluster.
"""

from __future__ import annotations

import os
import time

TASK_RETRIES = 3  # a task whose worker dies is re-run this many times


START_ATTEMPTS = 3  # a local Ray start that times out (a loaded machine) is tried this often
SLOW_START_TIMEOUT_S = "180"  # GCS request timeout for the retries (Ray's default: 60 s)


_LOCAL = {"started": False}  # whether this process started the Ray it is connected to


def stop_local_ray() -> bool:
    """Shut down the Ray this process started on this machine (its raylet, GCS and idle
    workers hold memory the later, Ray-free stages need); a cluster is left alone. A later
    ``ensure_ray`` starts a fresh one. Returns whether Ray was stopped."""
    import sys

    if not _LOCAL["started"] or "ray" not in sys.modules:
        return False
    import ray

    _LOCAL["started"] = False
    if not ray.is_initialized():
        return False
    ray.shutdown()
    return True


def ensure_ray(ray_section=None) -> None:
    """Initialise Ray once per process; no-op when already initialised.

    A local start is retried (``START_ATTEMPTS``, with a longer GCS timeout) because a busy
    machine can miss Ray's start-up deadlines; when every try fails, or a cluster cannot be
    reached, a ``JobError`` says in one line what to do.
    """
    import ray

    from nas.errors import JobError

    if ray.is_initialized():
        return
    address = getattr(ray_section, "address", None) or os.environ.get("RAY_ADDRESS")
    common = {"ignore_reinit_error": True, "log_to_driver": False, "configure_logging": False}
    if address:
        try:
            ray.init(address=address, **common)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, its own types
            raise JobError(f"cannot reach the Ray cluster at {address}: {explain(exc)}") from None
        return
    num_cpus = getattr(ray_section, "num_cpus", None) or os.cpu_count()
    last = ""
    for attempt in range(START_ATTEMPTS):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **common)
            _LOCAL["started"] = True
            return
        except Exception as exc:
            last = explain(exc)
            ray.shutdown()
            os.environ.setdefault("RAY_gcs_server_request_timeout_seconds", SLOW_START_TIMEOUT_S)
            time.sleep(2.0 * (attempt + 1))
    raise JobError(
        f"could not start a local Ray in {START_ATTEMPTS} tries ({last}); the machine is "
        "probably overloaded: retry when it is quieter, lower ray.num_cpus, or start Ray "
        "yourself (`ray start --head`) and set RAY_ADDRESS"
    )


def explain(exc: BaseException) -> str:
    """One line for a Ray failure, with the fix for Ray's token authentication."""
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    if "authentication token" in text.lower() or "unauthenticated" in text.lower():
        return (
            f"{first}; the cluster uses token authentication: export RAY_AUTH_MODE=token "
            "(with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token) and retry"
        )
    return first


def task_options(num_cpus: float = 1, resource: str | None = None, num_gpus: float = 0) -> dict:
    """Options for a Ray task: CPUs, GPUs, retries on a lost worker, an optional custom resource.

    ``resource`` (e.g. ``"hw:h100"``) pins the task to nodes that advertise it; ``num_gpus``
    (the spec's ``ray.gpus_per_task``) makes Ray place the task on a node with a free GPU and
    set its ``CUDA_VISIBLE_DEVICES``.
    """
    options: dict = {"num_cpus": num_cpus, "max_retries": TASK_RETRIES, "retry_exceptions": False}
    if resource:
        options["resources"] = {resource: 1}
    if num_gpus:
        options["num_gpus"] = num_gpus
    return options


def task_device() -> str:
    """``"cuda"`` inside a Ray task that was given a GPU (and torch sees one), else ``"cpu"``."""
    import ray
    import torch

    gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    return "cuda" if gpus and torch.cuda.is_available() else "cpu"


def as_completed(tasks: dict, what: str):
    """Yield ``(key, result)`` for ``{ObjectRef: key}`` as each task finishes.

    When a task fails (after its retries) the others are cancelled and a ``JobError`` names
    ``what`` and the task's key: the work finished so far is kept, so resuming retries the rest.
    """
    import ray

    from nas.errors import JobError

    pending = dict(tasks)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        key = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:
            for other in pending:
                ray.cancel(other)
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            raise JobError(
                f"{what} {key} failed: {last[:300]}; the work finished so far is kept, "
                "resume the job to retry"
            ) from None
        yield key, result

"""Ray as an executor: connect to the spec's cluster, the enclosing Ray job, or start a local Ray.

Stages call ``ensure_ray(spec.ray)`` before submitting tasks. Inside a job submitted with
``nas submit``, Ray sets ``RAY_ADDRESS`` and the tasks run on that cluster.
"""

from __future__ import annotations

import os

TASK_RETRIES = 3  # a task whose worker dies is re-run this many times


def ensure_ray(ray_section=None) -> None:
    """Initialise Ray once per process; no-op when already initialised."""
    import ray

    if ray.is_initialized():
        return
    address = getattr(ray_section, "address", None) or os.environ.get("RAY_ADDRESS")
    common = {"ignore_reinit_error": True, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **common)
    else:
        num_cpus = getattr(ray_section, "num_cpus", None) or os.cpu_count()
        ray.init(num_cpus=num_cpus, include_dashboard=False, **common)


def task_options(num_cpus: float = 1, resource: str | None = None) -> dict:
    """Options for a Ray task: CPUs, retries on a lost worker, an optional custom resource.

    ``resource`` (e.g. ``"hw:h100"``) pins the task to nodes that advertise it.
    """
    options: dict = {"num_cpus": num_cpus, "max_retries": TASK_RETRIES, "retry_exceptions": False}
    if resource:
        options["resources"] = {resource: 1}
    return options


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

"""The driver lease: which process is running a job, so a dead driver is seen, not guessed.

The process that runs a job's pipeline holds an exclusive ``flock`` on ``<job>/driver.lock``
(the kernel drops it when the process dies, however it dies) and keeps ``<job>/driver.json``
(host, pid, the pid's start time, a heartbeat every ``HEARTBEAT_S``) up to date. A second
driver of the same job is refused with ``JobBusy``. ``driver_alive`` answers from the pid on
this host (pid and start time must match, so a reused pid does not count) and from the age of
the heartbeat on another host (a shared results storage).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

from compress.atomic import atomic_write_json
from nas.errors import JobBusy
from nas.layout import JobLayout

HEARTBEAT_S = 10.0
STALE_AFTER_S = 6 * HEARTBEAT_S  # a remote driver silent this long is taken as gone


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def read_driver(job_dir: Path) -> dict | None:
    try:
        record = json.loads(JobLayout(job_dir).driver_record.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def driver_alive(job_dir: Path) -> bool:
    """Whether the job's last driver still runs (see the module docstring)."""
    record = read_driver(job_dir)
    if record is None:
        return False
    try:
        if record.get("host") == socket.gethostname():
            started = _start_time(int(record["pid"]))
            return started is not None and abs(started - float(record["pid_started"])) < 1.0
        return time.time() - float(record["heartbeat"]) < STALE_AFTER_S
    except (KeyError, TypeError, ValueError):
        return False


@contextlib.contextmanager
def driver_lease(job_dir: Path, job_id: str):
    """Hold the job's driver lease while the body runs; ``JobBusy`` if a live driver has it."""
    job_dir = Path(job_dir)
    handle = open(JobLayout(job_dir).driver_lock, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        other = read_driver(job_dir) or {}
        raise JobBusy(
            f"job {job_id} is being run by pid {other.get('pid', '?')} on "
            f"{other.get('host', '?')}; wait for it to end or cancel it first"
        ) from None
    pid = os.getpid()
    record = {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": _start_time(pid),
        "started": time.time(),
    }
    stop = threading.Event()

    def beat() -> None:
        while True:
            atomic_write_json(
                JobLayout(job_dir).driver_record, {**record, "heartbeat": time.time()}
            )
            if stop.wait(HEARTBEAT_S):
                return

    beat_once = {**record, "heartbeat": time.time()}
    atomic_write_json(JobLayout(job_dir).driver_record, beat_once)
    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=HEARTBEAT_S)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

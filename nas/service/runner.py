"""A bounded queue of child processes: at most ``slots`` run at once, each in its own session.

The service runs every job (``nas resume``) and every export (``nas export``) as a child
process of its own process group, so a cancel stops the child and everything it started.
``slots = 0`` accepts and queues work without starting any (a paused queue).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compress.errors import UserError


class QueueFull(UserError):
    """The queue holds its maximum of waiting tasks (429)."""


@dataclass
class Task:
    key: str
    command: list[str]
    log: Path
    on_exit: Callable[[int], None] | None = None  # called with the exit code (not on cancel)


class Runner:
    """Starts queued tasks as slots free up; ``cancel`` stops a queued or running one."""

    def __init__(self, slots: int, capacity: int, poll_s: float = 0.5):
        self.slots, self.capacity, self.poll_s = slots, capacity, poll_s
        self._queue: deque[Task] = deque()
        self._running: dict[str, tuple[Task, subprocess.Popen]] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="runner", daemon=True)
        self._thread.start()

    # --- queries ----------------------------------------------------------------------------
    def state(self, key: str) -> str | None:
        with self._cond:
            if key in self._running:
                return "running"
            return "queued" if any(t.key == key for t in self._queue) else None

    def position(self, key: str) -> int | None:
        """1 for the next task to start, None when ``key`` is not waiting."""
        with self._cond:
            for index, task in enumerate(self._queue):
                if task.key == key:
                    return index + 1
        return None

    # --- changes ----------------------------------------------------------------------------
    def submit(self, task: Task) -> int:
        """Queue ``task``; returns its position. ``QueueFull`` when ``capacity`` are waiting."""
        with self._cond:
            if len(self._queue) >= self.capacity:
                raise QueueFull(
                    f"the queue is full ({self.capacity} waiting); try again when a job has ended"
                )
            self._queue.append(task)
            self._cond.notify_all()
            return len(self._queue)

    def cancel(self, key: str, grace_s: float = 10.0) -> bool:
        """Drop a queued task or stop a running one (SIGTERM to its group, SIGKILL after
        ``grace_s``); True when there was one. Returns after the process has exited."""
        with self._cond:
            for task in list(self._queue):
                if task.key == key:
                    self._queue.remove(task)
                    return True
            entry = self._running.pop(key, None)
        if entry is None:
            return False
        _stop_group(entry[1], grace_s)
        with self._cond:
            self._cond.notify_all()
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the loop and every running task (queued ones stay queued on disk)."""
        with self._cond:
            self._stopped = True
            running = list(self._running.values())
            self._running.clear()
            self._cond.notify_all()
        for _, proc in running:
            _stop_group(proc, grace_s)
        self._thread.join(timeout=grace_s)

    # --- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            finished = []
            with self._cond:
                if self._stopped:
                    return
                for key, (task, proc) in list(self._running.items()):
                    code = proc.poll()
                    if code is not None:
                        del self._running[key]
                        finished.append((task, code))
                while self._queue and len(self._running) < self.slots:
                    task = self._queue.popleft()
                    self._running[task.key] = (task, _start(task))
            for task, code in finished:
                if task.on_exit is not None:
                    task.on_exit(code)
            with self._cond:
                if not self._stopped:
                    self._cond.wait(self.poll_s)


def _start(task: Task) -> subprocess.Popen:
    task.log.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log, "ab") as log:
        return subprocess.Popen(
            task.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue

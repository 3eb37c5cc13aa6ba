"""Progress of long steps, in one style everywhere.

On a terminal: rich bars (description, bar, done/total, elapsed, ETA); a step started inside
another one adds its bar to the same display and removes it when done. Elsewhere (a pipe, a
log file, a Ray job's log): plain single lines without carriage returns, at most one every
``interval_s`` seconds per step plus a first and a last line, e.g.::

    [bld] variants: 45/90 (50%), 0:42 elapsed, eta 0:42
    [bld] variants: 90/90 done in 1:24

``NAS_PROGRESS`` overrides the choice: ``rich``, ``plain`` or ``off``; ``NAS_PROGRESS_INTERVAL``
sets the plain style's seconds between lines (default 15).

Usage::

    with progress("[scoring] variants", total) as bar:
        for ...:
            bar.advance()          # or bar.update(completed)
    for batch in track(batches, "[eval] requests", total=len(batches)):
        ...
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
DEFAULT_INTERVAL_S = 15.0


def style() -> str:
    """``rich``, ``plain`` or ``off``: ``$NAS_PROGRESS`` if set, else rich on a terminal."""
    chosen = os.environ.get("NAS_PROGRESS", "").strip().lower()
    if chosen in ("rich", "plain", "off"):
        return chosen
    return "rich" if sys.stdout.isatty() else "plain"


def _now() -> float:
    return time.monotonic()


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Bar:
    """One step's progress; made by ``progress``. ``update(completed)`` sets the count,
    ``advance(n)`` adds to it. Counts beyond ``total`` are shown as they are."""

    def __init__(self, description: str, total: int, completed: int, interval_s: float | None):
        self.description = description
        self.total = max(0, int(total))
        self.completed = int(completed)
        self.style = style()
        env_interval = os.environ.get("NAS_PROGRESS_INTERVAL")
        self.interval_s = (
            interval_s
            if interval_s is not None
            else float(env_interval)
            if env_interval
            else DEFAULT_INTERVAL_S
        )
        self._t0 = _now()
        self._last_line = -float("inf")
        self._task = None

    # --- counting ---------------------------------------------------------------------------
    def update(self, completed: int) -> None:
        self.completed = int(completed)
        self._show()

    def advance(self, n: int = 1) -> None:
        self.update(self.completed + n)

    # --- display ----------------------------------------------------------------------------
    def line(self, final: bool = False, now: float | None = None) -> str:
        """The plain-style line for the current count."""
        elapsed = (_now() if now is None else now) - self._t0
        if final:
            return f"{self.description}: {self.completed}/{self.total} done in {_clock(elapsed)}"
        text = f"{self.description}: {self.completed}/{self.total}"
        if self.total:
            text += f" ({100 * self.completed // self.total}%)"
        text += f", {_clock(elapsed)} elapsed"
        if 0 < self.completed < self.total:
            text += f", eta {_clock(elapsed / self.completed * (self.total - self.completed))}"
        return text

    def _print(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def _show(self) -> None:
        if self.style == "rich" and self._task is not None:
            _LIVE.progress.update(self._task, completed=self.completed)
        elif self.style == "plain":
            now = _now()
            if now - self._last_line >= self.interval_s:
                self._last_line = now
                self._print(self.line(now=now))

    def __enter__(self) -> Bar:
        if self.style == "rich":
            self._task = _LIVE.add(self.description, self.total, self.completed)
        elif self.style == "plain":
            self._show()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.style == "rich" and self._task is not None:
            _LIVE.remove(self._task)
        elif self.style == "plain" and exc_type is None:
            self._print(self.line(final=True))


class _Live:
    """The one rich display shared by nested steps (rich allows one live display at a time).
    The outermost step's bar stays on screen when it ends; inner bars are removed."""

    def __init__(self):
        self.progress = None
        self.tasks: list = []

    def add(self, description: str, total: int, completed: int):
        if self.progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            self.progress.start()
        task = self.progress.add_task(description, total=total, completed=completed)
        self.tasks.append(task)
        return task

    def remove(self, task) -> None:
        self.tasks.remove(task)
        if self.tasks:
            self.progress.remove_task(task)
        else:
            self.progress.refresh()
            self.progress.stop()
            self.progress = None


_LIVE = _Live()


def progress(
    description: str, total: int, completed: int = 0, interval_s: float | None = None
) -> Bar:
    """A context manager showing one step's progress (see the module docstring)."""
    return Bar(description, total, completed, interval_s)


def track(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    interval_s: float | None = None,
) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (``total`` defaults to ``len(items)``)."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total, interval_s=interval_s) as bar:
        for item in items:
            yield item
            bar.advance()

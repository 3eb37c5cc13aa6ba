"""Pareto dominance over plain rows (pure: no pandas, torch or Ray)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Row = TypeVar("Row")


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one (lower is better)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def non_dominated(rows: Sequence[Row], objectives: Callable[[Row], Sequence[float]]) -> list[Row]:
    """The rows no other row dominates, in their order; ``objectives(row)`` gives the values
    to minimise (negate one to maximise it). Rows with equal objectives all stay."""
    values = [tuple(objectives(r)) for r in rows]
    return [
        row
        for i, row in enumerate(rows)
        if not any(dominates(other, values[i]) for j, other in enumerate(values) if j != i)
    ]

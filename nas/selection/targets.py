"""Targets: sets of bounds solved together, optionally swept over one of them (pure).

A ``Target`` holds fixed ``bounds`` (each ``metric <= value`` or ``metric >= value``) and,
optionally, one swept bound (``metric`` over ``values``). Each swept value, together with every
fixed bound, is one request: the MIP meets all of its bounds at once. A target without a swept
metric is one request of its fixed bounds. Metrics: any cost metric of the problem (custom ones
by name) or a human target (``decode_throughput_tps``, ``prefill_throughput_tps``, ``ttft_ms``;
see ``nas.selection.costs``). Values are absolute or, with ``relative``, ratios of the parent's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nas.selection.costs import (
    BOUNDS,
    Budget,
    SelectionProblem,
    Workload,
    parse_bound,
    resolve_target,
)
from nas.selection.errors import SelectionError


@dataclass(frozen=True)
class Bound:
    """One fixed bound of a target: ``metric <= value`` (``max``) or ``>= value`` (``min``)."""

    metric: str
    value: float
    bound: str = "max"
    relative: bool = False

    def __post_init__(self) -> None:
        if self.bound not in BOUNDS:
            raise SelectionError(f"a bound is 'max' or 'min', got {self.bound!r}")

    @classmethod
    def parse(cls, text: str, relative: bool = False) -> Bound:
        """``"memory_mib<=80000"`` (or ``>=``)."""
        metric, bound, value = parse_bound(text)
        return cls(metric, value, bound, relative)

    def budget(self, problem: SelectionProblem, workload: Workload) -> Budget:
        return resolve_target(
            problem, self.metric, self.value, self.relative, bound=self.bound, workload=workload
        )


@dataclass(frozen=True)
class Target:
    """A sweep of one bound (``metric`` over ``values``; ``bound``: ``max`` by default, ``min``
    for throughputs) with every bound of ``bounds`` held in each solve; or, without ``metric``,
    one solve of ``bounds``."""

    metric: str | None = None
    values: tuple[float, ...] = ()
    relative: bool = True
    bounds: tuple[Bound, ...] = ()
    bound: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "bounds", tuple(self.bounds))
        if self.metric is None and (self.values or not self.bounds):
            raise SelectionError("a target sweeps a metric over values, or holds bounds, or both")
        if self.metric is not None and not self.values:
            raise SelectionError(f"target {self.metric}: give at least one value")

    @classmethod
    def of(cls, section) -> Target:
        """From a spec's ``TargetSection`` (``metric``, ``values``, ``relative`` and, when it has
        them, ``bound`` and ``bounds``: each with ``metric``, ``min`` / ``max``, ``relative``)."""
        bounds = []
        for b in getattr(section, "bounds", None) or ():
            relative = section.relative if b.relative is None else b.relative
            for kind in BOUNDS:
                value = getattr(b, kind)
                if value is not None:
                    bounds.append(Bound(b.metric, float(value), kind, relative))
        return cls(
            section.metric,
            tuple(section.values or ()),
            bool(section.relative),
            tuple(bounds),
            getattr(section, "bound", None),
        )

    def absolute(self, problem: SelectionProblem, workload: Workload) -> Target:
        """The same target with every relative value turned into its absolute value on
        ``problem`` (e.g. to apply one target to several batch sizes' problems alike)."""
        bounds = tuple(
            Bound(b.metric, b.budget(problem, workload).target_value, b.bound) for b in self.bounds
        )
        if self.metric is None:
            return Target(bounds=bounds)
        values = tuple(
            resolve_target(
                problem, self.metric, v, self.relative, bound=self.bound, workload=workload
            ).target_value
            for v in self.values
        )
        return Target(self.metric, values, False, bounds, self.bound)

    def requests(self, problem: SelectionProblem, workload: Workload) -> list[list[Budget]]:
        """One list of budgets per solve (the swept bound first)."""
        fixed = [b.budget(problem, workload) for b in self.bounds]
        if self.metric is None:
            return [fixed]
        return [
            [
                resolve_target(
                    problem, self.metric, v, self.relative, bound=self.bound, workload=workload
                ),
                *fixed,
            ]
            for v in self.values
        ]


def request_label(budgets: Sequence[Budget]) -> str:
    """``prefill_latency_ms<=3.2 & memory_mib<=800``: what a front row's ``target`` says."""
    return " & ".join(b.label for b in budgets)

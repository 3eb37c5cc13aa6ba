"""AmoebaLLM's depth selection: a layer-by-layer dynamic program over layer masks (pure).

State ``(i, m)``: the first ``i`` layers have been decided and ``m`` of them removed; the state
keeps the best such mask, with every later layer still kept. Step ``i`` (0-based layer ``i``)
fills state ``(i + 1, m)`` with the better of

- keep layer ``i``: the mask of ``(i, m)`` unchanged, and
- drop layer ``i``: the mask of ``(i, m - 1)`` with layer ``i`` removed,

judged by ``metric(mask)`` of the whole candidate mask (lower is better, e.g. KL from the parent
on calibration tokens). After the last droppable layer, state ``(D, m)`` holds the mask for
``N - m`` layers, so one pass yields a mask for every depth. The last ``keep_last`` layers are
never dropped. The metric is called at most once per distinct mask (about ``D * M`` calls for
``D`` droppable layers and up to ``M`` removed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nas.selection.errors import SelectionError

Mask = tuple[bool, ...]
"""One entry per layer: True = the layer is kept."""

STRATEGY = "amoeba-dp"


@dataclass(frozen=True)
class DepthMask:
    """The best mask found for one depth: ``removed`` layers dropped, ``metric`` its value."""

    mask: Mask
    removed: int
    metric: float

    @property
    def kept(self) -> int:
        return sum(self.mask)

    @property
    def dropped_layers(self) -> tuple[int, ...]:
        return tuple(i for i, keep in enumerate(self.mask) if not keep)


def depth_dp(
    num_layers: int,
    metric: Callable[[Mask], float],
    *,
    keep_last: int = 0,
    max_removed: int | None = None,
) -> list[DepthMask]:
    """One mask per depth, ``N - m`` layers for ``m = 0 .. max_removed``, in that order.

    ``metric(mask) -> float`` scores a whole layer mask (lower is better). ``keep_last`` layers at
    the end are always kept; ``max_removed`` defaults to every droppable layer while keeping at
    least one layer. Raises ``SelectionError`` for impossible settings or a non-finite metric.
    """
    if num_layers < 1:
        raise SelectionError(f"depth DP needs at least one layer, got {num_layers}")
    if not 0 <= keep_last <= num_layers:
        raise SelectionError(f"keep_last must be in [0, {num_layers}], got {keep_last}")
    droppable = num_layers - keep_last
    limit = min(droppable, num_layers - 1)
    if max_removed is None:
        max_removed = limit
    if not 0 <= max_removed <= limit:
        raise SelectionError(
            f"max_removed must be in [0, {limit}] for {num_layers} layers keeping the last "
            f"{keep_last} (and at least one layer), got {max_removed}"
        )

    cache: dict[Mask, float] = {}

    def evaluate(mask: Mask) -> float:
        if mask not in cache:
            value = float(metric(mask))
            if not math.isfinite(value):
                raise SelectionError(f"the depth metric returned {value} for mask {_show(mask)}")
            cache[mask] = value
        return cache[mask]

    full: Mask = (True,) * num_layers
    best: dict[int, tuple[Mask, float]] = {0: (full, evaluate(full))}
    for layer in range(droppable):
        step: dict[int, tuple[Mask, float]] = {}
        for m in range(min(layer + 1, max_removed) + 1):
            candidates = []
            if m in best:  # keep this layer
                candidates.append(best[m])
            if m - 1 in best:  # drop this layer
                mask = best[m - 1][0][:layer] + (False,) + best[m - 1][0][layer + 1 :]
                candidates.append((mask, evaluate(mask)))
            step[m] = min(candidates, key=lambda c: c[1])  # ties: keep (listed first)
        best = step
    return [DepthMask(best[m][0], m, best[m][1]) for m in range(max_removed + 1)]


def mask_choices(
    mask: Sequence[bool],
    kept: tuple[str, str] = ("attention:parent", "ffn:parent"),
    dropped: tuple[str, str] = ("attention:noop", "ffn:noop"),
) -> tuple[tuple[str, str], ...]:
    """Per-layer (attention, FFN) choices of a depth mask: kept layers as the parent, dropped
    layers as no-ops (so a mask can be costed and scored like any other choice)."""
    return tuple(kept if keep else dropped for keep in mask)


def _show(mask: Mask) -> str:
    return "".join("1" if keep else "0" for keep in mask)

"""Search strategies that need the model (torch side); the pure ones live in ``nas.selection``.

- ``amoeba-dp`` (``nas.strategies.depth.amoeba_dp_points``): AmoebaLLM depth selection, one
  layer mask per depth from the dynamic programme in ``nas.selection.depth_dp`` with the KL of
  the layer-dropped parent on calibration tokens as its metric.
- ``diswot-evolution`` (``nas.strategies.evolution.diswot_evolution``): NSGA-II (Optuna,
  through Ray Tune) over homogeneous students, DisWOT score up and predicted latency down.

Both return ``StrategyPoint``s: per-layer choices in the Pareto table's form plus the
strategy's own numbers, for the selection stage to cost, score and merge into the front.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nas.selection.problem import Choices

PARENT_LAYER = ("attention:parent", "ffn:parent")
DROPPED_LAYER = ("attention:noop", "ffn:noop")


@dataclass(frozen=True)
class StrategyPoint:
    """One candidate student found by a strategy.

    ``choices`` has one (attention, ffn) pair of canonical variant strings per parent layer;
    ``metrics`` holds the strategy's own measurements (e.g. ``calib_kl``, ``diswot``,
    ``predicted_latency_ms``), all floats.
    """

    strategy: str
    choices: Choices
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "choices": [list(pair) for pair in self.choices],
            **self.metrics,
        }


__all__ = ["Choices", "StrategyPoint", "PARENT_LAYER", "DROPPED_LAYER"]

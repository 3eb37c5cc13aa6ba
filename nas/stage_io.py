"""What each stage of a job takes and returns: plain frozen dataclasses, no stage imported.

``nas.pipeline.run_job`` passes these from one stage to the next. A stage whose record exists in
the job's store reads its result back instead of recomputing it, so the values are the same on
a resumed job. Model-side types (``Parent``, ``TokenSplits``, ``HardwareProfile``) are named
for type checkers only: importing this module imports neither torch nor any stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from compress.data import TokenSplits
    from compress.loading import Parent
    from compress.profile import HardwareProfile

Report = Callable[[str], None]


@dataclass(frozen=True)
class Baseline:
    """The parent's LM loss (nats/token) and perplexity on the calibration eval split."""

    loss: float
    perplexity: float
    tokens: int
    wall_s: float


@dataclass(frozen=True)
class Prepared:
    """Output of the baseline stage: the parent, its calibration data and its baseline."""

    parent: Parent
    splits: TokenSplits
    baseline: Baseline
    eval_sets: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N, seq_len) ids


@dataclass(frozen=True)
class Captured:
    """Output of the capture stage: the two activation folders."""

    train_dir: Path
    heldout_dir: Path
    train_tokens: int
    heldout_tokens: int


@dataclass(frozen=True)
class BLDResult:
    """Output of the BLD stage. ``complete`` is False when ``limit`` stopped it early."""

    library_dir: Path
    total: int
    trained: int
    skipped: int
    complete: bool
    wall_s: float


@dataclass(frozen=True)
class ScoringResult:
    """Output of the scoring stage: where the scores are, how many exist, how many this run made."""

    scores_dir: Path
    scored: int
    computed: int
    wall_s: float


@dataclass(frozen=True)
class Selection:
    """Output of the selection stage: the front's size, its primary metric and the hardware
    profiles it was costed with (``metric -> profile``; the students stage measures with the
    primary one, so it never resolves the profiles again)."""

    points: int
    primary_metric: str
    profiles: dict[str, HardwareProfile]

    @property
    def primary_profile(self) -> HardwareProfile | None:
        """The profile of the primary metric (the first one when the primary is not a latency)."""
        if self.primary_metric in self.profiles:
            return self.profiles[self.primary_metric]
        return next(iter(self.profiles.values()), None)


@dataclass(frozen=True)
class Rerank:
    """Output of the rerank stage: budgets reranked, solutions measured, budgets changed."""

    budgets: int
    measured: int
    changed: int


@dataclass(frozen=True)
class Students:
    """Output of the students stage: points measured and each point's exported formats."""

    measured: int
    exported: dict[str, list[str]]

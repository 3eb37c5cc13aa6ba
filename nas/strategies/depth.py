"""AmoebaLLM depth selection: the torch side of the dynamic programme.

``CalibrationKL`` is the DP's metric: for a layer mask (True = layer kept, as in
``nas.selection.depth_dp``), the mean per-token KL(parent || parent without the dropped layers)
on calibration tokens. The parent's residual stream at every layer input is cached once, so a
mask whose first dropped layer is r runs only layers r.. (the prefix is exact); results are
memoised per mask. ``depth_masks`` runs the pure DP (``depth_dp``) with it;
``amoeba_dp_points`` turns its masks into strategy points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compress.model import BlockModel
from compress.scoring import ActivationCache, score_from_layer
from nas.selection.depth_dp import DepthMask, depth_dp, mask_choices
from nas.strategies import StrategyPoint


class CalibrationKL:
    """metric(mask) -> KL (nats/token) of the parent keeping only the layers flagged True."""

    def __init__(self, parent: BlockModel, calib_tokens: torch.Tensor, batch_size: int = 8):
        self.parent = parent
        self.batch_size = batch_size
        self.cache = ActivationCache.build(parent, calib_tokens, batch_size=batch_size)
        self.memo: dict[tuple[bool, ...], float] = {}
        self.evaluations = 0

    def __call__(self, mask: Sequence[bool]) -> float:
        kept = tuple(bool(m) for m in mask)
        if len(kept) != self.parent.num_layers:
            raise ValueError(f"mask has {len(kept)} entries for {self.parent.num_layers} layers")
        if kept not in self.memo:
            skip = frozenset(i for i, keep in enumerate(kept) if not keep)
            start = min(skip) if skip else self.parent.num_layers
            result = score_from_layer(self.parent, self.cache, start, self.batch_size, skip=skip)
            self.memo[kept] = result.kl
            self.evaluations += 1
        return self.memo[kept]


def depth_masks(
    parent: BlockModel,
    calib_tokens: torch.Tensor,
    keep_last: int = 0,
    max_removed: int | None = None,
    batch_size: int = 8,
) -> list[DepthMask]:
    """The DP's best mask per number of removed layers (0, 1, ...), scored by ``CalibrationKL``."""
    metric = CalibrationKL(parent, calib_tokens, batch_size)
    return depth_dp(parent.num_layers, metric, keep_last=keep_last, max_removed=max_removed)


def amoeba_dp_points(
    parent: BlockModel,
    calib_tokens: torch.Tensor,
    keep_last: int = 0,
    max_removed: int | None = None,
    batch_size: int = 8,
) -> list[StrategyPoint]:
    """One ``amoeba-dp`` point per depth, in order of layers removed (0 = the parent)."""
    return masks_to_points(depth_masks(parent, calib_tokens, keep_last, max_removed, batch_size))


def masks_to_points(masks: Sequence[DepthMask]) -> list[StrategyPoint]:
    """``amoeba-dp`` points of the DP's masks: dropped layers are attention and FFN ``noop``;
    metrics ``layers_removed`` and ``calib_kl``. (``{m.removed: m.mask for m in masks}`` is the
    ``depth_masks`` argument of ``diswot_evolution``.)"""
    return [
        StrategyPoint(
            "amoeba-dp",
            mask_choices(m.mask),
            {"layers_removed": float(m.removed), "calib_kl": m.metric},
        )
        for m in masks
    ]

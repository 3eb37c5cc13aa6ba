"""Building variant modules: ``build_variant`` dispatches on the spec's type to its family.

``build_variant(spec, parent_subblock, init)`` returns a module with the same contract as the
parent subblock (``compress.blocks``). ``init`` optionally carries calibration activations of
that subblock (its inputs and the parent's outputs); families that initialise from data
(importance-based width, least-squares linear) use it, and fall back to a data-free
initialisation without it (good enough for latency measurement, not for quality).
Adding a variant family is one new module in ``compress/families/`` and one registration line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.families.attention_gqa import kv_head_groups  # noqa: F401  (re-exported)
from compress.families.ffn_width import ffn_channel_importance, shrink_ffn  # noqa: F401
from compress.families.linear import least_squares  # noqa: F401
from compress.variants import VariantSpec


@dataclass
class InitData:
    """Calibration activations of one subblock: inputs (N, hidden), parent outputs (N, hidden)."""

    inputs: torch.Tensor
    outputs: torch.Tensor


def build_variant(
    spec: VariantSpec, parent_subblock: nn.Module, init: InitData | None = None
) -> nn.Module:
    """A fresh module for ``spec`` derived from ``parent_subblock`` (never shares its tensors)."""
    module = spec.family.build(spec, parent_subblock, init)
    return module.to(next(parent_subblock.parameters()).dtype)

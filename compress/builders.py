"""Building variant modules: one registry from variant type to builder.

``build_variant(spec, parent_subblock, init)`` returns a module with the same contract as the
parent subblock (``compress.blocks``). ``init`` optionally carries calibration activations of
that subblock (its inputs and the parent's outputs); builders that initialise from data
(importance-based width, least-squares linear) use it, and fall back to a data-free
initialisation without it (good enough for latency measurement, not for quality).
Adding a variant family is one new ``@register("type")`` function.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.blocks import GatedFFN, GQAttention, LinearSubblock, NoopSubblock
from compress.variants import VariantSpec


@dataclass
class InitData:
    """Calibration activations of one subblock: inputs (N, hidden), parent outputs (N, hidden)."""

    inputs: torch.Tensor
    outputs: torch.Tensor


Builder = Callable[[VariantSpec, nn.Module, "InitData | None"], nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register(variant_type: str):
    def wrap(fn: Builder) -> Builder:
        _BUILDERS[variant_type] = fn
        return fn

    return wrap


def build_variant(
    spec: VariantSpec, parent_subblock: nn.Module, init: InitData | None = None
) -> nn.Module:
    """A fresh module for ``spec`` derived from ``parent_subblock`` (never shares its tensors)."""
    try:
        builder = _BUILDERS[spec.type]
    except KeyError:
        raise ValueError(f"no builder registered for {spec}") from None
    module = builder(spec, parent_subblock, init)
    return module.to(next(parent_subblock.parameters()).dtype)


@register("parent")
def _parent(spec: VariantSpec, parent: nn.Module, init: InitData | None) -> nn.Module:
    return copy.deepcopy(parent)


@register("noop")
def _noop(spec: VariantSpec, parent: nn.Module, init: InitData | None) -> nn.Module:
    return NoopSubblock()


# --- attention with fewer KV heads ------------------------------------------------------------
def kv_head_groups(num_heads: int, parent_kv: int, new_kv: int) -> list[list[int]]:
    """For each new KV head, the parent KV heads its query heads used (with repeats).

    Query head q reads parent KV head ``q // (num_heads / parent_kv)``; after the change it
    reads new KV head ``q // (num_heads / new_kv)``. Averaging the parent heads listed here
    (weighted by how many query heads moved) initialises each new head.
    """
    per_parent, per_new = num_heads // parent_kv, num_heads // new_kv
    groups: list[list[int]] = [[] for _ in range(new_kv)]
    for q in range(num_heads):
        groups[q // per_new].append(q // per_parent)
    return groups


def _average_heads(weight: torch.Tensor, head_dim: int, groups: list[list[int]]) -> torch.Tensor:
    """weight (parent_kv * head_dim, ...) -> (len(groups) * head_dim, ...)."""
    heads = weight.view(-1, head_dim, *weight.shape[1:])
    return torch.cat([heads[g].mean(0) for g in groups], dim=0)


@register("kv_heads")
def _kv_heads(spec: VariantSpec, parent: nn.Module, init: InitData | None) -> nn.Module:
    if not isinstance(parent, GQAttention):
        raise TypeError(f"{spec} needs the parent attention, got {type(parent).__name__}")
    hidden = parent.q_proj.in_features
    bias = parent.q_proj.bias is not None
    module = GQAttention(
        hidden,
        parent.num_heads,
        spec.value,
        parent.head_dim,
        bias,
        copy.deepcopy(parent.rotary),
        parent.input_layernorm.eps,
    )
    groups = kv_head_groups(parent.num_heads, parent.num_kv_heads, spec.value)
    with torch.no_grad():
        module.input_layernorm.weight.copy_(parent.input_layernorm.weight)
        module.q_proj.weight.copy_(parent.q_proj.weight)
        module.o_proj.weight.copy_(parent.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(parent, name), getattr(module, name)
            dst.weight.copy_(_average_heads(src.weight, parent.head_dim, groups))
            if bias:
                dst.bias.copy_(_average_heads(src.bias, parent.head_dim, groups))
        if bias:
            module.q_proj.bias.copy_(parent.q_proj.bias)
    return module


# --- FFN of reduced width ---------------------------------------------------------------------
@torch.no_grad()
def ffn_channel_importance(
    parent: GatedFFN, inputs: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Per intermediate channel: variance over tokens of its activation x ||down column||^2.

    inputs (N, hidden) are the FFN subblock's inputs (before its norm). Returns (intermediate,).
    """
    count, mean, m2 = 0, None, None
    for start in range(0, inputs.shape[0], chunk):
        act = parent.intermediate(
            inputs[start : start + chunk].to(parent.gate_proj.weight.dtype)
        ).float()
        n = act.shape[0]
        b_mean = act.mean(0)
        b_m2 = ((act - b_mean) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = n, b_mean, b_m2
        else:  # Chan et al. parallel variance update
            delta = b_mean - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + b_m2 + delta**2 * count * n / total
            count = total
    variance = m2 / max(count - 1, 1)
    return variance * parent.down_proj.weight.float().pow(2).sum(0)


def shrink_ffn(parent: GatedFFN, channels: torch.Tensor) -> GatedFFN:
    """A narrower copy of ``parent`` keeping the given intermediate channels (in that order)."""
    channels = torch.as_tensor(channels, dtype=torch.long).sort().values
    hidden = parent.gate_proj.in_features
    bias = parent.gate_proj.bias is not None
    module = GatedFFN(
        hidden, len(channels), parent.hidden_act, parent.post_attention_layernorm.eps, bias
    )
    with torch.no_grad():
        module.post_attention_layernorm.weight.copy_(parent.post_attention_layernorm.weight)
        module.gate_proj.weight.copy_(parent.gate_proj.weight[channels])
        module.up_proj.weight.copy_(parent.up_proj.weight[channels])
        module.down_proj.weight.copy_(parent.down_proj.weight[:, channels])
        if bias:
            module.gate_proj.bias.copy_(parent.gate_proj.bias[channels])
            module.up_proj.bias.copy_(parent.up_proj.bias[channels])
            module.down_proj.bias.copy_(parent.down_proj.bias)
    return module


@register("width")
def _width(spec: VariantSpec, parent: nn.Module, init: InitData | None) -> nn.Module:
    if not isinstance(parent, GatedFFN):
        raise TypeError(f"{spec} needs the parent FFN, got {type(parent).__name__}")
    if init is None:  # data-free: keep the channels whose down columns are largest
        scores = parent.down_proj.weight.float().pow(2).sum(0)
    else:
        scores = ffn_channel_importance(parent, init.inputs)
    return shrink_ffn(parent, scores.topk(spec.value).indices)


# --- linear replacement -----------------------------------------------------------------------
@register("linear")
def _linear(spec: VariantSpec, parent: nn.Module, init: InitData | None) -> nn.Module:
    norm = parent.input_layernorm if spec.kind == "attention" else parent.post_attention_layernorm
    hidden = norm.weight.shape[0]
    module = LinearSubblock(hidden, norm.eps)
    with torch.no_grad():
        module.norm.weight.copy_(norm.weight)
        module.linear.weight.zero_()
        if init is not None:
            module.linear.weight.copy_(
                least_squares(module.norm(init.inputs.float()), init.outputs.float())
            )
    return module


def least_squares(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """W (out, in) minimising ||x W^T - y||^2 + ridge * trace(x^T x)/in * ||W||^2; x (N, in), y (N, out)."""
    x, y = x.double(), y.double()
    xtx = x.T @ x
    reg = ridge * xtx.diagonal().mean().clamp_min(1e-12)
    w_t = torch.linalg.solve(xtx + reg * torch.eye(xtx.shape[0], dtype=xtx.dtype), x.T @ y)
    return w_t.T.float()

"""``attention:kv_heads=N``: grouped-query attention with fewer KV heads than the parent.

Each new KV head starts as the average of the parent KV heads its query heads read.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from compress.blocks import GQAttention, Rotary
from compress.families.base import Family, register
from compress.variants import VariantSpec


def attention_params(shape, kv_heads: int) -> int:
    """Parameters of a GQA subblock with ``kv_heads`` KV heads (q, k, v, o, biases, norm)."""
    h, hd = shape.hidden_size, shape.head_dim
    q = shape.num_heads * hd
    bias = (q + 2 * kv_heads * hd) if shape.attention_bias else 0
    return h * q + 2 * h * kv_heads * hd + q * h + bias + h


def check_kv_heads(spec, shape, kv_heads: int) -> None:
    if kv_heads > shape.num_kv_heads or shape.num_heads % kv_heads:
        raise ValueError(
            f"{spec}: KV heads must divide the {shape.num_heads} query heads and be at most "
            f"the parent's {shape.num_kv_heads}"
        )


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


def init_from_parent(module: GQAttention, parent: GQAttention) -> GQAttention:
    """Copy the parent's norm, q and o; average its k and v heads into ``module``'s groups."""
    if not isinstance(parent, GQAttention):
        raise TypeError(f"needs the parent attention, got {type(parent).__name__}")
    bias = parent.q_proj.bias is not None
    groups = kv_head_groups(parent.num_heads, parent.num_kv_heads, module.num_kv_heads)
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


def gqa_like(parent: GQAttention, kv_heads: int, cls=GQAttention, **extra) -> GQAttention:
    """An uninitialised ``cls`` with the parent's sizes and rotary, ``kv_heads`` KV heads."""
    return cls(
        parent.q_proj.in_features,
        parent.num_heads,
        kv_heads,
        parent.head_dim,
        parent.q_proj.bias is not None,
        copy.deepcopy(parent.rotary),
        parent.input_layernorm.eps,
        **extra,
    )


def empty_gqa(arch, kv_heads: int, cls=GQAttention, **extra) -> GQAttention:
    """An empty ``cls`` of ``arch``'s sizes (rotary frequencies required)."""
    if arch.inv_freq is None:
        raise ValueError("attention needs the rotary frequencies (rotary.inv_freq)")
    s = arch.shape
    rotary = Rotary(arch.inv_freq, arch.attention_scaling)
    return cls(
        s.hidden_size, s.num_heads, kv_heads, s.head_dim, s.attention_bias, rotary,
        arch.rms_norm_eps, **extra,
    )  # fmt: skip


def gqa_block(kv_heads: int) -> dict:
    return {"no_op": False, "replace_with_linear": False, "num_key_value_heads": kv_heads}


@register
class KVHeads(Family):
    type = "kv_heads"
    kinds = ("attention",)
    takes_value = True
    homogeneous = True
    bare_number = "attention"

    def check(self, spec, shape):
        check_kv_heads(spec, shape, spec.value)

    def params(self, spec, shape):
        return attention_params(shape, spec.value)

    def kv_heads(self, spec, shape):
        return spec.value

    def build(self, spec, parent, init) -> nn.Module:
        return init_from_parent(gqa_like(parent, spec.value), parent)

    def empty(self, spec, arch):
        return empty_gqa(arch, spec.value)

    def recognise(self, kind, module, shape):
        if type(module) is GQAttention and module.num_kv_heads != shape.num_kv_heads:
            return VariantSpec(kind, self.type, module.num_kv_heads)
        return None

    def hf_block(self, spec, shape):
        return gqa_block(spec.value)

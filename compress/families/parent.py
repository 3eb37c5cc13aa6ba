"""``attention:parent`` / ``ffn:parent``: the parent's own subblock, copied."""

from __future__ import annotations

import copy

from compress.blocks import GatedFFN, GQAttention
from compress.export.nas_llm_layers import is_int8
from compress.families.attention_gqa import attention_params, empty_gqa, gqa_block
from compress.families.base import Family, register
from compress.families.ffn_width import empty_ffn, ffn_block, ffn_params
from compress.variants import VariantSpec


@register
class Parent(Family):
    type = "parent"
    trainable = False
    homogeneous = True

    def params(self, spec, shape):
        if spec.kind == "attention":
            return attention_params(shape, shape.num_kv_heads)
        return ffn_params(shape, shape.intermediate_size)

    def kv_heads(self, spec, shape):
        return shape.num_kv_heads if spec.kind == "attention" else 0

    def build(self, spec, parent, init):
        return copy.deepcopy(parent)

    def empty(self, spec, arch):
        s = arch.shape
        if spec.kind == "attention":
            return empty_gqa(arch, s.num_kv_heads)
        return empty_ffn(arch, s.intermediate_size)

    @staticmethod
    def parent_shaped(kind, module, shape) -> bool:
        """``module`` has the parent's class and sizes (whatever its layers compute in)."""
        if kind == "attention":
            return type(module) is GQAttention and module.num_kv_heads == shape.num_kv_heads
        return type(module) is GatedFFN and module.intermediate_size == shape.intermediate_size

    def recognise(self, kind, module, shape):
        full = self.parent_shaped(kind, module, shape) and not is_int8(module)
        return VariantSpec(kind, self.type) if full else None

    def hf_block(self, spec, shape):
        if spec.kind == "attention":
            return gqa_block(shape.num_kv_heads)
        return ffn_block(shape.intermediate_size)

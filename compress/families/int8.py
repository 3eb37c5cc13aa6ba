"""``attention:int8`` / ``ffn:int8``: the parent's subblock with its linear layers in int8.

Computed as onnxruntime's dynamic quantization computes them (``DynamicInt8Linear``): uint8
inputs per tensor, int8 weights per output channel. Attention quantizes q, k, v and o; the FFN
gate and up, keeping its down projection in float (``INT8_LINEARS``). Nothing to train: the
weights are the parent's, and the ONNX export rewrites those MatMuls to integer ones
(``compress.quantize_onnx``), which is where the speed comes from on a CPU. Sizes, KV cache
and modules are the parent family's, with those layers swapped.
"""

from __future__ import annotations

from compress.blocks import GatedFFN, GQAttention
from compress.export.nas_llm_layers import INT8_LINEARS, is_int8, quantize_linears
from compress.families.base import register
from compress.families.parent import Parent
from compress.variants import VariantSpec

# the exported graph must hold its weights inline (protobuf's 2 GB) for the quantizer here
MAX_FP32_BYTES = 2_000_000_000


def fp32_bytes(shape) -> int:
    """About the parent's fp32 weight bytes: layers, embeddings and (untied) head."""
    layer = Parent().params(VariantSpec("attention", "parent"), shape) + Parent().params(
        VariantSpec("ffn", "parent"), shape
    )
    heads = 1 if shape.tied_embeddings else 2
    return 4 * (shape.num_layers * layer + heads * shape.vocab_size * shape.hidden_size)


@register
class Int8(Parent):
    type = "int8"
    homogeneous = False

    def check(self, spec, shape):
        if fp32_bytes(shape) > MAX_FP32_BYTES:
            raise ValueError(
                f"{spec}: int8 subblocks need a parent under 2 GB of fp32 weights (its ONNX graph "
                "keeps them inline); this one has about "
                f"{fp32_bytes(shape) / 1e9:.1f} GB"
            )

    def build(self, spec, parent, init):
        if not isinstance(parent, (GQAttention, GatedFFN)):
            raise TypeError(f"{spec} needs the parent subblock, got {type(parent).__name__}")
        return quantize_linears(super().build(spec, parent, init), INT8_LINEARS[spec.kind])

    def empty(self, spec, arch):
        return quantize_linears(super().empty(spec, arch), INT8_LINEARS[spec.kind])

    def recognise(self, kind, module, shape):
        if self.parent_shaped(kind, module, shape) and is_int8(module):
            return VariantSpec(kind, self.type)
        return None

    def hf_block(self, spec, shape):
        return super().hf_block(spec, shape) | {"int8": True}

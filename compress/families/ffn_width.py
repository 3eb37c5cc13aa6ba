"""``ffn:width=N``: the gated FFN with fewer intermediate channels than the parent.

Keeps the most important channels (activation variance x squared down-projection column, from
calibration inputs; without them, the largest down-projection columns). In a spec's ``space``
a float in (0, 1) (``0.5`` or ``width=0.5``) is a ratio of the parent's width.
"""

from __future__ import annotations

import torch

from compress.blocks import GatedFFN
from compress.families.base import Family, register
from compress.variants import VariantSpec


def ffn_params(shape, width: int) -> int:
    return 3 * shape.hidden_size * width + shape.hidden_size


def ffn_block(width: int) -> dict:
    return {"no_op": False, "replace_with_linear": False, "intermediate_size": width}


def empty_ffn(arch, width: int) -> GatedFFN:
    s = arch.shape
    return GatedFFN(s.hidden_size, width, arch.hidden_act, arch.rms_norm_eps)


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


@register
class Width(Family):
    type = "width"
    kinds = ("ffn",)
    takes_value = True
    homogeneous = True
    bare_number = "ffn"

    def space_value(self, text, shape):
        if "." not in text:
            return int(text)
        ratio = float(text)
        if not 0 < ratio < 1:
            raise ValueError(f"bad ffn variant {text!r}: a ratio is an FFN width in (0, 1)")
        return max(1, round(ratio * shape.intermediate_size))

    def check(self, spec, shape):
        if spec.value > shape.intermediate_size:
            raise ValueError(f"{spec}: width exceeds the parent's {shape.intermediate_size}")

    def params(self, spec, shape):
        return ffn_params(shape, spec.value)

    def build(self, spec, parent, init):
        if not isinstance(parent, GatedFFN):
            raise TypeError(f"{spec} needs the parent FFN, got {type(parent).__name__}")
        if init is None:  # data-free: keep the channels whose down columns are largest
            scores = parent.down_proj.weight.float().pow(2).sum(0)
        else:
            scores = ffn_channel_importance(parent, init.inputs)
        return shrink_ffn(parent, scores.topk(spec.value).indices)

    def empty(self, spec, arch):
        return empty_ffn(arch, spec.value)

    def recognise(self, kind, module, shape):
        if type(module) is GatedFFN and module.intermediate_size != shape.intermediate_size:
            return VariantSpec(kind, self.type, module.intermediate_size)
        return None

    def hf_block(self, spec, shape):
        return ffn_block(spec.value)

"""Torch-only layers shared by the project's subblocks (``compress.blocks``) and the remote code
of every transformers export (``modeling_nas_llm.py``), so both compute the same numbers.

The HF export copies this file beside ``modeling_nas_llm.py``, which imports it relatively:
keep it self-contained (torch only, no import of this project).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def activation(name: str):
    """The activation function of a transformers ``hidden_act`` name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}"
        ) from None


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 as the Llama reference does."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotary position embedding of queries and keys (cos, sin broadcast over heads)."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# --- int8 subblocks ----------------------------------------------------------------------------
# The linear layers an ``int8`` subblock computes in int8. The FFN's down projection stays in
# float: its input (gate x up) has outliers a per-tensor uint8 scale cannot hold.
INT8_LINEARS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "ffn": ("gate_proj", "up_proj"),
}


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round half to even, with the gradient of the identity (straight through)."""
    return x + (torch.round(x) - x).detach()


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, in) on the int8 grid of its output channel: symmetric, scale max|w| / 127."""
    scale = (w.detach().abs().amax(1, keepdim=True) * 2) / 254
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return _round(w / scale).clamp(-127, 127) * scale


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` on a uint8 grid over the whole tensor, as ``DynamicQuantizeLinear`` does: scale
    (max(x, 0) - min(x, 0)) / 255, zero point -min / scale rounded."""
    lo = x.detach().amin().clamp(max=0)
    hi = x.detach().amax().clamp(min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / scale).clamp(0, 255)
    return (_round(x / scale) + zero).clamp(0, 255).sub(zero) * scale


class DynamicInt8Linear(nn.Linear):
    """A linear layer computed as onnxruntime's dynamic quantization computes it: int8 weights
    per output channel, a uint8 input per tensor, exact integer products, rescaled. The float
    weight is kept and quantized on use (so distillation and refits can move it); the ONNX
    exporter sees a plain linear layer whose MatMul the export then quantizes."""

    quantized = True  # class-wide switch: False computes in float (``float_linears``)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() or not DynamicInt8Linear.quantized:
            return F.linear(x, self.weight, self.bias)
        return F.linear(quantize_input(x), quantize_weight(self.weight), self.bias)


def quantize_linears(module: nn.Module, names) -> nn.Module:
    """Turn ``module``'s linear layers ``names`` into ``DynamicInt8Linear`` (same parameters)."""
    for name in names:
        old = getattr(module, name)
        new = DynamicInt8Linear(old.in_features, old.out_features, bias=old.bias is not None)
        new.weight, new.bias = old.weight, old.bias
        setattr(module, name, new)
    return module


def is_int8(module: nn.Module) -> bool:
    """Whether any linear layer of ``module`` computes in int8."""
    return any(isinstance(m, DynamicInt8Linear) for m in module.modules())

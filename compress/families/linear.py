"""``attention:linear`` / ``ffn:linear``: the subblock's norm then one hidden x hidden matrix.

Initialised by least squares from calibration data (the subblock's inputs to the parent's
outputs); data-free, with small random values (a stand-in for latency, never for quality).
"""

from __future__ import annotations

import torch

from compress.blocks import LinearSubblock
from compress.families.base import Family, register
from compress.variants import VariantSpec


def least_squares(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """W (out, in) minimising ||x W^T - y||^2 + ridge * trace(x^T x)/in * ||W||^2; x (N, in), y (N, out)."""
    x, y = x.double(), y.double()
    xtx = x.T @ x
    reg = ridge * xtx.diagonal().mean().clamp_min(1e-12)
    w_t = torch.linalg.solve(xtx + reg * torch.eye(xtx.shape[0], dtype=xtx.dtype), x.T @ y)
    return w_t.T.float()


@register
class Linear(Family):
    type = "linear"

    def params(self, spec, shape):
        return shape.hidden_size * shape.hidden_size + shape.hidden_size

    def build(self, spec, parent, init):
        is_attention = spec.kind == "attention"
        norm = parent.input_layernorm if is_attention else parent.post_attention_layernorm
        hidden = norm.weight.shape[0]
        module = LinearSubblock(hidden, norm.eps)
        with torch.no_grad():
            module.norm.weight.copy_(norm.weight)
            if init is None:
                gen = torch.Generator().manual_seed(2)
                module.linear.weight.normal_(0, hidden**-0.5, generator=gen)
            else:
                x = module.norm(init.inputs.float())
                module.linear.weight.copy_(least_squares(x, init.outputs.float()))
        return module

    def empty(self, spec, arch):
        return LinearSubblock(arch.shape.hidden_size, arch.rms_norm_eps)

    def recognise(self, kind, module, shape):
        return VariantSpec(kind, self.type) if type(module) is LinearSubblock else None

    def hf_block(self, spec, shape):
        return {"no_op": False, "replace_with_linear": True}

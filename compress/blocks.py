"""Subblock modules: the pieces a parent or a student is assembled from.

Every subblock has the same contract, so any variant can stand in for any other of its kind:
``forward(x) -> delta``, where ``x`` (batch, seq, hidden) is the residual stream *before* the
subblock's own norm and ``delta`` (batch, seq, hidden) is what the subblock adds to it.
Attention subblocks also offer ``forward_cached(x, past_key, past_value)`` for decoding with
a KV cache; a subblock without a cache (``noop``, ``linear``) reports ``has_kv_cache = False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compress.export.nas_llm_layers import RMSNorm, activation, apply_rotary

__all__ = ["RMSNorm", "activation"]  # re-exported: the subblocks' norm and activations


class Rotary(nn.Module):
    """Rotary position embedding with precomputed inverse frequencies (any HF rope type)."""

    def __init__(self, inv_freq: torch.Tensor, attention_scaling: float = 1.0):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(attention_scaling)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions (seq,) -> cos, sin each (seq, head_dim)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (
            emb.sin() * self.attention_scaling
        ).to(dtype)

    def apply(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return apply_rotary(q, k, cos, sin)


class GQAttention(nn.Module):
    """Grouped-query self-attention with its input norm (the parent's, or fewer KV heads)."""

    has_kv_cache = True
    max_cache_tokens: int | None = None  # most tokens the cache keeps (None: all of them)

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        bias: bool,
        rotary: Rotary,
        eps: float,
    ):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_cached(x, None, None)[0]

    def cache_tokens(self, context: int) -> int:
        """Tokens in the KV cache after ``context`` tokens (what a decode step is fed)."""
        return context if self.max_cache_tokens is None else min(context, self.max_cache_tokens)

    def forward_cached(self, x, past_key=None, past_value=None):
        """x (B, S, H); past_key/value (B, kv_heads, P, head_dim) or None.

        Returns (delta (B, S, H), key (B, kv_heads, P+S, head_dim), value (same)).
        """
        b, s, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        past = 0 if past_key is None else past_key.shape[2]
        positions = torch.arange(s, device=x.device) + past
        cos, sin = self.rotary.cos_sin(positions, q.dtype)
        q, k = self.rotary.apply(q, k, cos, sin)
        if past_key is not None:
            k = torch.cat((past_key, k), dim=2)
            v = torch.cat((past_value, v), dim=2)
        total = k.shape[2]
        groups = self.num_heads // self.num_kv_heads
        k_rep = k[:, :, None].expand(b, self.num_kv_heads, groups, total, self.head_dim)
        v_rep = v[:, :, None].expand(b, self.num_kv_heads, groups, total, self.head_dim)
        k_rep = k_rep.reshape(b, self.num_heads, total, self.head_dim)
        v_rep = v_rep.reshape(b, self.num_heads, total, self.head_dim)
        # query i sits at absolute position past + i and sees keys 0..past + i
        mask = torch.arange(total, device=x.device)[None, :] <= positions[:, None]
        out = F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(out), k, v


class GatedFFN(nn.Module):
    """The Llama gated MLP (``down(act(gate(x)) * up(x))``) with its input norm, any width."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str,
        eps: float,
        bias: bool = False,
    ):
        super().__init__()
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.hidden_act = hidden_act
        self.act_fn = activation(hidden_act)

    @property
    def intermediate_size(self) -> int:
        return self.gate_proj.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.post_attention_layernorm(x)
        return self.down_proj(self.act_fn(self.gate_proj(h)) * self.up_proj(h))

    def intermediate(self, x: torch.Tensor) -> torch.Tensor:
        """The activations the down projection reads, (B, S, intermediate)."""
        h = self.post_attention_layernorm(x)
        return self.act_fn(self.gate_proj(h)) * self.up_proj(h)


class LinearSubblock(nn.Module):
    """One hidden x hidden matrix (after the subblock's norm) replacing attention or FFN."""

    has_kv_cache = False

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)
        self.linear = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))

    def forward_cached(self, x, past_key=None, past_value=None):
        return self.forward(x), None, None


class NoopSubblock(nn.Module):
    """The subblock is skipped: it adds nothing to the residual stream."""

    has_kv_cache = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def forward_cached(self, x, past_key=None, past_value=None):
        return self.forward(x), None, None

"""``attention:window=W`` and ``attention:window=W,kv_heads=N``: sliding-window attention.

Each token attends to the last W positions, itself included (transformers' ``sliding_window``
convention), optionally with fewer KV heads (initialised as ``kv_heads=N`` is: the parent's
norm, q and o copied, k and v heads averaged per group). BLD then trains it from there.

The KV cache is bounded: ``present`` keeps the last W positions and holds keys *before*
rotary. Rotary makes scores depend on position differences only, so the module rotates the
keys it sees at positions counted from the start of its window, never needs an absolute
position, and one exported graph serves prefill and decode with a cache of at most W.
Queries go in n = ceil(S / W) chunks of C = ceil(S / n) <= W; each chunk reads a band of
W + C keys, so prefill costs O(S * W) instead of O(S^2) and a decode step O(W) whatever the
context (in eager torch and in the TorchScript exporter's graphs; the dynamo exporter's graphs
attend densely within the window, see ``forward_cached``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.blocks import GQAttention
from compress.families.attention_gqa import (
    attention_params,
    check_kv_heads,
    empty_gqa,
    gqa_block,
    gqa_like,
    init_from_parent,
)
from compress.families.base import Family, register
from compress.variants import VariantSpec


class WindowAttention(GQAttention):
    """Grouped-query attention over the last ``window`` positions, with a bounded cache."""

    def __init__(self, *args, window: int):
        super().__init__(*args)
        self.window = window
        self.max_cache_tokens = window

    def forward_cached(self, x, past_key=None, past_value=None):
        """x (B, S, H); past_key/value (B, kv_heads, P <= W, head_dim) unrotated, or None.

        Returns (delta (B, S, H), key, value (B, kv_heads, min(P + S, W), head_dim)).
        """
        b, s, _ = x.shape
        w, hd, kv, heads = self.window, self.head_dim, self.num_kv_heads, self.num_heads
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, s, heads, hd).transpose(1, 2)
        k = self.k_proj(h).view(b, s, kv, hd).transpose(1, 2)
        v = self.v_proj(h).view(b, s, kv, hd).transpose(1, 2)
        if past_key is None:
            past_key, past_value = k[:, :, :0], v[:, :, :0]
        keys, values = torch.cat((past_key, k), dim=2), torch.cat((past_value, v), dim=2)
        p = past_key.shape[2]
        # torch.export (the dynamo ONNX exporter) cannot keep the chunk sizes symbolic: its
        # graphs attend densely within the window (same results, prefill O(S * (P + S)))
        if torch.compiler.is_exporting():
            out = self._dense(q, keys, values, p)
        else:
            out = self._chunked(q, keys, values, p)
        out = out.transpose(1, 2).reshape(b, s, heads * hd)
        return self.o_proj(out), keys[:, :, -w:], values[:, :, -w:]

    def _dense(self, q, keys, values, p):
        """Every past and new key, a banded causal mask: O(S * (P + S))."""
        b, heads, s, hd = q.shape
        total = keys.shape[2]
        cos, sin = self.rotary.cos_sin(torch.arange(total, device=q.device), q.dtype)
        q = self.rotary.apply(q, q, cos[p:], sin[p:])[0]
        keys = self.rotary.apply(keys, keys, cos, sin)[0]
        k, v = self._expand(keys), self._expand(values)
        query = torch.arange(s, device=q.device)[:, None] + p
        key = torch.arange(total, device=q.device)[None, :]
        mask = (key <= query) & (key > query - self.window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _expand(self, t: torch.Tensor) -> torch.Tensor:
        """(B, kv, L, hd) -> (B, heads, L, hd), each KV head shared by its query group."""
        b, kv, length, hd = t.shape
        groups = self.num_heads // kv
        t = t[:, :, None].expand(b, kv, groups, length, hd)
        return t.reshape(b, kv * groups, length, hd)

    def _chunked(self, q, keys, values, p):
        """Queries in chunks, each reading its band of W + C keys: O(S * W)."""
        b, heads, s, hd = q.shape
        w, kv = self.window, keys.shape[1]
        # band keys: W - P zero slots, the past, the new tokens (positions 0 .. W + S - 1);
        # query i sits at position W + i
        zeros = keys.new_zeros(b, kv, w, hd)
        band_k = torch.cat((zeros, keys), dim=2)[:, :, p:]
        band_v = torch.cat((zeros, values), dim=2)[:, :, p:]
        cos, sin = self.rotary.cos_sin(torch.arange(w + s, device=q.device), q.dtype)
        q = self.rotary.apply(q, q, cos[w:], sin[w:])[0]
        band_k = self.rotary.apply(band_k, band_k, cos, sin)[0]
        n = (s + w - 1) // w  # chunks
        c = (s + n - 1) // n  # queries per chunk: min(S, W) when S <= W, at most W
        pad = n * c - s
        q = F.pad(q, (0, 0, 0, pad)).reshape(b, heads * n, c, hd)
        band_k, band_v = F.pad(band_k, (0, 0, 0, pad)), F.pad(band_v, (0, 0, 0, pad))
        # chunk j reads band positions j*C .. j*C + W + C - 1
        span = torch.arange(w + c, device=q.device)
        starts = torch.arange(n, device=q.device) * c
        index = starts[:, None] + span[None, :]  # (n, W + C)

        def gather(t: torch.Tensor) -> torch.Tensor:  # (B, kv, L, hd) -> (B, heads*n, W+C, hd)
            t = self._expand(t[:, :, index].reshape(b, kv, n * (w + c), hd))
            return t.reshape(b, heads * n, w + c, hd)

        # query i of chunk j (band position W + jC + i) sees key slot t (position jC + t) when
        # i < t <= W + i (window and causality) and jC + t >= W - P (not an empty slot)
        qi = torch.arange(c, device=q.device)
        mask = (span[None, :] > qi[:, None]) & (span[None, :] <= qi[:, None] + w)
        mask = mask[None] & (index[:, None, :] >= w - p)  # (n, C, W + C)
        mask = mask[None].expand(heads, n, c, w + c).reshape(heads * n, c, w + c)
        out = F.scaled_dot_product_attention(q, gather(band_k), gather(band_v), attn_mask=mask)
        return out.reshape(b, heads, n * c, hd)[:, :, :s]


@register
class Window(Family):
    type = "window"
    kinds = ("attention",)
    takes_value = True
    options = ("kv_heads",)
    homogeneous = True

    def _kv(self, spec, shape) -> int:
        return spec.option("kv_heads") or shape.num_kv_heads

    def check(self, spec, shape):
        check_kv_heads(spec, shape, self._kv(spec, shape))

    def params(self, spec, shape):
        return attention_params(shape, self._kv(spec, shape))

    def kv_heads(self, spec, shape):
        return self._kv(spec, shape)

    def kv_window(self, spec):
        return spec.value

    def build(self, spec, parent, init):
        kv = spec.option("kv_heads") or parent.num_kv_heads
        module = gqa_like(parent, kv, WindowAttention, window=spec.value)
        return init_from_parent(module, parent)

    def empty(self, spec, arch):
        return empty_gqa(arch, self._kv(spec, arch.shape), WindowAttention, window=spec.value)

    def recognise(self, kind, module, shape):
        if type(module) is not WindowAttention:
            return None
        kv = module.num_kv_heads
        options = () if kv == shape.num_kv_heads else (("kv_heads", kv),)
        return VariantSpec(kind, self.type, module.window, options)

    def hf_block(self, spec, shape):
        return {**gqa_block(self._kv(spec, shape)), "sliding_window": spec.value}

"""BlockModel: a Llama-family decoder as a list of separable subblocks (the layer adapter).

A parent, a parent with one variant swapped in, and a heterogeneous student are all the same
structure: embeddings, then per layer an attention subblock and an FFN subblock (any variant
module with the contract in ``compress.blocks``), then the final norm and the LM head.
Everything downstream (activation capture, BLD, scoring, assembly, export) uses this.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.blocks import RMSNorm
from compress.shape import ModelShape


class Layer(nn.Module):
    def __init__(self, attention: nn.Module, ffn: nn.Module):
        super().__init__()
        self.attention = attention
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(x)
        return x + self.ffn(x)


class BlockModel(nn.Module):
    """Embeddings -> layers of (attention, FFN) subblocks -> final norm -> LM head."""

    def __init__(
        self,
        shape: ModelShape,
        embed_tokens: nn.Embedding,
        layers: list[Layer],
        norm: RMSNorm,
        lm_head: nn.Linear,
    ):
        super().__init__()
        self.shape = shape
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = lm_head

    # --- the adapter's pieces -------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention(self, index: int) -> nn.Module:
        return self.layers[index].attention

    def ffn(self, index: int) -> nn.Module:
        return self.layers[index].ffn

    def subblock(self, index: int, kind: str) -> nn.Module:
        """``kind`` is ``"attention"`` or ``"ffn"``."""
        return getattr(self.layers[index], _check_kind(kind))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) token ids -> (B, S, hidden) residual stream."""
        return self.embed_tokens(input_ids)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, S, hidden) residual stream -> (B, S, vocab) logits."""
        return self.lm_head(self.norm(hidden))

    # --- whole-model passes ---------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, vocab) logits, causal, no cache."""
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, hidden) final hidden states after the final norm."""
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_cached(self, input_ids: torch.Tensor, past: list | None = None):
        """Prefill (past=None) or decode step with a per-layer KV cache.

        ``past`` holds one entry per layer: ``(key, value)`` for layers whose attention has a
        cache, ``None`` for the others. Returns (logits (B, S, vocab), new past).
        """
        x = self.embed(input_ids)
        new_past = []
        for i, layer in enumerate(self.layers):
            pk, pv = past[i] if past is not None and past[i] is not None else (None, None)
            delta, k, v = layer.attention.forward_cached(x, pk, pv)
            x = x + delta
            x = x + layer.ffn(x)
            new_past.append((k, v) if k is not None else None)
        return self.head(x), new_past

    @torch.no_grad()
    def generate_greedy(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding with the KV cache; returns only the new tokens (B, max_new_tokens)."""
        logits, past = self.forward_cached(input_ids)
        out = []
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(-1, keepdim=True)
            out.append(token)
            logits, past = self.forward_cached(token, past)
        return torch.cat(out, dim=1)

    # --- editing ----------------------------------------------------------------------------
    def replace(self, index: int, kind: str, module: nn.Module) -> nn.Module:
        """Put ``module`` in place of layer ``index``'s ``kind`` subblock; return the old one."""
        kind = _check_kind(kind)
        old = getattr(self.layers[index], kind)
        setattr(self.layers[index], kind, module)
        return old


def _check_kind(kind: str) -> str:
    if kind not in ("attention", "ffn"):
        raise ValueError(f"subblock kind must be 'attention' or 'ffn', got {kind!r}")
    return kind

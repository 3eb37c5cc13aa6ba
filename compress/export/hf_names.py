"""Tensor names: this project's module names -> transformers' (Llama's names; DeciLM's for the
linear replacements). Used by the transformers export and by students saved with ``hf`` names."""

from __future__ import annotations

import re

_KEY_RULES = [
    (r"^embed_tokens\.", "model.embed_tokens."),
    (r"^norm\.", "model.norm."),
    (r"^rotary\.inv_freq$", "model.rotary_emb.inv_freq"),
    (r"^layers\.(\d+)\.attention\.(input_layernorm|norm)\.", r"model.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.attention\.linear\.", r"model.layers.\1.self_attn.linear_attn."),
    (r"^layers\.(\d+)\.attention\.", r"model.layers.\1.self_attn."),
    (
        r"^layers\.(\d+)\.ffn\.(post_attention_layernorm|norm)\.",
        r"model.layers.\1.post_attention_layernorm.",
    ),
    (r"^layers\.(\d+)\.ffn\.linear\.", r"model.layers.\1.mlp.linear_mlp."),
    (r"^layers\.(\d+)\.ffn\.", r"model.layers.\1.mlp."),
]


def hf_key(name: str) -> str:
    """The transformers name of one of our tensors (``lm_head.weight`` stays as it is)."""
    for pattern, repl in _KEY_RULES:
        new, count = re.subn(pattern, repl, name)
        if count:
            return new
    return name

"""A heterogeneous Llama for transformers: each layer's attention and FFN chosen separately.

This file and the ``nas_llm_layers.py`` it imports (the norm, activations and rotary embedding
the project's own subblocks use too) are copied verbatim into every exported student folder
and loaded there with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
They are self-contained: they import only torch and transformers (never this project).

``config.block_configs`` holds one entry per layer::

    {"attention": {"no_op": false, "replace_with_linear": false, "num_key_value_heads": 2},
     "ffn": {"no_op": false, "replace_with_linear": false, "intermediate_size": 768}}

- attention: grouped-query attention with ``num_key_value_heads`` KV heads (``q_proj`` ...
  ``o_proj`` after ``input_layernorm``); with ``sliding_window: W`` each token attends only
  to the last W positions (itself included); or ``no_op`` (nothing, no norm, no KV cache), or
  ``replace_with_linear`` (``input_layernorm`` then one hidden x hidden ``linear_attn``, no
  KV cache);
- ffn: the gated MLP of width ``intermediate_size`` after ``post_attention_layernorm``, or
  ``no_op``, or ``replace_with_linear`` (``post_attention_layernorm`` then ``linear_mlp``);
- either with ``int8: true``: its linear layers (``INT8_LINEARS``) computed as onnxruntime's
  dynamic int8 quantization computes them (``DynamicInt8Linear``; float weights in the file).

The KV cache holds one entry per layer *with* attention, numbered in layer order, so layers
without attention keep no cache. Rotary inverse frequencies are stored in the checkpoint
(``model.rotary_emb.inv_freq``), so any rope scaling of the parent is reproduced exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

try:  # transformers >= 5
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .nas_llm_layers import INT8_LINEARS, RMSNorm, activation, apply_rotary, quantize_linears

# transformers 5 calls the cache ``cache``; 4.x called it ``past_key_values``
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else ("past_key_values")
)


class NasLlmConfig(_BaseConfig):
    model_type = "nas_llm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 11008,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-6,
        attention_bias: bool = False,
        attention_scaling: float = 1.0,
        max_position_embeddings: int = 2048,
        block_configs: list | None = None,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        **kwargs,
    ):
        self.use_cache = use_cache
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.attention_bias = attention_bias
        self.attention_scaling = attention_scaling
        self.max_position_embeddings = max_position_embeddings
        parent_block = {
            "attention": {"num_key_value_heads": self.num_key_value_heads},
            "ffn": {"intermediate_size": intermediate_size},
        }
        self.block_configs = block_configs or [parent_block] * num_hidden_layers
        if len(self.block_configs) != num_hidden_layers:
            raise ValueError(
                f"block_configs has {len(self.block_configs)} entries for "
                f"{num_hidden_layers} layers"
            )
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class NasLlmRotary(nn.Module):
    def __init__(self, config: NasLlmConfig):
        super().__init__()
        half = config.head_dim // 2
        base = float(getattr(config, "rope_theta", None) or 10000.0)
        inv_freq = 1.0 / base ** (torch.arange(0, half, dtype=torch.float32) / half)
        self.register_buffer("inv_freq", inv_freq)  # overwritten by the checkpoint's
        self.scaling = float(config.attention_scaling)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions (B, S) -> cos, sin each (B, 1, S, head_dim)."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


class NasLlmAttention(nn.Module):
    def __init__(self, config: NasLlmConfig, kv_heads: int, cache_index: int, window=None):
        super().__init__()
        self.window = window  # None: the whole past; W: the last W positions
        self.num_heads, self.num_kv_heads = config.num_attention_heads, kv_heads
        self.head_dim, self.cache_index = config.head_dim, cache_index
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=False)

    def forward(self, h, cos, sin, mask, cache):
        b, s, _ = h.shape
        q = self.q_proj(h).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.cache_index)
        if self.window is not None:  # query i sits at total - s + i: keys after i - window
            total = k.shape[2]
            queries = torch.arange(total - s, total, device=h.device)
            keys = torch.arange(total, device=h.device)
            mask = mask & (keys[None, :] > queries[:, None] - self.window)
        groups = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(groups, dim=1)  # (B, heads, total, head_dim)
        v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class NasLlmLinearAttention(nn.Module):
    def __init__(self, config: NasLlmConfig):
        super().__init__()
        self.linear_attn = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, h, cos, sin, mask, cache):
        return self.linear_attn(h)


class NasLlmMLP(nn.Module):
    def __init__(self, config: NasLlmConfig, width: int):
        super().__init__()
        h = config.hidden_size
        self.gate_proj = nn.Linear(h, width, bias=False)
        self.up_proj = nn.Linear(h, width, bias=False)
        self.down_proj = nn.Linear(width, h, bias=False)
        self.act_fn = activation(config.hidden_act)

    def forward(self, h):
        return self.down_proj(self.act_fn(self.gate_proj(h)) * self.up_proj(h))


class NasLlmLinearMLP(nn.Module):
    def __init__(self, config: NasLlmConfig):
        super().__init__()
        self.linear_mlp = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, h):
        return self.linear_mlp(h)


class NasLlmDecoderLayer(nn.Module):
    """One layer; a no-op subblock has neither module nor norm."""

    def __init__(self, config: NasLlmConfig, block: dict, cache_index: int):
        super().__init__()
        attn, ffn = block.get("attention", {}), block.get("ffn", {})
        eps = config.rms_norm_eps
        self.self_attn = None
        if not attn.get("no_op"):
            self.input_layernorm = RMSNorm(config.hidden_size, eps)
            if attn.get("replace_with_linear"):
                self.self_attn = NasLlmLinearAttention(config)
            else:
                kv = attn.get("num_key_value_heads") or config.num_key_value_heads
                window = attn.get("sliding_window")
                self.self_attn = NasLlmAttention(config, kv, cache_index, window)
                if attn.get("int8"):
                    quantize_linears(self.self_attn, INT8_LINEARS["attention"])
        self.mlp = None
        if not ffn.get("no_op"):
            self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
            if ffn.get("replace_with_linear"):
                self.mlp = NasLlmLinearMLP(config)
            else:
                width = ffn.get("intermediate_size") or config.intermediate_size
                self.mlp = NasLlmMLP(config, width)
                if ffn.get("int8"):
                    quantize_linears(self.mlp, INT8_LINEARS["ffn"])

    @property
    def has_kv_cache(self) -> bool:
        return isinstance(self.self_attn, NasLlmAttention)

    def forward(self, x, cos, sin, mask, cache):
        if self.self_attn is not None:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        if self.mlp is not None:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class NasLlmPreTrainedModel(PreTrainedModel):
    config_class = NasLlmConfig
    base_model_prefix = "model"
    _no_split_modules = ["NasLlmDecoderLayer"]
    _supports_cache_class = True

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, RMSNorm):
            module.weight.data.fill_(1.0)


class NasLlmModel(NasLlmPreTrainedModel):
    def __init__(self, config: NasLlmConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        layers, cached = [], 0
        for block in config.block_configs:
            layer = NasLlmDecoderLayer(config, block, cached)
            cached += int(layer.has_kv_cache)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = NasLlmRotary(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        """Returns (final hidden states (B, S, H), the cache or None)."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s, _ = x.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        queries = torch.arange(past, past + s, device=x.device)
        if position_ids is None:
            position_ids = queries[None].expand(b, s)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        total = past + s
        # query i (absolute position past + i) sees keys 0 .. past + i
        keys = torch.arange(total, device=x.device)
        mask = (keys[None, :] <= queries[:, None])[None, None]  # (1, 1, S, total)
        if attention_mask is not None and attention_mask.dim() == 2:
            mask = mask & attention_mask[:, None, None, :total].bool()
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache if use_cache else None)
        return self.norm(x), cache if use_cache else None


class NasLlmForCausalLM(NasLlmPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: NasLlmConfig):
        super().__init__(config)
        self.model = NasLlmModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # the input embeddings' accessors come from PreTrainedModel (through base_model_prefix)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        if cache is None:  # transformers 4.x names the cache past_key_values
            cache = kwargs.get("past_key_values")
        hidden, cache = self.model(
            input_ids, attention_mask, position_ids, cache, inputs_embeds, use_cache
        )
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})

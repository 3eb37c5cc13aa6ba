"""Parents with random weights and the shapes of real models (``model.source: random:NAME``).

Scale runs (time, memory and disk against parent size) need a parent of a real shape, not its
trained weights. ``random:NAME`` names a config shipped in ``compress/configs/NAME.json``
(``llama-3.2-1b``, ``llama-3.2-3b``, ``llama-3.1-8b``, ``qwen2.5-1.5b``, ``smollm2-360m``,
written from the published model cards); ``random:PATH`` names any HF ``config.json``-style
file. The weights are drawn once per (config, dtype) with a fixed seed (matrices N(0, 0.02),
norms 1, biases 0) and streamed tensor by tensor into an ordinary HF folder under
``<cache>/random/`` (a parent never has to fit twice in memory, and loading memory-maps it).

The tokenizer is SmolLM2's (vocabulary 49152) unless the config's ``nas_tokenizer`` names
another (a default model name, or a folder relative to the config file): its ids are a subset
of the parent's larger vocabulary, so token ids are valid while the embedding and LM head keep
their published sizes (what costs and memory depend on). Quality figures of such a parent are
meaningless: ``is_random(source)`` lets every report label them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from compress.errors import ModelLoadError

PREFIX = "random:"
CONFIGS = Path(__file__).resolve().parent / "configs"
TOKENIZER_KEY = "nas_tokenizer"
DEFAULT_TOKENIZER = "smollm2-135m"
MARKER = "RANDOM_WEIGHTS.json"
RANDOM_LABEL = "random weights: quality figures are meaningless"
_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # importing torch is lazy


def is_random(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a random-weight parent (its quality figures mean nothing)."""
    return str(source).startswith(PREFIX)


def shipped_configs() -> list[str]:
    """Names usable as ``random:NAME``."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def config_path(source: str) -> Path:
    """The config file ``random:NAME_OR_FILE`` names; ``ModelLoadError`` if there is none."""
    name = source.removeprefix(PREFIX)
    shipped = CONFIGS / f"{name}.json"
    if shipped.is_file():
        return shipped
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise ModelLoadError(
        f"random parent {source!r}: no shipped config {name!r} and no such file; "
        f"shipped: {', '.join(shipped_configs())}"
    )


def random_parent_folder(source: str, dtype, cache: Path, default_folder) -> Path:
    """The HF folder of ``source``'s random parent at ``dtype``, written once under ``cache``.
    ``default_folder(name)``: the HF folder of a named default model (its tokenizer is used).

    Raises ``ModelLoadError`` for a missing or unreadable config or tokenizer.
    """
    path = config_path(source)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the random parent config {path}: {exc}") from None
    tokenizer = raw.pop(TOKENIZER_KEY, DEFAULT_TOKENIZER)
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / "random" / f"{path.stem}-{str(dtype).removeprefix('torch.')}-{digest}"
    if (folder / MARKER).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        config = _hf_config(raw, path)
        config.save_pretrained(tmp)
        _tokenizer_source(tokenizer, path, default_folder).save_pretrained(tmp)
        if config.vocab_size < _vocab(tmp):
            raise ModelLoadError(
                f"random parent {source!r}: its tokenizer has more ids than vocab_size "
                f"{config.vocab_size}; set {TOKENIZER_KEY!r} in the config to a smaller one"
            )
        write_random_weights(config, tmp / "model.safetensors", dtype)
        (tmp / MARKER).write_text(json.dumps({"source": source, "config": str(path)}) + "\n")
        if not folder.exists():
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _hf_config(raw: dict, path: Path):
    from transformers import AutoConfig

    raw = dict(raw)
    model_type = raw.pop("model_type", None)
    try:
        return AutoConfig.for_model(model_type, **raw)
    except Exception as exc:  # transformers raises several types for a bad config
        raise ModelLoadError(f"random parent config {path}: {exc}") from None


def _tokenizer_source(name: str, config_file: Path, default_folder):
    from transformers import AutoTokenizer

    from compress.shape import DEFAULT_MODELS

    if name in DEFAULT_MODELS:
        folder = default_folder(name)
    else:
        folder = (config_file.parent / name).resolve()
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer {name!r} ({folder}): {exc}") from None


def _vocab(folder: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(folder))


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape of every stored tensor of the HF model ``config`` describes
    (built on the meta device: no memory), without a tied LM head."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


def write_random_weights(config, path: Path, dtype, seed: int = 0) -> int:
    """Stream a safetensors file of random weights for ``config`` at ``dtype``; return its bytes.

    One tensor is in memory at a time. Matrices ~ N(0, initializer_range), norm weights 1,
    biases 0; the same config, dtype and seed give the same bytes.
    """
    import torch

    shapes = parameter_shapes(config)
    names = sorted(shapes)
    item = torch.tensor([], dtype=dtype).element_size()
    header, offset = {}, 0
    for name in names:
        size = item * _numel(shapes[name])
        header[name] = {
            "dtype": _ST_DTYPES[str(dtype).removeprefix("torch.")],
            "shape": list(shapes[name]),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {"format": "pt", "nas_llm": "random weights"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # tensors start 8-byte aligned
    std = float(getattr(config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for name in names:
            shape = shapes[name]
            if name.endswith("norm.weight"):
                tensor = torch.ones(shape, dtype=dtype)
            elif name.endswith(".bias"):
                tensor = torch.zeros(shape, dtype=dtype)
            else:
                tensor = torch.empty(shape).normal_(0.0, std, generator=generator).to(dtype)
            fh.write(memoryview(tensor.contiguous().view(torch.uint8).numpy()))
            del tensor
    return len(blob) + 8 + offset


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n

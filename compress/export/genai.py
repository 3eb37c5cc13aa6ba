"""Make an exported ONNX folder (decoder layout) ready for onnxruntime-genai.

``write_genai_files`` adds ``genai_config.json`` (model type ``llama``: one decoder graph
``model.onnx``, ``input_ids`` plus ``past_key_values.%d.key`` / ``.value`` in,
``logits`` plus ``present.%d.*`` out, ``%d`` counting only the layers with a KV cache) and the
tokenizer's files (``tokenizer.json``, which onnxruntime-genai reads, and its config).
``genai_greedy`` generates with onnxruntime-genai (an optional extra:
``pip install 'nas-llm[genai]'``); ``genai_parity`` compares that with this project's greedy
tokens and records the verdict in ``parity.json``.

Caches bounded by their module (``max_cache`` in ``export.json``, e.g. sliding-window
attention) are refused: onnxruntime-genai allocates every present as past + new tokens.
Layers with different KV head counts need nothing special: with
``past_present_share_buffer: false`` onnxruntime-genai takes each cache's shape from the
graph's inputs and outputs (``num_key_value_heads`` holds the largest count; the tests
generate with a student whose cached layers have 1, 2 and 4 KV heads, and with no-op
attention layers that have no cache at all).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from compress.atomic import atomic_write_json
from compress.errors import UserError
from compress.model import BlockModel

GENAI_CONFIG = "genai_config.json"


class GenAIUnavailable(UserError):
    """The ``onnxruntime_genai`` package cannot be imported here."""


def genai_config(model: BlockModel, layout: dict, parent_config: dict | None) -> dict:
    """The ``genai_config.json`` record of an export (``layout``: its ``export.json``)."""
    if layout["layout"] != "decoder":
        raise UserError("onnxruntime-genai needs the decoder layout (one model.onnx)")
    bounded = [c["layer"] for c in layout["cache"] if c.get("max_cache")]
    if bounded:  # it allocates every present as past + new tokens
        raise UserError(
            f"onnxruntime-genai cannot run KV caches bounded by their module (layers {bounded}); "
            "run the folder with onnxruntime (compress.export_onnx.OrtDecoder)"
        )
    s, parent = model.shape, parent_config or {}
    heads = max((c["kv_heads"] for c in layout["cache"]), default=s.num_kv_heads)
    context = int(parent.get("max_position_embeddings") or 2048)
    eos = parent.get("eos_token_id")
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": layout["decode"],
        "head_size": s.head_dim,
        "hidden_size": s.hidden_size,
        "inputs": {
            "input_ids": "input_ids",
            "past_key_names": "past_key_values.%d.key",
            "past_value_names": "past_key_values.%d.value",
        },
        "outputs": {
            "logits": "logits",
            "present_key_names": "present.%d.key",
            "present_value_names": "present.%d.value",
        },
        "num_attention_heads": s.num_heads,
        "num_hidden_layers": len(layout["cache"]),
        "num_key_value_heads": heads,
    }
    return {
        "model": {
            "bos_token_id": parent.get("bos_token_id", 1),
            "eos_token_id": eos if eos is not None else 2,
            "pad_token_id": parent.get("pad_token_id") or 0,
            "context_length": context,
            "decoder": decoder,
            "type": "llama",
            "vocab_size": s.vocab_size,
        },
        "search": {
            "do_sample": False,
            "early_stopping": True,
            "max_length": context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_files(
    model: BlockModel, out_dir: str | os.PathLike, tokenizer=None, parent_config=None
) -> Path:
    """Write ``genai_config.json`` and the tokenizer files into an exported ONNX folder."""
    out = Path(out_dir)
    layout = json.loads((out / "export.json").read_text())
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    atomic_write_json(out / GENAI_CONFIG, genai_config(model, layout, parent_config))
    return out


def import_genai():
    try:
        import onnxruntime_genai as og
    except Exception as exc:  # ImportError, or a broken native library
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GenAIUnavailable(
            f"onnxruntime-genai is not installed here ({reason}): pip install 'nas-llm[genai]'"
        ) from None
    return og


def genai_greedy(folder: str | os.PathLike, prompt_ids, tokens: int) -> np.ndarray:
    """``tokens`` greedy tokens (1, tokens) from onnxruntime-genai for one prompt (1, S)."""
    og = import_genai()
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
    # no early stop at EOS: the comparison wants exactly ``tokens`` tokens
    params.set_search_options(
        do_sample=False, max_length=len(prompt) + tokens, min_length=len(prompt) + tokens
    )
    generator = og.Generator(model, params)
    generator.append_tokens(prompt[None])
    while not generator.is_done():
        generator.generate_next_token()
    return np.asarray(generator.get_sequence(0))[len(prompt) :][None]


def genai_parity(model: BlockModel, folder: str | os.PathLike, prompt_ids, tokens: int = 32):
    """Greedy tokens of onnxruntime-genai vs. ``model.generate_greedy`` on ``prompt_ids``
    (first row); stored under ``genai`` in ``parity.json``. Returns the record."""
    from compress.export.nas_llm_layers import is_int8
    from compress.export.parity import greedy_verdict, parity_limits
    from compress.export_onnx import OrtDecoder

    folder = Path(folder)
    prompt = torch.as_tensor(prompt_ids)[:1].long()
    with torch.no_grad():
        ours = model.generate_greedy(prompt, tokens).numpy()
        limit = parity_limits(model.embed_tokens.weight.dtype, model(prompt))
    reference = "torch"
    if is_int8(model):  # torch's int8 rounding differs (``int8_verdict``): onnxruntime's graph
        ours, reference = OrtDecoder(folder).generate_greedy(prompt.numpy(), tokens), "onnxruntime"
    theirs = genai_greedy(folder, prompt.numpy(), tokens)
    record = greedy_verdict(model, prompt, ours, theirs, limit) | {"reference": reference}
    record["passed"] = record["greedy_equal"] or record["greedy_tie"]
    path = folder / "parity.json"
    parity = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**parity, "genai": record})
    return record

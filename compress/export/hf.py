"""A student as a transformers folder that ``AutoModelForCausalLM.from_pretrained`` opens.

Two layouts, chosen per student:

- **plain**: every layer has grouped-query attention with the same number of KV heads and a
  gated FFN of the same width (the parent itself, or a uniformly narrowed one). The folder is
  the parent's own architecture (``LlamaForCausalLM``, ``Qwen2ForCausalLM`` ...) with those two
  numbers changed; it needs no remote code.
- **heterogeneous**: ``config.json`` has ``model_type: nas_llm``, the parent's fields, one
  ``block_configs`` entry per layer and an ``auto_map`` to ``modeling_nas_llm.py``, which is
  written into the folder with the ``nas_llm_layers.py`` it imports (both from
  ``compress/export/``, self-contained: torch and transformers only). Open it with
  ``trust_remote_code=True``.

Both folders hold ``model.safetensors`` with transformers' tensor names, ``config.json``,
``generation_config.json``, the tokenizer, ``student.json`` (so ``compress.student
.load_student`` reads them too) and ``parity.json`` (transformers vs. this project's model).
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from compress.atomic import atomic_write_json
from compress.model import BlockModel
from compress.variants import VariantSpec

MODELING_FILE = "modeling_nas_llm.py"
REMOTE_CODE = (MODELING_FILE, "nas_llm_layers.py")  # the remote code, copied into the folder
MODEL_TYPE = "nas_llm"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# parent config keys that describe the parent's files, not the architecture
_DROP = ("architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype")
_DROP += ("dtype", "quantization_config", "model_type", "_commit_hash")


def precision_dtype(precision: str) -> torch.dtype:
    """``fp32`` / ``fp16`` / ``bf16`` -> torch dtype; ``ValueError`` for anything else."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
        ) from None


def block_configs(specs: Sequence[tuple[VariantSpec, VariantSpec]], shape) -> list[dict]:
    """One ``{"attention": {...}, "ffn": {...}}`` per layer, each written by the variant's
    family (the schema in the module doc of ``modeling_nas_llm``; the README maps it to
    DeciLM's ``block_configs``)."""
    return [
        {"attention": a.family.hf_block(a, shape), "ffn": f.family.hf_block(f, shape)}
        for a, f in specs
    ]


_PLAIN = ({"no_op", "replace_with_linear", "num_key_value_heads"},
          {"no_op", "replace_with_linear", "intermediate_size"})  # fmt: skip


def plain_layout(blocks: list[dict]) -> tuple[int, int] | None:
    """``(kv_heads, ffn width)`` when every layer has the same GQA attention and gated FFN
    and nothing else (so the parent's own architecture expresses the student), else ``None``."""
    if any((set(b["attention"]), set(b["ffn"])) != _PLAIN for b in blocks):
        return None
    pairs = {
        (b["attention"].get("num_key_value_heads"), b["ffn"].get("intermediate_size"))
        for b in blocks
    }
    if len(pairs) != 1:
        return None
    kv, width = next(iter(pairs))
    return None if kv is None or width is None else (kv, width)


def hf_config_for(model: BlockModel, specs, parent_config: dict | None, dtype) -> dict:
    """``config.json`` of the student: plain (parent's architecture) or ``nas_llm``."""
    from compress.student import architecture_of, is_tied

    arch, s, tied = architecture_of(model), model.shape, is_tied(model)
    blocks = block_configs(specs, s)
    parent = {k: v for k, v in (parent_config or {}).items() if k not in _DROP}
    dtype_name = str(dtype).removeprefix("torch.")
    plain = plain_layout(blocks) if parent_config else None
    if plain is not None:
        kv, width = plain
        return {
            **parent,
            "architectures": list(parent_config.get("architectures") or ["LlamaForCausalLM"]),
            "model_type": parent_config.get("model_type", "llama"),
            "num_key_value_heads": kv,
            "intermediate_size": width,
            "tie_word_embeddings": tied,  # GKD may have untied the LM head
            "torch_dtype": dtype_name,
        }
    return {
        **parent,
        "architectures": ["NasLlmForCausalLM"],
        "model_type": MODEL_TYPE,
        "auto_map": {
            "AutoConfig": f"{MODELING_FILE[:-3]}.NasLlmConfig",
            "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.NasLlmForCausalLM",
        },
        "parent_model_type": s.model_type,
        "vocab_size": s.vocab_size,
        "hidden_size": s.hidden_size,
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "head_dim": s.head_dim,
        "intermediate_size": s.intermediate_size,
        "hidden_act": arch.hidden_act,
        "rms_norm_eps": arch.rms_norm_eps,
        "attention_bias": s.attention_bias,
        "attention_scaling": arch.attention_scaling,
        "tie_word_embeddings": tied,
        "block_configs": blocks,
        "torch_dtype": dtype_name,
    }


def _generation_config(parent_config: dict | None) -> dict:
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    out = {k: parent_config[k] for k in keys if parent_config and parent_config.get(k) is not None}
    return {**out, "do_sample": False}


def export_hf(
    model: BlockModel,
    out_dir: str | os.PathLike,
    choices: Sequence | None = None,
    tokenizer=None,
    parent_config: dict | None = None,
    parent_source: str | None = None,
    precision: str = "fp32",
    parity: bool = True,
    prompt_ids: torch.Tensor | None = None,
    release=None,
) -> dict:
    """Write ``model`` as a transformers folder in ``precision``; returns a summary record.
    ``release``: see ``hf_parity``.

    ``parent_config``: the parent's HF config as a dict (its fields are copied; without it
    the folder is always the ``nas_llm`` layout). With ``parity``, loads the folder with
    transformers in this process, compares logits and 32 greedy tokens with ``model`` in the
    same dtype (``compress.export_onnx.parity_limits``) and raises ``ExportError`` on failure.
    """
    from compress.export_onnx import ExportError
    from compress.student import infer_choices, normalize_choices, save_student

    out = Path(out_dir)
    dtype = precision_dtype(precision)
    if model.embed_tokens.weight.dtype != dtype:  # else the model as it is: no copy
        model = copy.deepcopy(model).to(dtype)
    model = model.eval()
    specs = normalize_choices(choices, model.shape) if choices else infer_choices(model)
    config = hf_config_for(model, specs, parent_config, dtype)
    remote = config["model_type"] == MODEL_TYPE
    save_student(
        model,
        out,
        specs,
        tokenizer=tokenizer,
        parent_source=parent_source,
        hf_config=parent_config,
        hf_names=True,
        rotary_in_weights=remote,
    )
    for name in REMOTE_CODE:
        (out / name).unlink(missing_ok=True)
        if remote:
            shutil.copyfile(Path(__file__).with_name(name), out / name)
    atomic_write_json(out / "generation_config.json", _generation_config(parent_config))
    atomic_write_json(out / "config.json", config)
    record = {"layout": "nas_llm (remote code)" if remote else config["architectures"][0]}
    record["precision"] = precision
    if parity:
        record["parity"] = hf_parity(model, out, prompt_ids, release=release)
        if not record["parity"]["passed"]:
            raise ExportError(f"transformers parity failed in {out}: {record['parity']['summary']}")
    return record


def hf_parity(
    model: BlockModel, folder: Path, prompt_ids=None, tokens: int = 32, release=None
) -> dict:
    """Load ``folder`` with transformers here and compare it with ``model``; writes and
    returns ``parity.json`` (max logit difference, greedy tokens with the KV cache).
    ``release`` (e.g. ``Parent.release``) is called once ``model``'s outputs are computed, so
    its memory-mapped weights and the loaded folder's are not resident at the same time."""
    from transformers import AutoModelForCausalLM

    from compress.export.nas_llm_layers import is_int8
    from compress.export.parity import greedy_verdict, int8_verdict, parity_limits

    dtype = model.embed_tokens.weight.dtype
    if prompt_ids is None:
        gen = torch.Generator().manual_seed(0)
        prompt_ids = torch.randint(0, model.shape.vocab_size, (1, 16), generator=gen)
    prompt_ids = prompt_ids[:1].long()
    with torch.no_grad():
        ref = model(prompt_ids)
        ours = model.generate_greedy(prompt_ids, tokens)
    if release is not None:
        release()
    hf = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype).eval()
    with torch.no_grad():
        got = hf(prompt_ids).logits
        theirs = hf_greedy(hf, prompt_ids, tokens)
    del hf
    limit = parity_limits(dtype, ref)
    diff = float((got.double() - ref.double()).abs().max())
    record = {"dtype": str(dtype).removeprefix("torch."), "logit_limit": limit}
    record["max_abs_diff"] = diff
    record.update(greedy_verdict(model, prompt_ids, ours.numpy(), theirs.numpy(), limit))
    record["passed"] = diff <= limit and (record["greedy_equal"] or record["greedy_tie"])
    summary = f"logits {diff:.2e} (limit {limit:.2g})"
    if is_int8(model):  # distributions, not logits; greedy only recorded (``int8_verdict``)
        record["int8"] = int8_verdict(model, prompt_ids, ref, got)
        record["passed"] = record["int8"]["passed"]
        summary = (
            f"int8 KL {record['int8']['kl_runtime']:.2e} (limit {record['int8']['kl_limit']:.2g})"
        )
    record["summary"] = (
        summary
        + ", greedy "
        + ("equal" if record["greedy_equal"] else f"differs at {record['greedy_first_mismatch']}")
    )
    atomic_write_json(folder / "parity.json", record)
    return record


def hf_greedy(hf_model, prompt_ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """``tokens`` greedy tokens from ``generate`` with the KV cache (``eos_token_id=None``:
    it never stops early)."""
    out = hf_model.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=tokens,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[:, prompt_ids.shape[1] :]

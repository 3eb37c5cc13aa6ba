"""One parent subblock as plain data: ``<stem>.safetensors`` (weights) + ``<stem>.json``.

BLD tasks receive the parent subblock they imitate as such a pair instead of a pickled module,
so loading it never runs code from the file: the JSON names the architecture (shape, activation,
norm epsilon, rotary scaling), the module is rebuilt empty and its weights are loaded strictly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from compress.atomic import atomic_write, atomic_write_json
from compress.errors import UserError
from compress.model import BlockModel
from compress.shape import ModelShape
from compress.student import INV_FREQ_KEY, Architecture, architecture_of, empty_subblock
from compress.variants import parent_variant

FORMAT = "nas-llm-subblock"


class SubblockFileError(UserError):
    """A saved subblock's files are missing, corrupt or do not fit their description."""


def save_parent_subblock(model: BlockModel, layer: int, kind: str, stem: str | os.PathLike) -> Path:
    """Write layer ``layer``'s ``kind`` subblock of ``model``; returns the weights' path."""
    from safetensors.torch import save_file

    stem = Path(stem)
    arch = architecture_of(model)
    module = model.subblock(layer, kind)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    if arch.inv_freq is not None:
        tensors[INV_FREQ_KEY] = arch.inv_freq.float().contiguous()
    weights = stem.with_name(stem.name + ".safetensors")
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(
        stem.with_name(stem.name + ".json"),
        {
            "format": FORMAT,
            "kind": kind,
            "layer": layer,
            "shape": model.shape.to_dict(),
            "hidden_act": arch.hidden_act,
            "rms_norm_eps": arch.rms_norm_eps,
            "attention_scaling": arch.attention_scaling,
            "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
        },
    )
    return weights


def load_parent_subblock(stem: str | os.PathLike) -> nn.Module:
    """The subblock saved by ``save_parent_subblock`` (no pickle); ``SubblockFileError``."""
    from safetensors.torch import load_file

    stem = Path(stem)
    config_path, weights = (
        stem.with_name(stem.name + ".json"),
        stem.with_name(stem.name + ".safetensors"),
    )
    try:
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        tensors = load_file(str(weights))
        arch = Architecture(
            ModelShape.from_dict(config["shape"]),
            str(config["hidden_act"]),
            float(config["rms_norm_eps"]),
            float(config["attention_scaling"]),
            tensors.pop(INV_FREQ_KEY, None),
        )
        module = empty_subblock(parent_variant(config["kind"]), arch)
        module.load_state_dict(tensors, strict=True)
        return module.to(getattr(torch, str(config["dtype"])))
    except Exception as exc:  # safetensors raises its own error type for a corrupt file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SubblockFileError(f"cannot load the subblock {stem}: {first}") from None

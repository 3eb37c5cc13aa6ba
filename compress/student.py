"""Students: assembly from per-layer choices, and the student directory (save / load).

A student is a ``BlockModel`` whose layer ``i`` holds the attention and FFN variants chosen for
it. ``assemble_student`` copies everything it takes from the parent (it never aliases the
parent's parameters). A student directory holds:

- ``student.json``: format version, model shape, per-layer choices (canonical strings), the
  norm epsilon, activation and rotary scaling, dtype, and the parent's source and HF config;
- ``model.safetensors``: every weight (``lm_head.weight`` left out when tied to the embeddings)
  plus the rotary inverse frequencies as ``rotary.inv_freq``;
- the tokenizer's files (``tokenizer.save_pretrained``), when a tokenizer was given.

``load_student`` rebuilds empty modules from the config alone (no parent needed) and loads the
weights, checking every tensor's name and shape; any problem is one ``StudentLoadError`` line.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from compress.atomic import atomic_write, atomic_write_json
from compress.blocks import GatedFFN, GQAttention, LinearSubblock, NoopSubblock, RMSNorm, Rotary
from compress.errors import UserError
from compress.model import BlockModel, Layer
from compress.shape import ModelShape
from compress.variants import VariantSpec

FORMAT = "nas-llm-student"
FORMAT_VERSION = 1
CONFIG_FILE = "student.json"
WEIGHTS_FILE = "model.safetensors"
INV_FREQ_KEY = "rotary.inv_freq"

LoadModule = Callable[[int, VariantSpec], nn.Module]
Choice = tuple[VariantSpec, VariantSpec]


class StudentConfigError(UserError):
    """Per-layer choices do not fit the parent (wrong count, kind or size)."""


class StudentLoadError(UserError):
    """A student directory is missing a file, is corrupt, or disagrees with its config."""


# --- choices ----------------------------------------------------------------------------------
def normalize_choices(choices: Sequence, shape: ModelShape) -> list[Choice]:
    """Per layer ``(attention spec, ffn spec)`` from specs or canonical strings, checked.

    Raises ``StudentConfigError`` naming the layer when a choice has the wrong kind or does
    not fit ``shape``, or when the number of layers differs.
    """
    if len(choices) != shape.num_layers:
        raise StudentConfigError(
            f"{len(choices)} layer choices given for a model with {shape.num_layers} layers"
        )
    out: list[Choice] = []
    for layer, pair in enumerate(choices):
        if len(pair) != 2:
            raise StudentConfigError(f"layer {layer}: a choice is [attention, ffn], got {pair!r}")
        specs = []
        for kind, item in zip(("attention", "ffn"), pair, strict=True):
            try:
                spec = item if isinstance(item, VariantSpec) else VariantSpec.parse(str(item))
                if spec.kind != kind:
                    raise ValueError(f"{spec} is not an {kind} variant")
                spec.check(shape)
            except ValueError as exc:
                raise StudentConfigError(f"layer {layer}: {exc}") from None
            specs.append(spec)
        out.append((specs[0], specs[1]))
    return out


def choices_to_strings(choices: Sequence[Choice]) -> list[list[str]]:
    return [[str(a), str(f)] for a, f in choices]


# --- empty modules from a spec (no parent needed) ---------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """What besides the shape an empty student needs: activation, norm eps, rotary."""

    shape: ModelShape
    hidden_act: str
    rms_norm_eps: float
    attention_scaling: float = 1.0
    inv_freq: torch.Tensor | None = field(default=None, compare=False)


def empty_subblock(spec: VariantSpec, arch: Architecture) -> nn.Module:
    """A freshly initialised module of the right shape for ``spec`` (weights to be loaded)."""
    s = arch.shape
    if spec.type == "noop":
        return NoopSubblock()
    if spec.type == "linear":
        return LinearSubblock(s.hidden_size, arch.rms_norm_eps)
    if spec.kind == "attention":
        if arch.inv_freq is None:
            raise StudentLoadError(f"{spec} needs rotary frequencies ({INV_FREQ_KEY})")
        rotary = Rotary(arch.inv_freq, arch.attention_scaling)
        return GQAttention(
            s.hidden_size,
            s.num_heads,
            spec.kv_heads(s),
            s.head_dim,
            s.attention_bias,
            rotary,
            arch.rms_norm_eps,
        )
    width = s.intermediate_size if spec.type == "parent" else spec.value
    return GatedFFN(s.hidden_size, width, arch.hidden_act, arch.rms_norm_eps)


def expected_shapes(spec: VariantSpec, arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a ``spec`` module (built on the meta device, no memory)."""
    meta_arch = Architecture(
        arch.shape,
        arch.hidden_act,
        arch.rms_norm_eps,
        arch.attention_scaling,
        None if arch.inv_freq is None else torch.empty(arch.inv_freq.shape, device="meta"),
    )
    with torch.device("meta"):
        module = empty_subblock(spec, meta_arch)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def architecture_of(model: BlockModel) -> Architecture:
    """The ``Architecture`` of a parent or student, read from its modules."""
    hidden_act, inv_freq, scaling = "silu", None, 1.0
    for layer in model.layers:
        if isinstance(layer.ffn, GatedFFN):
            hidden_act = layer.ffn.hidden_act
        if isinstance(layer.attention, GQAttention) and inv_freq is None:
            inv_freq = layer.attention.rotary.inv_freq.detach().cpu().clone()
            scaling = layer.attention.rotary.attention_scaling
    return Architecture(model.shape, hidden_act, float(model.norm.eps), scaling, inv_freq)


# --- assembly ---------------------------------------------------------------------------------
def data_free_loader(parent: BlockModel) -> LoadModule:
    """``load_module`` building each variant from the parent without data (for tests/latency)."""
    from compress.builders import build_variant

    return lambda layer, spec: build_variant(spec, parent.subblock(layer, spec.kind))


def library_loader(library_dir: str | os.PathLike, parent: BlockModel) -> LoadModule:
    """``load_module`` reading each trained variant from a job's library folder."""
    from compress.library import load_variant

    return lambda layer, spec: load_variant(library_dir, layer, spec, parent)


def assemble_student(
    parent: BlockModel,
    choices: Sequence,
    load_module: LoadModule | None = None,
    share_parent: bool = False,
) -> BlockModel:
    """A new ``BlockModel`` with layer ``i``'s attention and FFN from ``load_module(i, spec)``.

    ``choices``: per layer ``(attention, ffn)`` specs or canonical strings. ``load_module``
    defaults to ``data_free_loader(parent)``. Embeddings, final norm and LM head are copied
    from the parent (tied embeddings stay tied); a returned module that shares a tensor with
    the parent is copied too, so the student never aliases the parent. Raises
    ``StudentConfigError`` when a module's parameter shapes do not match its spec.
    With ``share_parent`` (a student that will not be trained) the embeddings, final norm, LM
    head and ``parent`` subblocks are the parent's own modules: no copy of the parent's weights.
    """
    specs = normalize_choices(choices, parent.shape)
    load_module = load_module or data_free_loader(parent)
    arch = architecture_of(parent)
    parent_ptrs = {t.data_ptr() for t in parent.state_dict().values()}
    dtype = parent.embed_tokens.weight.dtype
    embed, norm, lm_head = (
        (parent.embed_tokens, parent.norm, parent.lm_head)
        if share_parent
        else copy.deepcopy([parent.embed_tokens, parent.norm, parent.lm_head])
    )
    layers = []
    for index, pair in enumerate(specs):
        modules = []
        for spec in pair:
            if share_parent and spec.type == "parent":
                modules.append(parent.subblock(index, spec.kind))
                continue
            module = load_module(index, spec)
            if any(t.data_ptr() in parent_ptrs for t in module.state_dict().values()):
                module = copy.deepcopy(module)
            _check_module(index, spec, module, arch)
            modules.append(module.to(dtype))
        layers.append(Layer(modules[0], modules[1]))
    student = BlockModel(parent.shape, embed, layers, norm, lm_head)
    return student.train(parent.training)


def _check_module(layer: int, spec: VariantSpec, module: nn.Module, arch: Architecture) -> None:
    want = expected_shapes(spec, arch)
    have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if want != have:
        bad = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise StudentConfigError(
            f"layer {layer}: the module given for {spec} ({type(module).__name__}) does not match "
            f"its spec (first difference: {bad[0]})"
        )


def infer_choices(model: BlockModel) -> list[Choice]:
    """Per-layer specs read from the modules (kv_heads/width equal to the parent's -> parent)."""
    s = model.shape
    out = []
    for layer in model.layers:
        pair = []
        for kind, module in (("attention", layer.attention), ("ffn", layer.ffn)):
            if isinstance(module, NoopSubblock):
                pair.append(VariantSpec(kind, "noop"))
            elif isinstance(module, LinearSubblock):
                pair.append(VariantSpec(kind, "linear"))
            elif isinstance(module, GQAttention):
                kv = module.num_kv_heads
                pair.append(
                    VariantSpec(kind, "parent")
                    if kv == s.num_kv_heads
                    else VariantSpec(kind, "kv_heads", kv)
                )
            elif isinstance(module, GatedFFN):
                w = module.intermediate_size
                pair.append(
                    VariantSpec(kind, "parent")
                    if w == s.intermediate_size
                    else VariantSpec(kind, "width", w)
                )
            else:
                raise StudentConfigError(f"cannot describe a {type(module).__name__} subblock")
        out.append((pair[0], pair[1]))
    return out


# --- the student directory --------------------------------------------------------------------
@dataclass
class LoadedStudent:
    model: BlockModel
    choices: list[Choice]
    config: dict
    tokenizer: object | None


def is_tied(model: BlockModel) -> bool:
    return model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()


def save_student(
    model: BlockModel,
    out_dir: str | os.PathLike,
    choices: Sequence | None = None,
    tokenizer=None,
    parent_source: str | None = None,
    hf_config: dict | None = None,
    hf_names: bool = False,
    rotary_in_weights: bool = True,
) -> Path:
    """Write the student directory (files written atomically, ``student.json`` last).

    ``choices`` default to ``infer_choices(model)``; given ones must match the modules.
    ``hf_config`` (the parent's HF config as a dict) is kept for reference. ``hf_names``:
    tensors are named as transformers names them (``compress.export.hf.hf_key``) and the
    rotary frequencies are kept in ``student.json`` too; ``rotary_in_weights=False`` leaves
    them out of the weight file (a plain ``LlamaForCausalLM`` computes its own). Returns the
    folder.
    """
    from safetensors.torch import save_file

    from compress.export.hf import hf_key

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = architecture_of(model)
    specs = normalize_choices(choices, model.shape) if choices is not None else infer_choices(model)
    for index, (a, f) in enumerate(specs):
        _check_module(index, a, model.attention(index), arch)
        _check_module(index, f, model.ffn(index), arch)
    tied = is_tied(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if tied:
        tensors.pop("lm_head.weight")
    if arch.inv_freq is not None and rotary_in_weights:
        tensors[INV_FREQ_KEY] = arch.inv_freq.float().contiguous()
    params = sum(t.numel() for k, t in tensors.items() if k != INV_FREQ_KEY)
    if hf_names:
        tensors = {hf_key(k): v for k, v in tensors.items()}
    atomic_write(
        out / WEIGHTS_FILE,
        lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "producer": FORMAT}),
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": model.shape.to_dict(),
        "choices": choices_to_strings(specs),
        "hidden_act": arch.hidden_act,
        "rms_norm_eps": arch.rms_norm_eps,
        "attention_scaling": arch.attention_scaling,
        "dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch."),
        "tied_embeddings": tied,
        "tokenizer": tokenizer is not None,
        "weights": WEIGHTS_FILE,
        "params": params,
        "parent": {"source": parent_source, "hf_config": hf_config},
    }
    if hf_names:
        config["weight_names"] = "hf"
        if arch.inv_freq is not None:
            config["inv_freq"] = arch.inv_freq.float().tolist()
    atomic_write_json(out / CONFIG_FILE, config)
    return out


def read_student_config(folder: str | os.PathLike) -> dict:
    """``student.json`` of a student directory, checked for format and version."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise StudentLoadError(f"student directory {folder} does not exist")
    if not path.is_file():
        raise StudentLoadError(f"missing file {path} (not a student directory)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudentLoadError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise StudentLoadError(f"{path} is not a {FORMAT} config")
    if config.get("format_version") != FORMAT_VERSION:
        raise StudentLoadError(
            f"{path}: format version {config.get('format_version')!r} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    return config


def load_student(folder: str | os.PathLike, tokenizer: bool = True) -> LoadedStudent:
    """Rebuild a saved student from its directory alone, in any process.

    Every tensor of ``model.safetensors`` is checked by name and shape against the modules the
    config describes before loading. Raises ``StudentLoadError`` (one line naming the file or
    tensor) for a missing file, a truncated or corrupt weight file, or a mismatch.
    """
    from safetensors import safe_open

    from compress.export.hf import hf_key

    folder = Path(folder)
    config = read_student_config(folder)
    # tensor name in our modules -> name in the file (transformers' names in an HF folder)
    stored = hf_key if config.get("weight_names") == "hf" else (lambda name: name)
    try:
        shape = ModelShape.from_dict(config["shape"])
        specs = normalize_choices(config["choices"], shape)
        dtype = getattr(torch, config["dtype"])
        hidden_act, eps = config["hidden_act"], float(config["rms_norm_eps"])
        scaling, tied = float(config["attention_scaling"]), bool(config["tied_embeddings"])
    except (KeyError, TypeError, ValueError, AttributeError, UserError) as exc:
        raise StudentLoadError(f"{folder / CONFIG_FILE}: bad config: {exc}") from None
    weights = folder / config.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise StudentLoadError(f"missing file {weights}")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            names = set(fh.keys())
            rotary_key = stored(INV_FREQ_KEY)
            inv_freq = fh.get_tensor(rotary_key) if rotary_key in names else None
            if inv_freq is None and config.get("inv_freq") is not None:
                inv_freq = torch.tensor(config["inv_freq"], dtype=torch.float32)
            arch = Architecture(shape, hidden_act, eps, scaling, inv_freq)
            ours = _expected_model_shapes(arch, specs, tied)
            want = {stored(k): v for k, v in ours.items()}
            missing = sorted(set(want) - names)
            if missing:
                raise StudentLoadError(
                    f"{weights}: missing tensor {missing[0]} (and {len(missing) - 1} more)"
                    if len(missing) > 1
                    else f"{weights}: missing tensor {missing[0]}"
                )
            extra = sorted(names - set(want) - {rotary_key})
            if extra:
                raise StudentLoadError(f"{weights}: unexpected tensor {extra[0]} for this config")
            for name, expected in want.items():
                got = tuple(fh.get_slice(name).get_shape())
                if got != expected:
                    raise StudentLoadError(
                        f"{weights}: tensor {name} has shape {got} but the config needs {expected}"
                    )
            tensors = {name: fh.get_tensor(stored(name)) for name in ours}
    except StudentLoadError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudentLoadError(
            f"weight file {weights} is truncated or corrupt ({first}); re-export the student"
        ) from None
    model = build_empty_student(arch, specs, tied)
    model.load_state_dict(tensors, strict=not tied)
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
    model = model.to(dtype).eval()
    tok = None
    if tokenizer and config.get("tokenizer"):
        tok = _load_tokenizer(folder)
    return LoadedStudent(model=model, choices=specs, config=config, tokenizer=tok)


def build_empty_student(arch: Architecture, specs: Sequence[Choice], tied: bool) -> BlockModel:
    """A student of the given architecture and choices with freshly initialised weights."""
    s = arch.shape
    layers = [Layer(empty_subblock(a, arch), empty_subblock(f, arch)) for a, f in specs]
    embed = nn.Embedding(s.vocab_size, s.hidden_size)
    lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)
    if tied:
        lm_head.weight = embed.weight
    return BlockModel(s, embed, layers, RMSNorm(s.hidden_size, arch.rms_norm_eps), lm_head)


def _expected_model_shapes(
    arch: Architecture, specs: Sequence[Choice], tied: bool
) -> dict[str, tuple[int, ...]]:
    s = arch.shape
    want = {"embed_tokens.weight": (s.vocab_size, s.hidden_size), "norm.weight": (s.hidden_size,)}
    if not tied:
        want["lm_head.weight"] = (s.vocab_size, s.hidden_size)
    for index, (a, f) in enumerate(specs):
        for kind, spec in (("attention", a), ("ffn", f)):
            for name, shp in expected_shapes(spec, arch).items():
                want[f"layers.{index}.{kind}.{name}"] = shp
    return want


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        # the folder's config.json may name remote code: the tokenizer never needs it
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudentLoadError(f"cannot load the tokenizer files in {folder}: {first}") from None

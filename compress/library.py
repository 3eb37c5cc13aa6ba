"""The block library on disk: one trained variant = one ``.safetensors`` + one ``.json`` record.

Layout (``results/<job>/library/``): ``L{layer:03d}__{canonical spec, ':' -> '__'}`` with the
suffixes ``.safetensors`` (the module's state dict, at the run dtype) and ``.json`` (its BLD record).
Both are written atomically, weights first, so a record that exists means a complete variant.
Parent and no-op variants need no file: ``load_variant`` rebuilds them from the parent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from compress.atomic import atomic_write, atomic_write_json
from compress.builders import build_variant
from compress.errors import UserError
from compress.variants import VariantSpec


class LibraryError(UserError):
    """A variant is missing from the block library or its files do not match its spec."""


def variant_stem(layer: int, spec: VariantSpec) -> str:
    """``L003__ffn__width=86`` for layer 3's ``ffn:width=86``."""
    return f"L{layer:03d}__{str(spec).replace(':', '__')}"


def variant_paths(
    library_dir: str | os.PathLike, layer: int, spec: VariantSpec
) -> tuple[Path, Path]:
    """(weights path, record path) of one variant."""
    stem = Path(library_dir) / variant_stem(layer, spec)
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def has_variant(library_dir: str | os.PathLike, layer: int, spec: VariantSpec) -> bool:
    """True when both files of a trained variant exist (the record is written last)."""
    weights, record = variant_paths(library_dir, layer, spec)
    return weights.is_file() and record.is_file()


def save_variant(
    library_dir: str | os.PathLike, layer: int, spec: VariantSpec, module: nn.Module, record: dict
) -> Path:
    """Write the module's weights then its record (with ``layer``/``variant``/``file`` set);
    returns the record's path."""
    weights, record_path = variant_paths(library_dir, layer, spec)
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, str(tmp)))
    full = {**record, "layer": layer, "kind": spec.kind, "variant": str(spec), "file": weights.name}
    atomic_write_json(record_path, full)
    return record_path


def load_variant(
    library_dir: str | os.PathLike, layer: int, spec: VariantSpec, parent_adapter
) -> nn.Module:
    """The module for ``spec`` at ``layer``, in the parent's dtype, ready to ``replace`` in.

    Variants BLD does not train (``parent``, ``noop``) are built from the parent subblock;
    anything else is rebuilt from the parent (data-free, for the shapes) and loaded from its
    file.
    Raises ``LibraryError`` when the variant was not trained (yet).
    """
    parent = parent_adapter.subblock(layer, spec.kind)
    if not spec.trainable:
        return build_variant(spec, parent, None)
    weights, _ = variant_paths(library_dir, layer, spec)
    if not has_variant(library_dir, layer, spec):
        raise LibraryError(
            f"{spec} of layer {layer} is not in the library {library_dir}; "
            "run (or resume) the job's bld stage"
        )
    module = build_variant(spec, parent, None)
    dtype = next(parent.parameters()).dtype
    state = {k: v.to(dtype) for k, v in load_file(str(weights)).items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LibraryError(f"{weights.name} does not fit {spec} of layer {layer}: {exc}") from None
    return module.eval()


def read_records(library_dir: str | os.PathLike) -> list[dict]:
    """Every finished variant's record, sorted by (layer, variant); [] for an empty library."""
    folder = Path(library_dir)
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("L*.json"))]
    return sorted(records, key=lambda r: (r["layer"], r["variant"]))

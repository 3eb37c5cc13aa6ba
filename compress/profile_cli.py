"""What ``nas profile`` does, as library functions: choose variants, measure, write, validate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import UserError
from compress.latency_backends import MeasureSettings
from compress.profile import HardwareProfile, load_profile, save_profile
from compress.shape import ModelShape
from compress.variants import VariantSpec, parse_space


def default_variants(shape: ModelShape) -> list[VariantSpec]:
    """Attention: parent, every KV-head count dividing the query heads (up to the parent's),
    linear, noop. FFN: parent, 75 / 50 / 25 % of the parent's width, linear, noop."""
    kv = [k for k in range(1, shape.num_kv_heads + 1) if shape.num_heads % k == 0]
    attention, ffn = parse_space(
        [f"kv_heads={k}" for k in kv] + ["linear", "noop"],
        [0.75, 0.5, 0.25, "linear", "noop"],
        shape,
    )
    return attention + ffn


# (attention entries, FFN entries) as a search space lists them: "kv_heads=2", 0.5, "noop", ...
SpaceEntries = tuple[Sequence[str | float], Sequence[str | float]]


def choose_variants(
    shape: ModelShape, variants: list[str] | None = None, space: SpaceEntries | None = None
) -> list[VariantSpec]:
    """``variants`` (canonical strings; parents added), else the ``space`` entries, else
    ``default_variants``. Raises ``UserError``."""
    try:
        if variants:
            specs = [VariantSpec.parse(v) for v in variants]
            for spec in specs:
                spec.check(shape)
            base = [VariantSpec("attention", "parent"), VariantSpec("ffn", "parent")]
            return list(dict.fromkeys(base + specs))
        if space is not None:
            attention, ffn = parse_space(list(space[0]), list(space[1]), shape)
            return attention + ffn
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return default_variants(shape)


@dataclass(frozen=True)
class ProfileRequest:
    """One ``nas profile`` measurement: the model (HF folder, ``.gguf`` or a default model's
    name), the file to write, how to measure (``settings``), which variants (``variants``:
    canonical strings, else ``space``: attention and FFN entries as a spec's space lists them,
    else ``default_variants``) and how many random students validate the profile."""

    model: str
    out: Path
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    variants: tuple[str, ...] = ()
    space: SpaceEntries | None = None
    students: int = 8
    seed: int = 0


def measure_profile_file(
    request: ProfileRequest, report: Callable[[str], None] = print
) -> HardwareProfile:
    """Load the request's model, measure its profile (validated on ``request.students`` random
    students), write it atomically to ``request.out`` and return it. The backend is checked
    before the model loads, so an unavailable backend fails fast in one line."""
    from compress.latency import get_backend, measure_profile
    from compress.loading import load_parent

    settings = request.settings
    get_backend(settings)  # raises BackendUnavailable before any work
    parent = load_parent(request.model)
    specs = choose_variants(parent.shape, list(request.variants), request.space)
    report(
        f"profiling {parent.shape.key}: {len(specs)} variants on {settings.backend} ({settings.phase})"
    )
    profile = measure_profile(
        parent.adapter, specs, settings, request.model, request.students, request.seed, report
    )
    save_profile(profile, request.out)
    return profile


def validate_profile_file(
    path: str | Path, students: int = 8, seed: int = 0, report: Callable[[str], None] = print
) -> HardwareProfile:
    """Re-measure a profile file with ``students`` random students; store it with the MAPE."""
    from compress.latency import validate_profile
    from compress.loading import load_parent

    profile = load_profile(path)
    if not profile.model_source:
        raise UserError(f"{path}: the profile names no model_source to rebuild students from")
    parent = load_parent(profile.model_source)
    if parent.shape != profile.shape:
        raise UserError(
            f"{path}: model {profile.model_source} is {parent.shape.key}, "
            f"the profile is for {profile.shape_key}"
        )
    profile = validate_profile(profile, parent.adapter, students, seed, report)
    save_profile(profile, path)
    return profile

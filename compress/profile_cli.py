"""What ``nas profile`` does, as library functions: choose variants, measure, write, validate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compress.errors import UserError
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


def choose_variants(
    shape: ModelShape, variants: list[str] | None = None, space=None
) -> list[VariantSpec]:
    """``variants`` (canonical strings; parents added), else a spec's ``space`` section
    (duck-typed: ``attention``, ``ffn``), else ``default_variants``. Raises ``UserError``."""
    try:
        if variants:
            specs = [VariantSpec.parse(v) for v in variants]
            for spec in specs:
                spec.check(shape)
            base = [VariantSpec("attention", "parent"), VariantSpec("ffn", "parent")]
            return list(dict.fromkeys(base + specs))
        if space is not None:
            attention, ffn = parse_space(list(space.attention), list(space.ffn), shape)
            return attention + ffn
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return default_variants(shape)


def measure_profile_file(
    model: str,
    backend: str,
    phase: str,
    batch: int,
    seq: int,
    out: str | Path,
    context: int = 512,
    variants: list[str] | None = None,
    space=None,
    threads: int | None = None,
    precision: str = "fp32",
    students: int = 8,
    seed: int = 0,
    stack: int = 8,
    repeats: int | None = None,
    report: Callable[[str], None] = print,
    min_block_ms: float = 50.0,
) -> HardwareProfile:
    """Load ``model``, measure its profile (with validation on ``students`` random students),
    write it atomically to ``out`` and return it. The backend is checked before the model
    loads, so an unavailable backend fails fast in one line."""
    from compress.latency import MeasureSettings, get_backend, measure_profile
    from compress.loading import load_parent

    settings = MeasureSettings(
        backend=backend,
        phase=phase,
        batch=batch,
        seq=seq,
        context=context,
        precision=precision,
        threads=threads,
        stack=stack,
        repeats=repeats,
        min_block_ms=min_block_ms,
    )
    get_backend(settings)  # raises BackendUnavailable before any work
    parent = load_parent(model)
    specs = choose_variants(parent.shape, variants, space)
    report(f"profiling {parent.shape.key}: {len(specs)} variants on {backend} ({phase})")
    profile = measure_profile(parent.adapter, specs, settings, model, students, seed, report)
    save_profile(profile, out)
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

"""Measuring subblock latencies on a backend, building and validating hardware profiles.

What is timed (static shapes; prefill: ids/activations of B x S tokens, decode: B x 1 token
over a KV cache of C tokens per attention subblock that keeps one):
- each variant as a stack of ``stack`` independent copies in one graph (``x = x + sub(x)``;
  decode attention takes and returns its own KV cache per copy), minus an empty stack (the
  graph's fixed run overhead), divided by ``stack``: the cost of one subblock;
- the fixed cost: embeddings -> final norm -> LM head (logits for every position of the phase),
  which carries the run overhead once;
- whole students (validation): embeddings, every layer's chosen subblocks, norm, head, with the
  same outputs (prefill: logits; decode: logits and the new KV caches).
Repeats are interleaved round-robin over all graphs of one call, so load changes on a shared
machine hit every graph alike; entries are medians of per-round paired differences. Each
sample is a block of back-to-back runs of at least ``min_block_ms`` (short and long graphs see
time slicing alike), and the copies in a stack get slightly different weights (the TorchScript
exporter merges identical initialisers, which would keep one copy's weights in cache and make
memory-bound decode entries far too cheap).
Backends: ``onnxruntime-cpu``, ``torch-cpu``, ``torch-cuda``, ``tensorrt`` (see ``get_backend``).
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from compress.builders import build_variant
from compress.errors import UserError
from compress.latency_backends import (  # noqa: F401  (re-exported)
    BACKENDS,
    BackendUnavailable,
    Graph,
    MeasureSettings,
    _gen,
    fixed_graph,
    get_backend,
    stack_graph,
    whole_graph,
)
from compress.model import BlockModel
from compress.profile import (
    HardwareProfile,
    StudentCheck,
    Timing,
    Validation,
    load_profile,
    missing_variants,
    save_profile,
)
from compress.student import assemble_student, data_free_loader
from compress.variants import VariantSpec

Report = Callable[[str], None]


# --- timing ---------------------------------------------------------------------------------
def time_graphs(backend, graphs: dict[str, Graph], s: MeasureSettings) -> dict[str, list[float]]:
    """Prepare every graph, warm each up, then time them round-robin; per-round ms lists.

    One sample of a graph is the mean of back-to-back runs lasting at least ``s.min_block_ms``
    in total. On a shared machine a run shorter than a scheduler time slice usually escapes
    preemption while a long one (a whole student) is always sliced, so timing single short runs
    would make parts look cheaper than wholes; blocks put every graph in the same regime.
    """
    with tempfile.TemporaryDirectory(prefix="nas-latency-") as tmp:
        runs = {key: backend.prepare(g, Path(tmp)) for key, g in graphs.items()}
        for run in runs.values():
            for _ in range(max(s.warmup, 1)):
                run()
        single = {key: min(run(), run()) for key, run in runs.items()}
        block = {
            key: max(1, math.ceil(s.min_block_ms / max(ms, 1e-3))) for key, ms in single.items()
        }
        if s.repeats is not None:
            rounds = s.repeats
        else:
            per_round = sum(single[k] * block[k] for k in runs) / 1e3
            rounds = int(s.budget_s * len(runs) / max(per_round, 1e-6))
            rounds = max(s.min_repeats, min(s.max_repeats, rounds))
        times: dict[str, list[float]] = {key: [] for key in runs}
        order = list(runs)
        for r in range(rounds):
            for key in order if r % 2 == 0 else reversed(order):
                n, run = block[key], runs[key]
                times[key].append(sum(run() for _ in range(n)) / n)
        return times


def _timing(values) -> Timing:
    arr = np.asarray(values, dtype=float)
    return Timing(
        float(np.median(arr)), float(np.percentile(arr, 10)), float(np.percentile(arr, 90))
    )


def _variant_graph(parent_model: BlockModel, spec: VariantSpec, s: MeasureSettings) -> Graph:
    shape = parent_model.shape
    spec.check(shape)
    sub = build_variant(spec, parent_model.subblock(0, spec.kind)).eval()
    return stack_graph(sub, s, shape, parent_model.norm.weight.dtype)


@dataclass
class Measured:
    """One interleaved measurement: entries, fixed cost, whole students (in order), rounds."""

    entries: dict[str, Timing]
    fixed: Timing
    students: list[Timing]
    rounds: int
    paired_ratios: list[float]  # per student: median over rounds of measured / same-round sum


def measure_all(
    parent_model: BlockModel,
    variants: list[VariantSpec],
    s: MeasureSettings,
    students: list[list[list[str]]] = (),
    backend=None,
    report: Report = print,
) -> Measured:
    """Time the empty stack, the fixed graph, one stack per variant and the whole students in one
    round-robin, so the shared machine's load drifts hit them alike. Entries are medians of
    per-round ``(stack - empty) / stack`` (a negative median, possible for ``noop``, is
    clipped to 0); p10/p90 over the same per-round values."""
    backend = backend or get_backend(s)
    dtype = parent_model.norm.weight.dtype
    graphs = {
        "__empty__": stack_graph(None, s, parent_model.shape, dtype),
        "__fixed__": fixed_graph(parent_model, s),
    }
    for spec in variants:
        graphs[str(spec)] = _variant_graph(parent_model, spec, s)
    built: dict = {}  # (layer, variant) -> module, shared by the students (timing only)
    for i, choice in enumerate(students):
        graphs[f"__student{i}__"] = whole_graph(assemble(parent_model, choice, built), s)
    t0 = time.perf_counter()
    times = time_graphs(backend, graphs, s)
    empty = np.asarray(times.pop("__empty__"))
    fixed_rounds = np.asarray(times.pop("__fixed__"))
    fixed = _timing(fixed_rounds)
    raw_whole = [np.asarray(times.pop(f"__student{i}__")) for i in range(len(students))]
    whole = [_timing(w) for w in raw_whole]
    per_round = {key: (np.asarray(values) - empty) / s.stack for key, values in times.items()}
    entries = {}
    for key, values in per_round.items():
        t = _timing(values)
        entries[key] = Timing(max(t.median_ms, 0.0), t.p10_ms, t.p90_ms)
    ratios = []
    for choice, w in zip(students, raw_whole, strict=True):
        pred = fixed_rounds + sum(per_round[v] for layer in choice for v in layer)
        ratios.append(float(np.median(w / pred)))
    report(
        f"measured {len(entries)} variants, fixed cost and {len(students)} whole students on "
        f"{backend.name} ({s.phase}, {len(empty)} interleaved rounds) in "
        f"{time.perf_counter() - t0:.1f}s"
    )
    return Measured(entries, fixed, whole, len(empty), ratios)


# --- whole students ---------------------------------------------------------------------------
def assemble(
    parent_model: BlockModel, choices: list[list[str]], built: dict | None = None
) -> BlockModel:
    """A student sharing the parent's unchanged parameters, every other choice built data-free
    (fine for latency, not for quality). ``built`` caches the built modules by (layer, variant)
    across students that are only timed, so a profile holds one copy of each block."""
    build = data_free_loader(parent_model)
    if built is not None:

        def build(layer, spec, _build=build):
            key = (layer, str(spec))
            if key not in built:
                built[key] = _build(layer, spec)
            return built[key]

    return assemble_student(parent_model, choices, build, share_parent=True).eval()


def random_students(profile: HardwareProfile, count: int, seed: int) -> list[list[list[str]]]:
    """``count`` heterogeneous students: per layer a uniform random choice among the profile's
    attention and FFN entries."""
    rng = random.Random(seed)
    attn = sorted(k for k in profile.entries if k.startswith("attention:"))
    ffn = sorted(k for k in profile.entries if k.startswith("ffn:"))
    if not attn or not ffn:
        raise UserError("the profile needs attention and FFN entries to build random students")
    return [
        [[rng.choice(attn), rng.choice(ffn)] for _ in range(profile.shape.num_layers)]
        for _ in range(count)
    ]


def settings_of(profile: HardwareProfile, **overrides) -> MeasureSettings:
    """The measurement settings a profile was made with (``overrides`` replace some)."""
    base = dict(
        backend=profile.backend,
        phase=profile.phase,
        batch=profile.batch,
        seq=profile.seq if profile.phase == "prefill" else 1,
        context=max(profile.context, 1),
        precision=profile.precision,
        threads=profile.threads,
        stack=profile.stack,
        min_block_ms=float(profile.extra.get("min_block_ms", 50.0)),
    )
    return MeasureSettings(**{**base, **overrides})


def measure_profile(
    parent_model: BlockModel,
    variants: list[VariantSpec],
    s: MeasureSettings,
    model_source: str = "",
    students: int = 8,
    seed: int = 0,
    report: Report = print,
) -> HardwareProfile:
    """Measure every variant, the fixed cost and (``students > 0``) that many random
    heterogeneous students in one interleaved run; the profile stores the predictor's MAPE."""
    backend = get_backend(s)
    shell = HardwareProfile(
        device=backend.device(),
        backend=s.backend,
        backend_version=backend.version(),
        threads=backend.threads,
        precision=s.precision,
        phase=s.phase,
        batch=s.batch,
        seq=s.tokens,
        context=s.context if s.phase == "decode" else 0,
        shape=parent_model.shape,
        entries={str(v): Timing(0.0, 0.0, 0.0) for v in variants},
        fixed=Timing(0.0, 0.0, 0.0),
        model_source=model_source,
        stack=s.stack,
        warmup=s.warmup,
        created=_now(),
        notes=_NOTES.get(s.backend, ""),
        extra={"min_block_ms": s.min_block_ms},
    )
    choices = random_students(shell, students, seed) if students > 0 else []
    m = measure_all(parent_model, variants, s, choices, backend, report)
    profile = replace(shell, entries=m.entries, fixed=m.fixed, repeats=m.rounds)
    if choices:
        checks = [
            StudentCheck(c, profile.predict_ms(c), t.median_ms, abs(r - 1.0) * 100.0)
            for c, t, r in zip(choices, m.students, m.paired_ratios, strict=True)
        ]
        profile = replace(profile, validation=Validation.from_checks(seed, checks, _now()))
        report(
            f"predictor vs {students} whole students: MAPE {profile.validation.mape:.2f} % "
            f"(max {profile.validation.max_ape:.2f} %; same-round paired MAPE "
            f"{profile.validation.paired_mape:.2f} %)"
        )
    return profile


def validate_profile(
    profile: HardwareProfile,
    parent_model: BlockModel,
    students: int = 8,
    seed: int = 0,
    report: Report = print,
) -> HardwareProfile:
    """Re-measure the profile (its variants and fixed cost) together with ``students`` random
    students, interleaved, and return it with the fresh entries and validation. Entries are
    re-measured too because on a shared machine the absolute level drifts between runs far more
    than the predictor errs; measuring in one run validates the sum-of-parts predictor."""
    variants = [VariantSpec.parse(k) for k in profile.entries]
    fresh = measure_profile(
        parent_model, variants, settings_of(profile), profile.model_source, students, seed, report
    )
    return replace(fresh, notes=profile.notes or fresh.notes, extra=profile.extra)


_NOTES = {
    "onnxruntime-cpu": "onnxruntime CPUExecutionProvider, intra-op threads as stated, inter-op 1, "
    "sequential, ORT_ENABLE_ALL, no spinning; TorchScript ONNX exporter, opset 18, static shapes; "
    "entries, fixed cost and validation students measured in one interleaved run",
}


def ensure_profile(
    path: str | Path,
    parent_model: BlockModel,
    variants: list[VariantSpec],
    s: MeasureSettings,
    model_source: str = "",
    report: Report = print,
) -> HardwareProfile:
    """Load ``path`` and measure only its missing entries, else measure a new, validated one;
    writes the file atomically. Missing entries are measured with the profile's own settings
    alongside the parent attention and FFN, and scaled by the ratio of the stored to the fresh
    parent entries, so that a drift of the machine's speed between runs does not skew them."""
    path = Path(path)
    if not path.exists():
        profile = measure_profile(parent_model, variants, s, model_source, report=report)
        save_profile(profile, path)
        return profile
    profile = load_profile(path)
    if profile.shape != parent_model.shape:
        raise UserError(f"{path}: profile is for {profile.shape_key}, not {parent_model.shape.key}")
    missing = missing_variants(profile, variants)
    if not missing:
        return profile
    report(f"{path.name}: measuring {len(missing)} missing entries: {', '.join(missing)}")
    refs = [k for k in ("attention:parent", "ffn:parent") if k in profile.entries]
    specs = [VariantSpec.parse(k) for k in dict.fromkeys(missing + refs)]
    m = measure_all(parent_model, specs, settings_of(profile), report=report)
    fresh_ref = sum(m.entries[k].median_ms for k in refs)
    scale = sum(profile.cost_ms(k) for k in refs) / fresh_ref if refs and fresh_ref > 0 else 1.0
    new = {
        k: Timing(t.median_ms * scale, t.p10_ms * scale, t.p90_ms * scale)
        for k, t in m.entries.items()
        if k in missing
    }
    profile = profile.with_entries(new)
    save_profile(profile, path)
    return profile


def resolve_profiles(
    files: Sequence[str | Path],
    phases: Sequence[MeasureSettings],
    parent_model: BlockModel,
    variants: list[VariantSpec],
    out_dir: str | Path,
    model_source: str = "",
    measure_missing: bool = False,
    report: Report = print,
) -> list[HardwareProfile]:
    """Profiles covering ``variants``, in order: each of ``files`` is loaded and must cover
    them (with ``measure_missing``, a copy in ``out_dir`` is completed with the file's own
    settings; without, ``ProfileCoverageError``); each of ``phases`` is measured (or completed)
    into ``out_dir`` under its default name."""
    from compress.profile import check_covers, profile_file_name

    out_dir = Path(out_dir)
    profiles = []
    for name in files:
        profile = load_profile(name)
        if measure_missing and missing_variants(profile, variants):
            copy_path = out_dir / Path(name).name
            if not copy_path.exists():
                save_profile(profile, copy_path)
            profile = ensure_profile(
                copy_path, parent_model, variants, settings_of(profile), model_source, report
            )
        check_covers(profile, parent_model.shape, variants, where=str(name))
        profiles.append(profile)
    for s in phases:
        name = profile_file_name(
            s.backend, s.phase, s.batch, s.tokens, s.context, parent_model.shape.key
        )
        path = out_dir / name
        profiles.append(ensure_profile(path, parent_model, variants, s, model_source, report))
    return profiles


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

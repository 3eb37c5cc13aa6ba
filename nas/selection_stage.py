"""The selection stage: profiles -> costed selection problem -> strategies -> Pareto front.

Reads the library table (BLD records + replace-one-block scores) and the hardware profiles,
runs every strategy the spec names (``puzzle-mip`` per budget; ``amoeba-dp`` and
``diswot-evolution`` as candidate points) and stores the front under ``pareto/``.
"""

from __future__ import annotations

import time

from nas.spec import SearchSpec
from nas.stage_io import Prepared, Report, Selection
from nas.store import JobStore

PHASE_METRIC = {"prefill": "prefill_latency_ms", "decode": "decode_latency_ms"}


def phase_profiles(profiles: list) -> dict:
    """``{metric: profile}``: the first profile of each phase (prefill, decode)."""
    out: dict = {}
    for profile in profiles:
        out.setdefault(PHASE_METRIC[profile.phase], profile)
    return out


def job_profiles(spec: SearchSpec, store: JobStore, parent, report=print) -> list:
    """The spec's hardware profiles covering its space (missing entries measured into the
    job's ``hwprofiles/``); raises ``SelectionError`` when the spec names none."""
    from compress.latency import MeasureSettings, resolve_profiles
    from compress.profile import ProfileCoverageError
    from compress.variants import parse_space
    from nas.errors import SpecError
    from nas.selection.errors import SelectionError

    hw, m = spec.hardware, spec.hardware.measure
    if not hw.profiles and not hw.phases:
        raise SelectionError(
            "hardware: name profile files (hardware.profiles) or phases to measure "
            "(hardware.phases with hardware.measure); see `nas profile`"
        )
    if hw.phases and m is None:
        raise SpecError("hardware.phases needs hardware.measure (backend and settings)")
    phases = [
        MeasureSettings(
            backend=m.backend,
            phase=ph.phase,
            batch=ph.batch,
            seq=ph.seq or 128,
            context=ph.context or 512,
            precision=m.precision,
            threads=m.threads,
            warmup=m.warmup,
            repeats=m.repeats,
        )
        for ph in hw.phases
    ]
    attention, ffn = parse_space(spec.space.attention, spec.space.ffn, parent.shape)
    try:
        return resolve_profiles(
            hw.profiles,
            phases,
            parent.adapter,
            attention + ffn,
            store.hwprofiles,
            spec.model.source,
            measure_missing=m is not None,
            report=report,
        )
    except ProfileCoverageError as exc:
        if m is not None or "no entry" not in str(exc):
            raise
        hint = "or set hardware.measure so the job measures missing entries"
        raise ProfileCoverageError(f"{exc}, {hint}") from None


def stage_selection(
    spec: SearchSpec, store: JobStore, prepared: Prepared, report: Report = print
) -> Selection:
    """Build and store the front; skipped when its record exists (the profiles are then read
    back: those the job measured are in its ``hwprofiles/`` already)."""
    if store.stage_done("selection"):
        rec = store.read_stage("selection")
        report(f"[selection] done before: {rec['points']} points")
        by_metric = phase_profiles(job_profiles(spec, store, prepared.parent, report))
        return Selection(rec["points"], rec["primary_metric"], by_metric)
    from nas.library import library_frame
    from nas.pareto import CandidatePoint, Target, select_front, write_front
    from nas.selection.errors import SelectionError

    t0 = time.perf_counter()
    profiles = job_profiles(spec, store, prepared.parent, report)
    by_metric = phase_profiles(profiles)
    frame = library_frame(store.dir)
    score = spec.scoring.metric
    unscored = frame[score].isna() & ~frame["variant"].str.endswith(":parent")
    if unscored.any():  # variants pruned before BLD (space.prefilter) have no score
        report(f"[selection] {int(unscored.sum())} unscored (pruned) variants left out")
        frame = frame[~unscored]
    # batch size as a searchable option: one problem per decode batch the profiles cover
    decodes = {p.batch: p for p in reversed(profiles) if p.phase == "decode"}
    batches = sorted(decodes) or [None]
    problems = {}
    for i, batch in enumerate(batches):
        phases = by_metric | ({"decode_latency_ms": decodes[batch]} if batch else {})
        name = "library.csv" if i == 0 else f"library_b{batch}.csv"
        problems[batch] = _problem(spec, store, prepared.parent.shape, frame, phases, name)
    rules, workload = problems[batches[0]]
    points = _strategy_points(spec, prepared, rules, by_metric, report)
    names = spec.strategy.names
    targets = [Target.of(t) for t in spec.targets]
    if len(batches) > 1:  # the same absolute targets at every batch
        targets = [t.absolute(rules, workload) for t in targets]
    results, failures = {}, []
    for batch, (problem, work) in problems.items():
        try:
            results[batch] = select_front(
                problem,
                targets,
                [CandidatePoint(p.strategy, p.choices) for p in points] if problem is rules else [],
                strategies=["puzzle-mip"] if "puzzle-mip" in names else [],
                solutions_per_budget=spec.strategy.solutions_per_budget,
                diversity_layers=spec.strategy.diversity_layers,
                time_limit_s=spec.strategy.time_limit_s,
                solver=spec.strategy.solver,
                workload=work,
                on_infeasible="record",
            )
        except SelectionError as exc:  # nothing fits at this batch; another one may do
            if len(batches) == 1:
                raise
            failures.append(f"batch {batch}: {exc}")
    if not results:
        raise SelectionError("; ".join(failures))
    if len(batches) > 1:
        from nas.batch_search import merge_batches

        result = merge_batches(results)
        result.meta["infeasible"] += failures
        report(f"[selection] searched decode batches {batches}: points at {sorted(results)}")
    else:
        result = results[batches[0]]
    from nas.eval_sets import front_meta_fields

    result.meta.update(front_meta_fields(spec))
    write_front(store.dir, result, rules)
    primary = result.meta.get("primary_metric", next(iter(by_metric), "params"))
    record = {
        "points": len(result.front),
        "primary_metric": primary,
        "profiles": {m: p.describe() for m, p in by_metric.items()},
        "strategies": list(names),
        "infeasible": result.meta.get("infeasible", []),
        "wall_s": time.perf_counter() - t0,
    }
    store.write_stage("selection", record)
    report(f"[selection] {len(result.front)} points on the front in {record['wall_s']:.1f}s")
    return Selection(record["points"], primary, by_metric)


def _problem(spec: SearchSpec, store: JobStore, shape, frame, by_metric: dict, name: str):
    """(problem with the spec's fix / forbid rules, workload) for one set of phase profiles; the
    problem is written as the job's block-library file ``pareto/NAME`` and read back through the
    same reader as any user's library (``nas select``)."""
    from nas.library import joint_scores
    from nas.selection.block_library import read_library, write_library
    from nas.selection.costs import (
        BYTES_PER_VALUE,
        Workload,
        activations_mib,
        problem_from_library,
        profile_latency,
    )

    latency, fixed = profile_latency(by_metric)
    decode = by_metric.get("decode_latency_ms")
    prefill = by_metric.get("prefill_latency_ms")
    score = spec.scoring.metric
    batch = decode.batch if decode else 1
    value_bytes = BYTES_PER_VALUE[spec.model.dtype]
    problem = problem_from_library(
        frame,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        vocab_size=shape.vocab_size,
        tied_embeddings=shape.tied_embeddings,
        score_column=score,
        latency=latency,
        latency_metrics=list(by_metric),
        fixed_latency_ms=fixed,
        batch=batch,
        context=decode.context if decode else spec.data.seq_len,
        bytes_per_value=value_bytes,
        weight_bytes=BYTES_PER_VALUE[spec.hardware.weight_precision or spec.model.dtype],
        activations_mib=activations_mib(
            batch,
            prefill.seq if prefill else 1,
            shape.hidden_size,
            shape.intermediate_size,
            shape.vocab_size,
            value_bytes,
        ),
        joint_scores=joint_scores(store.dir, score) if spec.scoring.blocks == "joint" else None,
    )
    path = write_library(problem, store.pareto_file(name), score=score)
    problem = read_library(path, score=score)
    rules = problem.restrict(spec.strategy.fix, [_forbidden(f) for f in spec.strategy.forbid])
    return rules, Workload(batch, prefill.batch * prefill.seq if prefill else 1)


def _forbidden(text: str) -> tuple[int | None, str]:
    """``"ffn:noop"`` -> (None, "ffn:noop"); ``"3/ffn:noop"`` -> (3, "ffn:noop")."""
    layer, sep, variant = text.partition("/")
    if not sep:
        return None, text
    try:
        return int(layer), variant
    except ValueError:
        from nas.selection.errors import SelectionError

        raise SelectionError(f"strategy.forbid: {text!r} is not VARIANT or LAYER/VARIANT") from None


def _strategy_points(
    spec: SearchSpec, prepared: Prepared, problem, by_metric: dict, report
) -> list:
    """Candidate points of the strategies that do not take budgets."""
    points: list = []
    names = spec.strategy.names
    calib = prepared.splits.train[: max(1, min(len(prepared.splits.train), 32))]
    if "amoeba-dp" in names:
        from nas.strategies.depth import amoeba_dp_points

        dp = amoeba_dp_points(
            prepared.parent.adapter,
            calib,
            keep_last=spec.strategy.keep_last_layers,
            batch_size=spec.scoring.batch_size,
        )
        points.extend(p for p in dp[1:])  # dp[0] is the parent itself
        report(f"[selection] amoeba-dp: {len(dp) - 1} depth masks")
    if "diswot-evolution" in names:
        from nas.ray_runtime import ensure_ray
        from nas.strategies.evolution import ParamsLatency, diswot_evolution

        ensure_ray(spec.ray)
        metric = next(iter(by_metric), None)
        profile = by_metric[metric] if metric else None
        # homogeneous students: only variants every layer has (a prefilter may prune per layer)
        attention, ffn = (
            [
                o.variant
                for o in getattr(problem.layers[0], kind)
                if not o.variant.endswith(":noop")
                and all(
                    o.variant in {x.variant for x in getattr(layer, kind)}
                    for layer in problem.layers
                )
            ]
            for kind in ("attention", "ffn")
        )
        n = prepared.parent.shape.num_layers
        evo = diswot_evolution(
            prepared.parent.adapter,
            calib,
            _ProfileLatency(profile) if profile else ParamsLatency(prepared.parent.shape),
            depths=sorted({n, max(1, n - 1), max(1, (3 * n) // 4), max(1, n // 2)}),
            attention_options=attention,
            ffn_options=ffn,
            trials=spec.strategy.trials,
            seed=spec.bld.seed,
        )
        points.extend(evo)
        report(f"[selection] diswot-evolution: {len(evo)} non-dominated students")
    return points


class _ProfileLatency:
    """Predicted latency of a student's choices from one profile (picklable for Ray Tune)."""

    def __init__(self, profile):
        self.profile = profile

    def __call__(self, choices) -> float:
        return float(self.profile.predict_ms(choices))

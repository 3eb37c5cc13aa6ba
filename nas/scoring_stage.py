"""The scoring stage: replace-one-block scores of every library variant, as Ray tasks, resumable.

For every layer, the variants to score are the library's trained variants plus the space's
``parent`` and ``noop`` variants (they need no weights). Each score is one JSON file
``results/<job>/scores/L{layer:03d}__{canonical with ':' -> '__'}.json`` written atomically:
``{layer, kind, variant, kl, lm_loss, top1, tokens, seconds}``. A resumed job scores only the
variants without a file. The parent's activations on the eval split are computed once into
``results/<job>/scoring/cache`` (memory-mapped ``.npy``, see ``compress.scoring``) and every
task starts its forward passes at the replaced layer from there. One Ray task per layer.

With ``scoring.blocks: joint`` every pair of a non-parent attention variant and a non-parent FFN
variant of a layer is also scored with both replaced together (a pair with a parent half scores
exactly as its other half alone), into ``scores/joint/L{layer:03d}__{attention}+{ffn}.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from compress.atomic import atomic_write_json
from compress.variants import VariantSpec
from nas.layout import JobLayout
from nas.spec import SearchSpec
from nas.stage_io import BLDResult, Prepared, Report, ScoringResult
from nas.store import JobStore

JOINT_DIR = "joint"


def score_file_name(layer: int, spec: VariantSpec | str) -> str:
    """``L003__ffn__width=86.json``: the library's file stem for the variant, as JSON; for a
    joint pair ``attention:noop+ffn:noop``: ``joint/L003__attention__noop+ffn__noop.json``."""
    from compress.library import variant_stem

    text = str(spec)
    if "+" in text:
        attention, ffn = text.split("+")
        stem = variant_stem(layer, VariantSpec.parse(attention))
        return f"{JOINT_DIR}/{stem}+{ffn.replace(':', '__')}.json"
    return variant_stem(layer, VariantSpec.parse(text)) + ".json"


def joint_pairs(pairs: list[tuple[int, VariantSpec]]) -> list[tuple[int, str]]:
    """Per layer, ``attention+ffn`` for every non-parent attention and non-parent FFN variant."""
    out = []
    for layer in sorted({layer for layer, _ in pairs}):
        mine = [v for j, v in pairs if j == layer and not v.is_parent]
        out += [
            (layer, f"{a}+{f}")
            for a in mine
            if a.kind == "attention"
            for f in mine
            if f.kind == "ffn"
        ]
    return out


def read_joint_scores(job_dir: str | Path) -> list[dict]:
    """Every joint score record (``layer``, ``attention``, ``ffn`` and the score columns)."""
    folder = JobLayout(job_dir).joint_scores
    return [json.loads(p.read_text()) for p in sorted(folder.glob("L*.json"))]


def read_scores(job_dir: str | Path) -> list[dict]:
    """Every score record of a job (possibly none yet), sorted by layer and variant."""
    folder = JobLayout(job_dir).scores
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("L*.json"))]
    return sorted(rows, key=lambda r: (r["layer"], r["variant"]))


def variants_to_score(spec: SearchSpec, shape, library_dir: Path) -> list[tuple[int, VariantSpec]]:
    """(layer, variant) pairs: the library's trained variants + the space's parent/noop ones."""
    from compress.library import read_records
    from nas.bld_stage import searched_layers, space_variants

    attention, ffn = space_variants(spec, shape)
    free = [v for v in attention + ffn if not v.trainable]
    searched = set(searched_layers(spec, shape))  # elsewhere only the parent's subblocks
    pairs = {
        (layer, v)
        for layer in range(shape.num_layers)
        for v in free
        if layer in searched or v.is_parent
    }
    if library_dir.exists():
        for record in read_records(library_dir):
            pairs.add((int(record["layer"]), VariantSpec.parse(record["variant"])))
    return sorted(pairs)


def stage_scoring(
    spec: SearchSpec,
    store: JobStore,
    prepared: Prepared,
    bld: BLDResult,
    report: Report = print,
) -> ScoringResult:
    """Score what is missing (Ray tasks, one per layer), then record the stage.

    ``prepared`` is the baseline stage's output (parent and calibration splits), ``bld`` the
    BLD stage's (its library folder). The stage is recorded as done only once the BLD stage is (a partial library is scored as far as it
    goes, and a resumed job scores the rest). Raises ``JobError`` when a task fails.
    """
    scores_dir = store.scores
    if store.stage_done("scoring"):
        rec = store.read_stage("scoring")
        report(f"[scoring] done before: {rec['scored']} variants scored")
        return ScoringResult(scores_dir, rec["scored"], 0, rec["wall_s"])
    t0 = time.perf_counter()
    parent, splits = prepared.parent, prepared.splits
    library_dir = bld.library_dir
    pairs = [(layer, str(v)) for layer, v in variants_to_score(spec, parent.shape, library_dir)]
    if spec.scoring.blocks == "joint":
        pairs += joint_pairs([(layer, VariantSpec.parse(v)) for layer, v in pairs])
    pending: dict[int, list[str]] = {}
    for layer, variant in pairs:
        if not (scores_dir / score_file_name(layer, variant)).exists():
            pending.setdefault(layer, []).append(variant)
    todo = sum(len(v) for v in pending.values())
    report(f"[scoring] {len(pairs)} variants, {todo} to score")
    if todo:
        from compress.scoring import ActivationCache

        tokens = splits.eval
        if spec.scoring.eval_tokens is not None:
            tokens = tokens[: max(1, spec.scoring.eval_tokens // splits.seq_len)]
        cache_dir = store.scoring_cache
        ActivationCache.build(parent.adapter, tokens, spec.scoring.batch_size, folder=cache_dir)
        store.push()  # object storage: the cache goes up before the tasks read it
        parent.release()  # the driver waits while the tasks run; its weights need not stay
        _run_tasks(spec, store, pending, cache_dir, library_dir, scores_dir, report, len(pairs))
        store.pull_folder(scores_dir)  # what the tasks published
    wall_s = time.perf_counter() - t0
    rows = read_scores(store.dir)
    scored = len(rows) + len(read_joint_scores(store.dir))
    # the table nas.library.library_frame merges into the library
    atomic_write_json(store.scores_table, rows)
    if store.stage_done("bld"):  # with a partial library, a resumed job scores the rest
        store.write_stage(
            "scoring",
            {"scored": scored, "computed": todo, "metric": spec.scoring.metric, "wall_s": wall_s},
        )
    report(f"[scoring] {todo} variants scored in {wall_s:.1f}s")
    return ScoringResult(scores_dir, scored, todo, wall_s)


def _run_tasks(spec, store, pending, cache_dir, library_dir, scores_dir, report, total) -> None:
    import ray

    from compress.progress import progress
    from nas.bld_stage import _connect_ray
    from nas.ray_runtime import as_completed, task_options

    _connect_ray(spec)  # Ray stays up for the later stages of this process
    remote = ray.remote(**task_options(num_cpus=1))(score_layer)
    refs = {
        remote.remote(
            spec.model.source,
            spec.model.dtype,
            store.location(cache_dir),
            store.location(library_dir),
            store.location(scores_dir),
            layer,
            variants,
            spec.scoring.batch_size,
        ): layer
        for layer, variants in _interleaved(sorted(pending.items()))
    }
    done = total - sum(len(v) for v in pending.values())
    with progress("[scoring] variants", total, completed=done) as bar:
        for _layer, written in as_completed(refs, "scoring layer"):
            done += len(written)
            store.set_progress("scoring", done, total)
            bar.update(done)


def _interleaved(items: list) -> list:
    """First, last, second, second-to-last...: a task of layer l runs layers l.. of the parent,
    so tasks running side by side hold about one parent's layers between them, not two."""
    out = []
    while items:
        out.append(items.pop(0))
        if items:
            out.append(items.pop())
    return out


_PARENTS: dict = {}


def _worker_parent(source: str, dtype: str):
    """The parent, loaded once per worker process."""
    import torch

    from compress.loading import load_parent

    key = (source, dtype)
    if key not in _PARENTS:
        _PARENTS[key] = load_parent(source, dtype=getattr(torch, dtype))
    return _PARENTS[key]


def score_layer(
    source: str,
    dtype: str,
    cache_dir: str,
    library_dir: str,
    scores_dir: str,
    layer: int,
    variants: list[str],
    batch_size: int,
) -> list[str]:
    """Score the given variants of one layer; write one score file each; return those written.

    A plain function (the stage runs it as a Ray task); the parent is loaded from ``source``.
    The folders are local paths or URIs (a job on object storage: the cache and the layer's
    variants are fetched to this node, the score files published).
    """
    from compress.library import variant_paths
    from compress.scoring import ActivationCache, parent_scores, score_block
    from nas.storage import fetch, output_folder, publish

    parent = _worker_parent(source, dtype)
    adapter = parent.adapter
    cache = ActivationCache.open(fetch(cache_dir))
    trained = {VariantSpec.parse(t) for text in variants for t in text.split("+")}
    files = [p.name for v in trained if v.trainable for p in variant_paths("", layer, v)]
    library_dir = str(fetch(library_dir, files))
    out = output_folder(scores_dir)
    written = []
    for text in variants:
        specs = [VariantSpec.parse(t) for t in text.split("+")]
        if len(specs) == 1 and specs[0].is_parent:
            scores = parent_scores(adapter, cache, batch_size)
        else:
            modules = {v.kind: _module(v, layer, adapter, library_dir) for v in specs}
            scores = score_block(adapter, cache, layer, modules, batch_size)
        if len(specs) == 1:
            record = {"layer": layer, "kind": specs[0].kind, "variant": text}
        else:
            record = {"layer": layer, "attention": str(specs[0]), "ffn": str(specs[1])}
        atomic_write_json(out / score_file_name(layer, text), {**record, **scores.to_dict()})
        written.append(text)
    publish(out, scores_dir, [score_file_name(layer, text) for text in written])
    parent.release()  # the worker keeps the parent mapped, not resident, between tasks
    return written


def _module(variant: VariantSpec, layer: int, adapter, library_dir: str):
    """The module of a variant: from the library if trained, else built from the parent."""
    from compress.builders import build_variant
    from compress.library import load_variant

    if variant.trainable:
        return load_variant(Path(library_dir), layer, variant, adapter)
    return build_variant(variant, adapter.subblock(layer, variant.kind))

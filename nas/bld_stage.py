"""The capture and BLD stages: parent activations to disk, then one Ray task per variant.

``stage_capture`` records the parent's per-layer subblock inputs/outputs on the first
``bld.tokens`` tokens of the train split (``activations/train``) and on ``bld.eval_tokens``
tokens of the eval split (``activations/heldout``, where nMSE is measured).
``stage_bld`` trains every trainable (layer, variant) of the space that is not yet in
``library/``: each is one Ray task that reads the activations from disk by path (no big tensor
goes through the object store), trains with ``compress.bld.train_variant`` and writes its own
files atomically. Finished variants are skipped, so a resumed job trains only what is missing.
Ray runs in-process on this machine unless ``ray.address`` names a cluster (whose workers
must then see the job folder at the same path).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from compress.progress import progress
from compress.variants import VariantSpec, parse_space
from nas.errors import JobError
from nas.ray_runtime import as_completed, task_options
from nas.spec import SearchSpec
from nas.stage_io import BLDResult, Captured, Prepared, Report
from nas.store import JobStore


def bld_config(spec: SearchSpec):
    """The spec's ``bld`` section as a ``compress.bld.BLDConfig``."""
    from compress.bld import BLDConfig

    b = spec.bld
    return BLDConfig(
        tokens=b.tokens,
        batch_size=b.batch_size,
        lr=b.lr,
        weight_decay=b.weight_decay,
        warmup_fraction=b.warmup_fraction,
        seed=b.seed,
        init_tokens=b.init_tokens,
        eval_batch_size=spec.scoring.batch_size,
    )


def space_variants(spec: SearchSpec, shape) -> tuple[list[VariantSpec], list[VariantSpec]]:
    """The space's canonical (attention, FFN) variants for ``shape``; bad entries -> SpecError."""
    from nas.errors import SpecError

    try:
        return parse_space(list(spec.space.attention), list(spec.space.ffn), shape)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def searched_layers(spec: SearchSpec, shape) -> list[int]:
    """``space.layers`` (checked against the parent), else every layer."""
    from nas.errors import SpecError

    layers = spec.space.layers
    if layers is None:
        return list(range(shape.num_layers))
    if max(layers) >= shape.num_layers or min(layers) < 0:
        raise SpecError(f"space.layers: {layers} are not all in 0..{shape.num_layers - 1}")
    return sorted(set(layers))


def planned_variants(
    spec: SearchSpec, shape, kept: dict | None = None
) -> list[tuple[int, VariantSpec]]:
    """Every (layer, variant) BLD trains, in a fixed order (layer, then attention before FFN).

    ``kept`` (from ``prefiltered``) maps "layer:kind" to the canonical variants kept there.
    """
    attention, ffn = space_variants(spec, shape)
    return [
        (layer, v)
        for layer in searched_layers(spec, shape)
        for v in attention + ffn
        if v.trainable and (kept is None or str(v) in kept[f"{layer}:{v.kind}"])
    ]


def prefiltered(
    spec: SearchSpec, store: JobStore, prepared: Prepared, report: Report = print
) -> dict | None:
    """``space.prefilter``: the DisWOT-ranked variants kept per layer and kind, decided once.

    The choice is stored in ``bld/prefilter.json`` so a resumed job trains the same set.
    Returns None when the spec has no prefilter.
    """
    if spec.space.prefilter is None:
        return None
    path = store.prefilter
    if path.exists():
        return json.loads(path.read_text())
    from compress.atomic import atomic_write_json
    from compress.diswot import prefilter_variants

    t0 = time.perf_counter()
    attention, ffn = space_variants(spec, prepared.parent.shape)
    calib = prepared.splits.train[: min(len(prepared.splits.train), 37)]
    kept = prefilter_variants(
        prepared.parent.adapter, attention + ffn, calib, spec.space.prefilter.keep_per_layer
    )
    table = {f"{layer}:{kind}": [str(v) for v in vs] for (layer, kind), vs in kept.items()}
    atomic_write_json(path, table)
    report(
        f"[bld] DisWOT prefilter kept {spec.space.prefilter.keep_per_layer} trainable variant(s) "
        f"per layer and kind in {time.perf_counter() - t0:.1f}s"
    )
    return table


# --- capture ----------------------------------------------------------------------------------
def stage_capture(
    spec: SearchSpec, store: JobStore, prepared: Prepared, report: Report = print
) -> Captured:
    """Capture the parent's activations for BLD (reused when already on disk for these tokens)."""
    from compress.capture import capture, read_meta

    splits, adapter = prepared.splits, prepared.parent.adapter
    seq_len = splits.seq_len
    n_train = min(splits.train.shape[0], max(1, math.ceil(spec.bld.tokens / seq_len)))
    n_held = min(splits.eval.shape[0], max(1, math.ceil(spec.bld.eval_tokens / seq_len)))
    train_dir, heldout_dir = store.activations_train, store.activations_heldout
    on_disk = read_meta(train_dir) is not None and read_meta(heldout_dir) is not None
    if store.stage_done("capture") and (on_disk or store.stage_done("bld")):
        report("[capture] done before")
        return Captured(train_dir, heldout_dir, n_train * seq_len, n_held * seq_len)
    t0 = time.perf_counter()
    dtype = spec.bld.activation_dtype or spec.model.dtype  # activations at the run dtype
    parts = ((splits.train[:n_train], train_dir, 0), (splits.eval[:n_held], heldout_dir, n_train))
    with progress("[capture] parent activations", n_train + n_held) as bar:
        train_meta, held_meta = (
            capture(
                adapter,
                tokens,
                folder,
                batch_size=spec.scoring.batch_size,
                dtype=dtype,
                progress=lambda done, total, before=before: bar.update(before + done),
            )
            for tokens, folder, before in parts
        )
    wall = time.perf_counter() - t0
    store.write_stage(
        "capture",
        {
            "train": {**train_meta.__dict__, "folder": str(train_dir)},
            "heldout": {**held_meta.__dict__, "folder": str(heldout_dir)},
            "wall_s": wall,
        },
    )
    report(
        f"[capture] {train_meta.num_tokens} train + {held_meta.num_tokens} held-out tokens x "
        f"{adapter.num_layers} layers ({dtype}) in {wall:.1f}s"
    )
    return Captured(train_dir, heldout_dir, train_meta.num_tokens, held_meta.num_tokens)


# --- BLD --------------------------------------------------------------------------------------
def _train_one(
    layer: int,
    variant: str,
    parent_path: str,
    train_dir: str,
    heldout_dir: str,
    library_dir: str,
    config: dict,
) -> dict:
    """Body of one Ray task: train ``variant`` of ``layer`` and write it to the library.

    The four locations are local paths, or URIs of a job on object storage: then the task
    fetches the parent subblock and only this layer's activations to its node and publishes
    the variant's two files (the record last). Idempotent: a variant already in the library
    (e.g. a retried task whose first attempt finished writing) is read back, not retrained.
    """
    import json

    import torch

    from compress.bld import BLDConfig, train_variant
    from compress.capture import META, Activations, layer_files
    from compress.library import save_variant, variant_paths
    from compress.subblock_file import load_parent_subblock
    from nas.ray_runtime import task_device
    from nas.storage import Remote, fetch, is_uri, local_stem, output_folder, publish

    torch.set_num_threads(1)
    spec = VariantSpec.parse(variant)
    weights, record_path = variant_paths("", layer, spec)
    if is_uri(library_dir) and Remote(library_dir).exists(record_path.name):
        return json.loads(Remote(library_dir).read_text(record_path.name))
    if not is_uri(library_dir) and (Path(library_dir) / record_path).is_file():
        return json.loads((Path(library_dir) / record_path).read_text())
    parent = load_parent_subblock(local_stem(parent_path))
    inputs = [Activations(fetch(d, [META, *layer_files(layer)])) for d in (train_dir, heldout_dir)]
    module, record = train_variant(
        spec, layer, parent, *inputs, BLDConfig(**config), device=task_device()
    )
    record.update(worker_pid=os.getpid(), activations_from=train_dir)
    out = output_folder(library_dir)
    # trained with float32 master weights; kept at the run dtype (the parent subblock's)
    save_variant(out, layer, spec, module.to(next(parent.parameters()).dtype), record)
    publish(out, library_dir, [weights.name, record_path.name])
    return record


def _save_parent_blocks(store: JobStore, adapter, keys: set[tuple[int, str]]) -> dict:
    """Each needed parent subblock as safetensors + JSON the tasks load without pickle
    (``compress.subblock_file``; written once, atomically, the JSON last)."""
    from compress.subblock_file import save_parent_subblock

    paths = {}
    for layer, kind in sorted(keys):
        stem = store.bld_parent / f"L{layer:03d}.{kind}"
        if not stem.with_name(stem.name + ".json").exists():
            save_parent_subblock(adapter, layer, kind, stem)
        paths[layer, kind] = str(stem)
    return paths


def stage_bld(
    spec: SearchSpec,
    store: JobStore,
    prepared: Prepared,
    captured: Captured,
    report: Report = print,
    limit: int | None = None,
) -> BLDResult:
    """Train every missing variant of the space (at most ``limit`` now, if given) on Ray.

    The stage is recorded as done only when the library is complete. Raises ``JobError`` when
    a task fails after its retries (the variants finished so far stay in the library).
    """
    from compress.library import has_variant, read_records

    library_dir = store.library
    shape = prepared.parent.shape
    planned = planned_variants(spec, shape, prefiltered(spec, store, prepared, report))
    if store.stage_done("bld"):
        report(f"[bld] done before: {len(planned)} variants in {library_dir}")
        return BLDResult(library_dir, len(planned), 0, len(planned), True, 0.0)
    library_dir.mkdir(parents=True, exist_ok=True)
    for leftover in library_dir.glob(".*.tmp"):  # a killed run's half-written file
        leftover.unlink(missing_ok=True)
    missing = [(layer, v) for layer, v in planned if not has_variant(library_dir, layer, v)]
    skipped = len(planned) - len(missing)
    todo = missing if limit is None else missing[: max(limit, 0)]
    t0 = time.perf_counter()
    report(f"[bld] {len(planned)} variants: {skipped} in the library already, training {len(todo)}")
    if todo:
        _run_on_ray(
            spec, store, prepared.parent, captured, library_dir, todo, skipped, len(planned)
        )
    wall = time.perf_counter() - t0
    complete = len(todo) == len(missing)
    if complete:
        records = {(r["layer"], r["variant"]) for r in read_records(library_dir)}
        lost = [f"L{layer} {v}" for layer, v in planned if (layer, str(v)) not in records]
        if lost:
            raise JobError(f"BLD finished but the library lacks {', '.join(lost[:5])}")
        shutil.rmtree(store.bld_parent, ignore_errors=True)  # task inputs, derivable
        trained = read_records(library_dir)
        store.write_stage(
            "bld",
            {
                "variants": len(planned),
                "trained_in_last_run": len(todo),
                "skipped_in_last_run": skipped,
                "wall_s_last_run": wall,
                "train_seconds_sum": sum(r["seconds"] for r in trained),
                "tokens_per_s_per_variant_mean": (
                    sum(r["tokens_per_s"] for r in trained) / max(len(trained), 1)
                ),
                "config": bld_config(spec).to_dict(),
                "library": str(library_dir),
            },
        )
    report(
        f"[bld] trained {len(todo)} variants in {wall:.1f}s"
        + ("" if complete else f"; {len(missing) - len(todo)} left (resume the job)")
    )
    return BLDResult(library_dir, len(planned), len(todo), skipped, complete, wall)


def _run_on_ray(
    spec: SearchSpec,
    store: JobStore,
    parent,
    captured: Captured,
    library_dir: Path,
    todo: list[tuple[int, VariantSpec]],
    done_before: int,
    total: int,
) -> None:

    parents = _save_parent_blocks(store, parent.adapter, {(layer, v.kind) for layer, v in todo})
    parent.release()  # tasks read their subblocks from files; the driver waits
    store.push()  # object storage: the parent subblocks and activations go up before any task
    config = bld_config(spec).to_dict()
    _connect_ray(spec)
    task = bld_task(spec)
    pending = {
        task.remote(
            layer,
            str(v),
            store.location(Path(parents[layer, v.kind])),
            store.location(captured.train_dir),
            store.location(captured.heldout_dir),
            store.location(library_dir),
            config,
        ): f"{v} in layer {layer}"
        for layer, v in todo
    }
    done = done_before
    store.set_progress("bld", done, total)
    with progress("[bld] variants", total, completed=done_before) as bar:
        for _ in as_completed(pending, "BLD of"):
            done += 1
            bar.update(done)
            store.set_progress("bld", done, total)
    store.pull_folder(library_dir)  # what the tasks published (object storage)


def bld_task(spec: SearchSpec):
    """The Ray remote function of one BLD task, with the spec's resources (one CPU, and
    ``ray.gpus_per_task`` GPUs when the spec asks for them)."""
    import ray

    return ray.remote(**task_options(num_cpus=1, num_gpus=spec.ray.gpus_per_task))(_train_one)


def _connect_ray(spec: SearchSpec) -> None:
    """``nas.ray_runtime.ensure_ray`` (a failure to start or reach Ray is one ``JobError``).

    Ray stays up for the later stages of this process (it shuts down when the process exits).
    """
    from nas.ray_runtime import ensure_ray

    ensure_ray(spec.ray)

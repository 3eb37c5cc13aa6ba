"""The pipeline of a job, in order, on one screen.

Each stage is a function with typed inputs and outputs. A stage whose record already exists in
the job's store is not run again (its outputs are read back), so ``resume`` is ``run`` on an
existing job.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nas.bld_stage import stage_bld, stage_capture
from nas.errors import JobError
from nas.ray_runtime import stop_local_ray
from nas.rerank_stage import stage_rerank
from nas.scoring_stage import stage_scoring
from nas.selection_stage import stage_selection
from nas.spec import SearchSpec
from nas.store import JobStore
from nas.students_stage import stage_students

Report = Callable[[str], None]


@dataclass(frozen=True)
class Baseline:
    loss: float
    perplexity: float
    tokens: int
    wall_s: float


@dataclass
class Prepared:
    """Output of the first stage: the parent, its calibration data and its baseline."""

    parent: object  # compress.loading.Parent
    splits: object  # compress.data.TokenSplits
    baseline: Baseline
    eval_sets: dict = field(default_factory=dict)  # set name -> (N, seq_len) token ids


STAGES = ("baseline", "capture", "bld", "scoring", "selection", "rerank", "students")


def run_job(
    spec: SearchSpec, store: JobStore, report: Report = print, until: str | None = None
) -> dict:
    """Run (or resume) the job's stages in order, stopping after ``until`` if given.

    Returns the manifest at the end. The job's state is ``finished`` only when every stage ran.
    The process holds the job's driver lease throughout (``JobBusy`` if another live process
    runs it); a job whose stages are all done is left as it is.
    """
    from nas.driver import driver_lease

    if until is not None and until not in STAGES:
        raise JobError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    manifest = store.manifest()
    if manifest.get("state") == "finished" and set(STAGES) <= set(manifest.get("stages_done", [])):
        report(f"job {store.job_id}: every stage is done already; nothing to run")
        return manifest  # a finished job's files are left exactly as they are
    with driver_lease(store.dir, store.job_id):
        return _run_stages(spec, store, report, until)


def _run_stages(spec: SearchSpec, store: JobStore, report: Report, until: str | None) -> dict:
    store.update_manifest(state="running")
    timer = _StageTimer(store)
    try:
        with timer("baseline"):
            prepared = stage_baseline(spec, store, report)
            timer.parent = prepared.parent
        if until == "baseline":
            return timer.stop(until)
        with timer("capture"):
            captured = stage_capture(spec, store, prepared, report)
        if until == "capture":
            return timer.stop(until)
        with timer("bld"):
            stage_bld(spec, store, prepared, captured, report)
        if until == "bld":
            return timer.stop(until)
        with timer("scoring"):
            stage_scoring(spec, store, prepared, report)
        stop_local_ray()  # the stages after scoring run in this process
        if until == "scoring":
            return timer.stop(until)
        with timer("selection"):
            stage_selection(spec, store, prepared, report)
        if until == "selection":
            return timer.stop(until)
        with timer("rerank"):
            stage_rerank(spec, store, prepared, report)
        if until == "rerank":
            return timer.stop(until)
        with timer("students"):
            stage_students(spec, store, prepared, report)
    except BaseException:
        store.update_manifest(state="failed")
        raise
    return store.update_manifest(state="finished")


class _StageTimer:
    """Records the current stage and each stage's wall seconds in the manifest.

    Seconds accumulate over runs (an interrupted stage's time, then its resumed time); a stage
    done before this run only reads its outputs back and adds nothing.
    """

    def __init__(self, store: JobStore):
        self.store = store
        self.seconds = dict(store.manifest().get("stage_seconds", {}))
        self.parent = None  # set once loaded: its mapped weights are released after each stage

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.store.update_manifest(current_stage=stage)
        done_before = self.store.stage_done(stage)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.parent is not None:
                self.parent.release()  # the next stage reads the layers it runs again
            if not done_before:
                spent = time.perf_counter() - t0
                self.seconds[stage] = round(float(self.seconds.get(stage, 0.0)) + spent, 2)
                self.store.update_manifest(stage_seconds=self.seconds)

    def stop(self, stage: str) -> dict:
        return self.store.update_manifest(state="stopped", stopped_after=stage)


def stage_baseline(spec: SearchSpec, store: JobStore, report: Report = print) -> Prepared:
    """Load the parent, prepare the calibration data, record the parent's eval LM loss."""
    from compress.evaluate import lm_loss
    from compress.loading import load_parent

    t0 = time.perf_counter()
    if not store.path("data", "splits.safetensors").exists():
        check_eval_sets(spec)  # refuse overlapping eval sets before any heavy work
    parent = load_parent(spec.model.source, dtype=_dtype(spec.model.dtype))
    report(
        f"[baseline] loaded {spec.model.source} ({parent.shape.key}) in {time.perf_counter() - t0:.1f}s"
    )
    splits = prepare_data(spec, store, parent, report)
    eval_sets = prepare_eval_sets(spec, store, parent, report)
    if store.stage_done("baseline"):
        rec = store.read_stage("baseline")
        report(f"[baseline] done before: loss {rec['loss']:.4f}")
        baseline = Baseline(rec["loss"], rec["perplexity"], rec["tokens"], rec["wall_s"])
        return Prepared(parent, splits, baseline, eval_sets)
    t1 = time.perf_counter()
    result = lm_loss(
        parent.adapter, splits.eval, spec.scoring.batch_size, "[baseline] parent eval loss"
    )
    baseline = Baseline(
        result["loss"], result["perplexity"], result["tokens"], time.perf_counter() - t1
    )
    store.write_stage(
        "baseline",
        {
            "model": spec.model.source,
            "shape": parent.shape.to_dict(),
            "data": splits.summary(),
            "loss": baseline.loss,
            "perplexity": baseline.perplexity,
            "tokens": baseline.tokens,
            "wall_s": baseline.wall_s,
        },
    )
    report(
        f"[baseline] eval loss {baseline.loss:.4f} nats/token, perplexity {baseline.perplexity:.3f} "
        f"over {baseline.tokens} tokens in {baseline.wall_s:.1f}s"
    )
    return Prepared(parent, splits, baseline, eval_sets)


def check_eval_sets(spec: SearchSpec) -> None:
    """Refuse (``DataError``, one line) eval sets sharing a document with calibration."""
    from compress.sources import check_disjoint

    check_disjoint(list(spec.data.sources), {s.name: s for s in spec.eval.sets})


def _generation(spec: SearchSpec, parent, report: Report, what: str):
    """How this job samples ``generated`` text: cached under ``<cache>/generated`` by parent."""
    from compress.data import Generation
    from compress.loading import cache_dir

    step = {"last": -1}

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != step["last"]:
            step["last"] = tenth
            report(f"[data] {what}: generated {done}/{total} sequences")

    key = f"{spec.model.source}|{spec.model.dtype}|{parent.shape.key}"
    return Generation(parent.adapter, cache_dir() / "generated", key, progress=progress)


def prepare_data(spec: SearchSpec, store: JobStore, parent, report: Report = print):
    """Calibration splits from ``data.sources``, made once per job and kept in
    ``data/splits.safetensors``; tokens per source go into the manifest (``data_sources``)."""
    from safetensors.torch import load_file, save_file

    from compress.atomic import atomic_write
    from compress.data import TokenSplits, mixed_calibration

    path = store.path("data", "splits.safetensors")
    if path.exists():
        tensors = load_file(str(path))
        return TokenSplits(train=tensors["train"], eval=tensors["eval"])
    d = spec.data
    splits, counts = mixed_calibration(
        list(d.sources),
        parent.tokenizer,
        d.seq_len,
        d.train_tokens,
        d.eval_tokens,
        d.seed,
        _generation(spec, parent, report, "calibration"),
    )
    atomic_write(
        path,
        lambda tmp: save_file(
            {"train": splits.train.contiguous(), "eval": splits.eval.contiguous()}, str(tmp)
        ),
    )
    store.update_manifest(data_sources=counts)
    report(
        "[data] calibration: "
        + ", ".join(f"{c['source']} {c['train_tokens']}+{c['eval_tokens']} tokens" for c in counts)
        + " (train+eval)"
    )
    return splits


def prepare_eval_sets(spec: SearchSpec, store: JobStore, parent, report: Report = print) -> dict:
    """Token ids of each ``eval.sets`` entry (``data/eval__<name>.safetensors``, made once)."""
    import zlib

    from safetensors.torch import load_file, save_file

    from compress.atomic import atomic_write
    from compress.data import eval_set_tokens

    out = {}
    for s in spec.eval.sets:
        path = store.path("data", f"eval__{s.name}.safetensors")
        if path.exists():
            out[s.name] = load_file(str(path))["tokens"]
            continue
        seed = spec.data.seed + 1 + zlib.crc32(s.name.encode()) % 100_000  # never the calibration's
        tokens = eval_set_tokens(
            s,
            parent.tokenizer,
            spec.data.seq_len,
            s.tokens,
            seed,
            _generation(spec, parent, report, f"eval set {s.name}"),
        )
        atomic_write(path, lambda tmp, t=tokens: save_file({"tokens": t.contiguous()}, str(tmp)))
        report(f"[data] eval set {s.name}: {tokens.numel()} tokens")
        out[s.name] = tokens
    return out


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]

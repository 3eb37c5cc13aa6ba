"""The baseline stage: load the parent, make the job's calibration data and eval sets once
(``data/``), and record the parent's LM loss on the eval split.

``load_job_parent`` and ``model_dtype`` are how every part of ``nas`` loads a job's parent.
"""

from __future__ import annotations

import time

from nas.spec import SearchSpec
from nas.stage_io import Baseline, Prepared, Report
from nas.store import JobStore


def model_dtype(name: str):
    """The torch dtype of a spec's ``model.dtype`` (``float32``, ``bfloat16``, ``float16``)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_job_parent(spec: SearchSpec):
    """The parent a spec names, in the spec's dtype (``compress.loading.Parent``)."""
    from compress.loading import load_parent

    return load_parent(spec.model.source, dtype=model_dtype(spec.model.dtype))


def stage_baseline(spec: SearchSpec, store: JobStore, report: Report = print) -> Prepared:
    """Load the parent, prepare the calibration data, record the parent's eval LM loss."""
    from compress.evaluate import lm_loss

    t0 = time.perf_counter()
    if not store.splits.exists():
        check_eval_sets(spec)  # refuse overlapping eval sets before any heavy work
    parent = load_job_parent(spec)
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

    path = store.splits
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
        path = store.eval_set(s.name)
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

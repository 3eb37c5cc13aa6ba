"""The exported students of a finished job, timed side by side with the exported parent
(issue 8, acceptance 3: the perplexity ratio at about 1.5x measured speed-up).

The students stage already measured each front point once, against a parent timed at the
start of that stage. Here every ``students/<id>/onnx/model.onnx`` of the job (the exact
graphs the job shipped, GKD-healed when its spec has ``export.gkd``) and a fresh export of the
parent are timed in one process, in rounds whose order rotates, at batch 1 and ``--seq``
tokens with ``--threads`` onnxruntime threads. Quality (KL to the parent, perplexity, eval
split) is the job's own measurement (``students/<id>/measured.json``, ``students/parent.json``).

    python bench/healed_front.py --job JOB [--results results] [--repeats 20]
        [--threads 1] [--seq SEQ_LEN] [--name healed_front]

Writes results/bench/NAME.csv and .md (NAME: ``--name``, default ``healed_front``). Exit 2 with one line when the job has no
exported students.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import write_table  # noqa: E402
from nas.layout import JobLayout  # noqa: E402


def rotated_rounds(
    sessions: dict, ids: np.ndarray, repeats: int, feeds: dict | None = None
) -> dict[str, list[float]]:
    """``repeats`` rounds; round r starts at model r mod n, so no model always runs first.
    ``feeds``: per model, its inputs (default ``{"input_ids": ids}``)."""
    names = list(sessions)
    feeds = {name: (feeds or {}).get(name, {"input_ids": ids}) for name in names}
    for name, session in sessions.items():
        for _ in range(3):
            session.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def time_prompts(
    paths: dict, vocab_size: int, seq: int, threads: int, repeats: int
) -> dict[str, list[float]]:
    """Time each ONNX graph of ``paths`` on one seeded ``seq``-token prompt (batch 1) in
    rotated rounds; a decoder graph (``model.onnx``) gets the prompt with a zero-length past."""
    from compress.export_onnx import empty_past, ort_session

    sessions = {name: ort_session(path, threads) for name, path in paths.items()}
    ids = np.random.default_rng(0).integers(0, vocab_size, (1, seq), dtype=np.int64)
    feeds = {n: {"input_ids": ids, **empty_past(s, 1)} for n, s in sessions.items()}
    return rotated_rounds(sessions, ids, repeats, feeds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True, help="a finished job, e.g. of quality.yaml")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, help="prefill tokens (default: the spec's data.seq_len)")
    ap.add_argument("--name", default="healed_front", help="output table name")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    job = Path(args.results) / args.job
    students = JobLayout(job).onnx_graphs()
    if not students:
        print(f"error: job {args.job} in {args.results} has no exported students", file=sys.stderr)
        return 2

    from compress.export_onnx import export_onnx
    from nas.store import JobStore

    store = JobStore.open(args.results, args.job)
    spec = store.spec()
    from compress.loading import load_parent

    parent = load_parent(spec.model.source)
    args.seq = args.seq or spec.data.seq_len
    folder = Path(tempfile.mkdtemp(prefix="nas-healed-"))
    try:
        exported = export_onnx(
            parent.adapter,
            folder,
            parity=False,
            layout="decoder" if students[0].name == "model.onnx" else "prefill",
            exporter=spec.export.exporter,
        )
        paths = {"parent": exported.prefill} | {p.parents[1].name: p for p in students}
        times = time_prompts(paths, parent.shape.vocab_size, args.seq, args.threads, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    parent_q = json.loads(store.parent_measured.read_text())
    parent_ms = float(np.median(times["parent"]))
    front = {r["point_id"]: r for r in store.front_records()}
    rows = [_row("parent", "", times["parent"], parent_ms, times["parent"], parent_q, parent_q)]
    for name in paths:
        if name == "parent":
            continue
        measured = json.loads(store.measured(name).read_text())
        quality = {k.removeprefix("measured_"): v for k, v in measured.items()}
        target = front.get(name, {}).get("target", "")
        rows.append(_row(name, target, times[name], parent_ms, times["parent"], quality, parent_q))
    rows.sort(key=lambda r: r["median ms"], reverse=True)
    gkd = spec.export.gkd
    healing = f"GKD on {gkd.tokens} train tokens" if gkd else "no GKD"
    tokens = spec.export.eval_tokens or "all"
    notes = (
        f"Job `{args.job}` ({spec.model.source}, {healing}); onnxruntime CPU, {args.threads} "
        f"thread(s), batch 1, {args.seq} tokens, {args.repeats} rotated rounds after 3 warm-ups; "
        "`speed-up` = parent median / student median, `paired` = median of per-round ratios. "
        f"Quality: the job's students stage, on {tokens} eval-split tokens. Wall time {time.perf_counter() - t_start:.0f}s. "
        f"Command: `python bench/healed_front.py --job {args.job}"
        + (f" --name {args.name}" if args.name != "healed_front" else "")
        + "`."
    )
    write_table(args.name, rows, f"Exported students of `{args.job}` vs. the parent", notes)
    return 0


def _row(point, target, times, parent_ms, parent_times, quality, parent_q) -> dict:
    median = float(np.median(times))
    paired = float(np.median(np.asarray(parent_times) / np.asarray(times)))
    return {
        "point": point,
        "target": target,
        "median ms": round(median, 2),
        "p10 ms": round(float(np.percentile(times, 10)), 2),
        "p90 ms": round(float(np.percentile(times, 90)), 2),
        "speed-up": round(parent_ms / median, 3),
        "paired": round(paired, 3),
        "KL": round(float(quality["kl"]), 4),
        "perplexity": round(float(quality["perplexity"]), 3),
        "ppl ratio": round(float(quality["perplexity"]) / float(parent_q["perplexity"]), 3),
    }


if __name__ == "__main__":
    sys.exit(main())

"""General-text quality of the students of finished jobs at measured speed-ups (issue 12):
the recipe ablation, every student timed side by side with the exported parent.

Each ``--job LABEL=JOB`` is a finished job (``search_spaces/quality.yaml`` and its ablation
``bench/specs/*.yaml``) with the same ``eval.sets``. Every exported student
(``students/<id>/onnx/model.onnx``, healed when the spec has ``export.refit``/``gkd``) and a
fresh export of the parent are timed in one process, in rotated rounds
(``bench/healed_front.rotated_rounds``), at batch 1 and ``--seq`` tokens with ``--threads``
onnxruntime threads. Quality per eval set (perplexity ratio to the parent, KL): the healed
students' are the job's own measured columns (``measured_perplexity@SET``...), and the
``ort`` columns the same measured from the exported graphs in onnxruntime (``--int8-parent``
adds the baseline of quantizing every subblock of the parent to int8, no search); for a job with
``export.refit`` or ``export.gkd``, ``--before-gkd`` also assembles each point from the library
without either and measures it on the same eval-set tokens (same architecture, so the same
timing). Then the best perplexity ratio on ``--set`` at >= 1.2x and >= 1.5x measured speed-up
per recipe.

    python bench/general_quality.py --job mix=qmix --job stories=qstories [--before-gkd]
        [--int8-parent] [--results results] [--repeats 20] [--threads 1] [--seq 256]
        [--set books] [--name general_quality]

Writes results/bench/NAME.csv, NAME.md and NAME_best.md. Exit 2 with one line when a job has
no exported students or no eval sets.
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
from bench.healed_front import time_prompts  # noqa: E402
from nas.layout import JobLayout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", action="append", required=True, help="LABEL=JOB (repeatable)")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--set", default="books", help="eval set the best ratios are taken on")
    ap.add_argument(
        "--before-gkd",
        action="store_true",
        help="also measure students as assembled (no refit, no GKD)",
    )
    ap.add_argument(
        "--int8-parent",
        action="store_true",
        help="also time and measure the parent with every subblock int8 (quantization, no search)",
    )
    ap.add_argument("--name", default="general_quality")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    jobs = {}
    for item in args.job:
        label, _, job = item.partition("=")
        folder = Path(args.results) / job
        if not job or not _student_graphs(folder):
            print(
                f"error: {item!r}: no job with exported students in {args.results}", file=sys.stderr
            )
            return 2
        jobs[label] = folder

    from compress.export_onnx import export_onnx
    from compress.loading import load_parent
    from nas.store import JobStore

    specs = {label: JobStore.open(args.results, f.name).spec() for label, f in jobs.items()}
    sets = [s.name for s in next(iter(specs.values())).eval.sets]
    if not sets or args.set not in sets:
        print(f"error: the jobs have no eval set {args.set!r} (sets: {sets})", file=sys.stderr)
        return 2
    parent = load_parent(next(iter(specs.values())).model.source)
    folder = Path(tempfile.mkdtemp(prefix="nas-general-"))
    try:
        paths = {}
        for label, job in jobs.items():
            for p in _student_graphs(job):
                paths[f"{label}/{p.parents[1].name}"] = p
        decoder = any(p.name == "model.onnx" for p in paths.values())
        exported = export_onnx(
            parent.adapter,
            folder,
            parity=False,
            decode=False,
            layout="decoder" if decoder else "prefill",
            exporter="torchscript",
        )
        paths = {"parent": exported.prefill} | paths
        if args.int8_parent:
            paths[INT8_PARENT] = _int8_parent(parent, folder / "int8", decoder)
        times = time_prompts(paths, parent.shape.vocab_size, args.seq, args.threads, args.repeats)
        eval_sets = {s: JobLayout(next(iter(jobs.values()))).eval_set(s) for s in sets}
        deployed = ort_quality(paths, eval_sets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    parent_ms = float(np.median(times["parent"]))

    rows = []
    for label, job in jobs.items():
        spec = specs[label]
        layout = JobLayout(job)
        parent_q = json.loads(layout.parent_measured.read_text())
        front = {r["point_id"]: r for r in layout.front_records()}
        healing = _healing(spec.export)
        for name in [n for n in paths if n.startswith(label + "/")]:
            pid = name.split("/", 1)[1]
            point = front.get(pid, {})
            speed = parent_ms / float(np.median(times[name]))
            paired = float(np.median(np.asarray(times["parent"]) / np.asarray(times[name])))
            base = {
                "recipe": label,
                "point": pid,
                "target": point.get("target", ""),
                "speed-up": round(speed, 3),
                "paired": round(paired, 3),
            }
            healed = {
                s: {m: point.get(f"measured_{m}@{s}") for m in ("perplexity", "kl")} for s in sets
            }
            rows.append(
                base
                | {"healing": healing or "none"}
                | _quality_cells(healed, parent_q, sets)
                | {f"ort ppl ratio @{s}": deployed[name][s]["ratio"] for s in sets}
                | {f"ort KL @{s}": deployed[name][s]["kl"] for s in sets}
            )
            if healing and args.before_gkd:
                raw = _before_gkd(job, parent, point, sets, spec.scoring.batch_size)
                rows.append(
                    base
                    | {"healing": "none (same point as assembled)"}
                    | _quality_cells(raw, parent_q, sets)
                )
    if args.int8_parent:
        rows.append(
            {
                "recipe": INT8_PARENT,
                "point": "",
                "target": "",
                "speed-up": round(parent_ms / float(np.median(times[INT8_PARENT])), 3),
                "paired": round(
                    float(np.median(np.asarray(times["parent"]) / np.asarray(times[INT8_PARENT]))),
                    3,
                ),
                "healing": "none",
            }
            | {f"ort ppl ratio @{s}": deployed[INT8_PARENT][s]["ratio"] for s in sets}
            | {f"ort KL @{s}": deployed[INT8_PARENT][s]["kl"] for s in sets}
        )
    rows.sort(key=lambda r: (r["recipe"], -r["speed-up"], r["healing"]))
    tokens = ", ".join(f"{s.name} {s.tokens} tokens" for s in next(iter(specs.values())).eval.sets)
    command = "python bench/general_quality.py " + " ".join(f"--job {j}" for j in args.job)
    command += (
        " --before-gkd" * args.before_gkd
        + " --int8-parent" * args.int8_parent
        + (f" --name {args.name}" if args.name != "general_quality" else "")
    )
    notes = (
        f"Parent median {parent_ms:.1f} ms; onnxruntime CPU, {args.threads} thread(s), batch 1, {args.seq} tokens, "
        f"{args.repeats} rotated rounds after 3 warm-ups; `speed-up` = parent median / student median, "
        f"`paired` = median of per-round ratios. Quality on the eval sets ({tokens}; documents no stage "
        f"saw): perplexity ratio to the parent and KL(parent || student) per token. Wall time "
        f"{time.perf_counter() - t_start:.0f}s. Command: `{command}`."
    )
    write_table(args.name, rows, "General-text quality of students at measured speed-ups", notes)
    write_table(
        f"{args.name}_best",
        _best(rows, args.set, sets),
        f"Best perplexity ratio on `{args.set}` per recipe",
        "Speed-up floors allow 3 % (a point at 0.97 x the floor counts) for timing noise.",
    )
    return 0


INT8_PARENT = "int8 parent"  # the baseline row: every subblock int8, nothing searched


def _int8_parent(parent, out: Path, decoder: bool) -> Path:
    """The parent with every attention and FFN subblock ``int8``, exported like the students."""
    from compress.export_onnx import export_onnx
    from compress.student import assemble_student

    choices = [["attention:int8", "ffn:int8"]] * parent.adapter.num_layers
    student = assemble_student(parent.adapter, choices).eval()
    layout = "decoder" if decoder else "prefill"
    return export_onnx(student, out, parity=False, layout=layout, exporter="torchscript").prefill


def ort_quality(paths: dict, eval_sets: dict, threads: int = 2) -> dict:
    """Per graph of ``paths`` (``parent`` first) and eval set: the perplexity ratio to the
    parent and KL(parent || graph) per token, computed from the exported graphs' own logits in
    onnxruntime (what is deployed: int8 subblocks round there, not in torch)."""
    from safetensors.torch import load_file

    from compress.export_onnx import empty_past, ort_session

    sessions = {name: ort_session(path, threads) for name, path in paths.items()}
    out: dict = {name: {} for name in paths}
    for s, file in eval_sets.items():
        nll = {name: [] for name in paths}
        kl = {name: [] for name in paths}
        for row in load_file(str(file))["tokens"].numpy():
            ref = None
            for name, session in sessions.items():
                logits = session.run(None, {"input_ids": row[None], **empty_past(session, 1)})[0]
                lp = logits[0].astype(np.float64)
                lp -= lp.max(-1, keepdims=True)
                lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
                ref = lp if ref is None else ref
                nll[name].append(-lp[np.arange(len(row) - 1), row[1:]].mean())
                kl[name].append((np.exp(ref) * (ref - lp)).sum(-1).mean())
        for name in paths:
            ratio = np.exp(np.mean(nll[name]) - np.mean(nll["parent"]))
            out[name][s] = {
                "ratio": round(float(ratio), 3),
                "kl": round(float(np.mean(kl[name])), 4),
            }
    return out


def _student_graphs(job: Path) -> list[Path]:
    """The exported students' graphs: ``model.onnx`` (decoder layout), else ``prefill.onnx``."""
    return JobLayout(job).onnx_graphs()


def _healing(export) -> str:
    """What healed the job's exported students: ``refit N + GKD M tokens``, or ''."""
    steps = [f"refit {export.refit.tokens:,}"] if export.refit else []
    steps += [f"GKD {export.gkd.tokens:,}"] if export.gkd else []
    return " + ".join(steps) + " tokens" * bool(steps)


def _quality_cells(values: dict, parent_q: dict, sets: list[str]) -> dict:
    out = {}
    for s in sets:
        ppl, kl = values[s]["perplexity"], values[s]["kl"]
        ref = parent_q[f"measured_perplexity@{s}"]
        out[f"ppl ratio @{s}"] = round(ppl / ref, 3) if ppl is not None else None
        out[f"KL @{s}"] = round(kl, 4) if kl is not None else None
    return out


def _before_gkd(job: Path, parent, point: dict, sets: list[str], batch_size: int) -> dict:
    """The point assembled from the job's library (no refit, no GKD), measured on the eval sets."""
    from safetensors.torch import load_file

    from compress.evaluate import evaluate
    from compress.student import assemble_student, library_loader

    student = assemble_student(
        parent.adapter, point["choices"], library_loader(JobLayout(job).library, parent.adapter)
    ).eval()
    out = {}
    for s in sets:
        tokens = load_file(str(JobLayout(job).eval_set(s)))["tokens"]
        out[s] = evaluate(student, tokens, parent.adapter, batch_size).to_dict()
    return out


def _best(rows: list[dict], on: str, sets: list[str]) -> list[dict]:
    """Per recipe and healing, the lowest perplexity ratio on ``on`` at >= 1.2x and >= 1.5x
    (the job's torch measurement; onnxruntime's where there is none, as for the int8 parent)."""

    def ratio(r: dict) -> float:
        torch_ratio = r.get(f"ppl ratio @{on}")
        return torch_ratio if torch_ratio is not None else r[f"ort ppl ratio @{on}"]

    best = []
    for recipe in dict.fromkeys((r["recipe"], r["healing"]) for r in rows):
        mine = [r for r in rows if (r["recipe"], r["healing"]) == recipe]
        for floor in (1.2, 1.5):
            fast = [r for r in mine if r["speed-up"] >= floor * 0.97]
            if not fast:
                best.append({"recipe": recipe[0], "healing": recipe[1], "speed-up >=": floor})
                continue
            r = min(fast, key=ratio)
            best.append(
                {
                    "recipe": recipe[0],
                    "healing": recipe[1],
                    "speed-up >=": floor,
                    "point": r["point"],
                    "speed-up": r["speed-up"],
                }
                | {f"ppl ratio @{s}": r.get(f"ppl ratio @{s}") for s in sets}
                | {f"ort ppl ratio @{s}": r.get(f"ort ppl ratio @{s}") for s in sets}
            )
    return best


if __name__ == "__main__":
    sys.exit(main())

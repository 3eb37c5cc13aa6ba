"""ONNX prefill speed of an exported student vs. its exported parent (acceptance 5 of issue 6).

Both models are exported with ``compress.export_onnx`` (prefill + decode graphs, onnxruntime
parity checked), then their prefill graphs are timed side by side in one process: one
onnxruntime CPU session each, warm-up, then ``--repeats`` rounds alternating the order of
the two models, at batch 1 and ``--seq`` tokens. Quality is measured on eval text (KL from
the parent, LM loss, perplexity).

The student comes from a job's Pareto table (``--job JOB --point ID``: choices and trained
library variants), or else from a built-in choice aimed at about half the parent's prefill
cost (layers 2..27 of 30 keep 25 % of the FFN width, layers 14..27 also drop attention).
The built-in student is not trained: its narrow FFNs keep the channels that matter most on
calibration text (AmoebaLLM importance, ``compress.builders``), so its quality is poor
unless healed with ``--gkd-tokens``.

    python bench/export_speed.py [--job JOB --point ID [--results DIR]] [--model smollm2-135m]
        [--seq 256] [--repeats 30] [--threads N] [--exporter torchscript|dynamo] [--gkd-tokens 0]

The TorchScript exporter is the default here only because it exports several times faster
on a CPU; onnxruntime runs both exporters' graphs equally fast.

Writes results/bench/export_speed.csv and results/bench/export_speed.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from compress.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench"
TEXT = ROOT.parent / "shared" / "data" / "text" / "tinystories_val_1000.txt"


def builtin_choices(num_layers: int, intermediate: int) -> list[list[str]]:
    """Keep the first two and last two layers; 25 % FFN in between; no attention in the
    second half of those (later attention layers tend to be the most redundant)."""
    quarter = f"ffn:width={max(1, intermediate // 4)}"
    out = []
    for layer in range(num_layers):
        if layer < 2 or layer >= num_layers - 2:
            out.append(["attention:parent", "ffn:parent"])
        elif layer < num_layers // 2 - 1:
            out.append(["attention:parent", quarter])
        else:
            out.append(["attention:noop", quarter])
    return out


def calibrated_loader(parent, ids, batch_size: int = 2):
    """``load_module`` initialising narrow FFNs from the parent's activations on ``ids``."""
    import torch

    from compress.builders import InitData, build_variant

    inputs: dict[int, list] = {}
    outputs: dict[int, list] = {}
    hooks = []
    for i, layer in enumerate(parent.layers):

        def hook(module, args, out, i=i):
            inputs.setdefault(i, []).append(args[0].reshape(-1, args[0].shape[-1]))
            outputs.setdefault(i, []).append(out.reshape(-1, out.shape[-1]))

        hooks.append(layer.ffn.register_forward_hook(hook))
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            parent(ids[start : start + batch_size])
    for h in hooks:
        h.remove()

    def load(layer: int, spec):
        init = None
        if spec.kind == "ffn" and spec.type in ("width", "linear"):
            init = InitData(torch.cat(inputs[layer]), torch.cat(outputs[layer]))
        return build_variant(spec, parent.subblock(layer, spec.kind), init)

    return load


def macs_per_token(shape, choices, seq: int) -> float:
    """A roofline-free estimate: multiply-accumulates per prefill token (linear layers,
    attention scores over ``seq`` keys, LM head)."""
    from compress.variants import VariantSpec

    total = shape.hidden_size * shape.vocab_size
    for pair in choices:
        for text in pair:
            spec = VariantSpec.parse(text)
            total += spec.params(shape)
            if spec.kind == "attention" and spec.kv_heads(shape):
                total += 2 * seq * shape.num_heads * shape.head_dim
    return float(total)


def timed_side_by_side(paths: dict[str, Path], seq: int, repeats: int, threads, vocab: int):
    from compress.export_onnx import empty_past, ort_session

    sessions = {name: ort_session(path, threads) for name, path in paths.items()}
    ids = np.random.default_rng(0).integers(0, vocab, (1, seq), dtype=np.int64)
    # a decoder graph (model.onnx) takes its prompt with a zero-length past
    feeds = {name: {"input_ids": ids, **empty_past(s, 1)} for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(3):
            session.run(None, feeds[name])
    times = {name: [] for name in sessions}
    order = list(sessions)
    for r in range(repeats):
        for name in order if r % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            sessions[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job")
    parser.add_argument("--point")
    parser.add_argument("--results", default=str(ROOT / "results"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"))
    parser.add_argument("--eval-seqs", type=int, default=8, help="eval sequences of --seq tokens")
    parser.add_argument("--gkd-tokens", type=int, default=0, help="heal the student first")
    parser.add_argument("--no-parity", action="store_true")
    parser.add_argument("--out", default=str(OUT), help="folder for the CSV and MD tables")
    args = parser.parse_args()

    import torch

    from compress.data import text_calibration
    from compress.evaluate import evaluate
    from compress.export_onnx import export_onnx
    from compress.loading import load_parent
    from compress.student import assemble_student, library_loader

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    t_start = time.perf_counter()
    if args.job:
        from nas.export import find_point, point_choices
        from nas.store import JobStore

        store = JobStore.open(args.results, args.job)
        model_source = store.spec().model.source
        parent = load_parent(model_source)
        choices = point_choices(find_point(store, args.point))
        loader = library_loader(store.library, parent.adapter)
        label = f"job {args.job} point {args.point}"
    else:
        model_source = args.model
        parent = load_parent(model_source)
        choices = builtin_choices(parent.shape.num_layers, parent.shape.intermediate_size)
        loader = None
        label = "built-in choice (no library: FFN channels kept by calibrated importance)"
    shape = parent.shape
    splits = text_calibration(
        parent.tokenizer, [TEXT], args.seq, args.seq * 64, args.seq * args.eval_seqs, seed=0
    )
    if loader is None:
        loader = calibrated_loader(parent.adapter, splits.train[:8])
    student = assemble_student(parent.adapter, choices, loader).eval()
    gkd = None
    if args.gkd_tokens:
        from compress.gkd import GKDSettings, heal_student

        student, gkd = heal_student(
            student,
            parent.adapter,
            splits.train,
            GKDSettings(tokens=args.gkd_tokens, batch_size=2, lr=1e-4),
            report=print,
        )
    predicted = macs_per_token(
        shape, [["attention:parent", "ffn:parent"]] * shape.num_layers, args.seq
    ) / macs_per_token(shape, choices, args.seq)
    print(f"student: {label}; predicted prefill speed-up (MACs) {predicted:.2f}x")

    tmp = Path(tempfile.mkdtemp(prefix="export-speed-"))
    try:
        prompt = splits.eval[:1, :32]
        parity, paths = {}, {}
        for name, model in (("parent", parent.adapter), ("student", student)):
            t0 = time.perf_counter()
            result = export_onnx(
                model,
                tmp / name,
                parity=not args.no_parity,
                prompt_ids=prompt,
                exporter=args.exporter,
            )
            paths[name] = result.prefill
            parity[name] = result.parity["summary"] if result.parity else "not checked"
            print(f"exported {name} in {time.perf_counter() - t0:.0f}s; parity {parity[name]}")
        times = timed_side_by_side(paths, args.seq, args.repeats, args.threads, shape.vocab_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    q_parent = evaluate(parent.adapter, splits.eval, parent.adapter, 2).to_dict()
    q_student = evaluate(student, splits.eval, parent.adapter, 2).to_dict()
    ratio_rounds = np.asarray(times["parent"]) / np.asarray(times["student"])
    rows = []
    for name, q in (("parent", q_parent), ("student", q_student)):
        t = np.asarray(times[name])
        rows.append(
            {
                "model": name,
                "median_ms": float(np.median(t)),
                "p10_ms": float(np.percentile(t, 10)),
                "p90_ms": float(np.percentile(t, 90)),
                "kl": q["kl"],
                "lm_loss": q["lm_loss"],
                "perplexity": q["perplexity"],
                "params": sum(
                    p.numel()
                    for p in (parent.adapter if name == "parent" else student).parameters()
                ),
                "parity": parity[name],
            }
        )
    frame = pd.DataFrame(rows)
    speedup = rows[0]["median_ms"] / rows[1]["median_ms"]
    out = Path(args.out)
    atomic_write_text(out / "export_speed.csv", frame.to_csv(index=False))
    md = [
        "# ONNX prefill speed: student vs. parent (issue 6, acceptance 5)",
        "",
        f"- parent: `{model_source}` ({shape.key}); student: {label}",
        f"- onnxruntime CPU, batch 1, {args.seq} tokens, {args.repeats} alternating rounds after 3 "
        f"warm-up runs, threads {args.threads or 'default'}; exporter {args.exporter}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        "(shared with other jobs while measured: timings are noisy)",
        f"- eval: {splits.eval.shape[0]} x {args.seq} tokens of {TEXT.name}"
        + (f"; student healed with GKD on {gkd['tokens']} tokens" if gkd else "; no GKD"),
        "",
        frame.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"**Speed-up (ratio of medians): {speedup:.2f}x** (median of per-round ratios "
        f"{float(np.median(ratio_rounds)):.2f}x; predicted from MACs {predicted:.2f}x).",
        "",
        "Student choices: " + "; ".join(f"L{i}: {a}, {f}" for i, (a, f) in enumerate(choices)),
        "",
        f"Total bench time {time.perf_counter() - t_start:.0f}s.",
    ]
    atomic_write_text(out / "export_speed.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

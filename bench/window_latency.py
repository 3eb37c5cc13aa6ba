"""Sliding-window attention vs. full attention: whole-student latency side by side.

Builds two students of the parent (data-free, latency only): every layer ``attention:parent``,
and every layer ``attention:window=W`` (optionally ``,kv_heads=N``); times both as whole-model
onnxruntime graphs in one interleaved run per phase (``compress.latency.time_graphs``: same
rounds, same load), for prefill at each ``--seq`` and one decode step at each ``--context``
(the windowed student's cache holds min(context, W) positions, the full one ``context``).
Prints medians and the full / windowed ratio (> 1: the window is faster), plus the KV cache
per sequence from the families' cost features.

    python bench/window_latency.py --source smollm2-135m --window 256 --seq 1024 2048 \
        --context 2048 --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from compress.latency import MeasureSettings, assemble, get_backend, time_graphs, whole_graph
from compress.loading import load_parent
from compress.variants import VariantSpec

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="smollm2-135m", help="parent (model.source)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--context", type=int, nargs="+", default=[2048])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = load_parent(args.source).adapter
    shape = model.shape
    window = f"attention:window={args.window}"
    if args.kv_heads:
        window += f",kv_heads={args.kv_heads}"
    spec = VariantSpec.parse(window)
    spec.check(shape)
    students = [
        [["attention:parent", "ffn:parent"]] * shape.num_layers,
        [[str(spec), "ffn:parent"]] * shape.num_layers,
    ]
    print(f"parent {args.source} ({shape.key}); windowed student: {spec} in every layer")
    print(f"onnxruntime-cpu, {args.threads} thread(s), {args.repeats} interleaved rounds, fp32")
    print("| phase | tokens | full ms | windowed ms | full / windowed | KV cache MiB full / win |")
    print("|---|---|---|---|---|---|")
    runs = [("prefill", n) for n in args.seq] + [("decode", c) for c in args.context]
    for phase, n in runs:
        settings = MeasureSettings(
            phase=phase,
            seq=n if phase == "prefill" else 1,
            context=n if phase == "decode" else 1,
            threads=args.threads,
            repeats=args.repeats,
            warmup=1,
        )
        t0 = time.perf_counter()
        graphs = {i: whole_graph(assemble(model, c), settings) for i, c in enumerate(students)}
        times = time_graphs(get_backend(settings), graphs, settings)
        full, win = (float(np.median(times[i])) for i in range(2))
        kv = []
        for s in (VariantSpec.parse("attention:parent"), spec):
            f = s.cost_features(shape)
            tokens = min(n, f["kv_window"]) if f["kv_window"] else n
            kv.append(f["kv_values_per_token"] * tokens * 4 * shape.num_layers / MIB)
        print(
            f"| {phase} | {n} | {full:.1f} | {win:.1f} | {full / win:.2f}x | "
            f"{kv[0]:.1f} / {kv[1]:.1f} |  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()

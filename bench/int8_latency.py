"""Does int8 dynamic quantisation (onnxruntime) speed up an exported model on this CPU?

The model (a parent: ``--model``, default ``smollm2-135m``) is exported as the deployed ONNX
decoder graph (``compress.export_onnx``, fp32), then quantised with onnxruntime's
``quantize_dynamic`` (int8 weights of every ``MatMul`` that reads a weight, activations
quantised at run time; attention's activation-by-activation products stay in float).
Both graphs are timed side by side in one process, in alternating order: a prompt of
``--seq`` tokens (prefill) and one decode step after ``--seq`` cached tokens, batch 1,
``--threads`` onnxruntime threads. Quality cost: the largest logit difference on that prompt
and how many of 32 greedy tokens (with the KV cache) agree with fp32.

    python bench/int8_latency.py [--model smollm2-135m] [--seq 256] [--repeats 20] [--threads 1]
        [--per-channel] [--reduce-range]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def quantize(src: Path, dst: Path, per_channel: bool, reduce_range: bool) -> None:
    """int8 weights for every MatMul with a weight (``reduce_range``: 7-bit weights, which avoids the
    u8 x s8 saturation of CPUs without VNNI instructions)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    # weight matmuls only: attention's q.k and p.v products stay in float
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=matmuls,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        reduce_range=reduce_range,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-channel", action="store_true", help="one int8 scale per column")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    args = ap.parse_args(argv)
    import torch

    from compress.export_onnx import OrtDecoder, empty_past, export_onnx
    from compress.loading import load_parent

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    parent = load_parent(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="int8-"))
    try:
        fp32, int8 = tmp / "fp32", tmp / "int8"
        export_onnx(parent.adapter, fp32, parity=False, exporter="torchscript")
        int8.mkdir()
        quantize(fp32 / "model.onnx", int8 / "model.onnx", args.per_channel, args.reduce_range)
        shutil.copy(fp32 / "export.json", int8 / "export.json")
        sizes = {n: sum(p.stat().st_size for p in d.glob("model.onnx*")) for n, d in
                 (("fp32", fp32), ("int8", int8))}  # fmt: skip
        runners = {"fp32": OrtDecoder(fp32, args.threads), "int8": OrtDecoder(int8, args.threads)}
        rng = np.random.default_rng(0)
        ids = rng.integers(0, parent.shape.vocab_size, (1, args.seq), dtype=np.int64)
        step = ids[:, :1]
        logits, pasts = {}, {}
        for name, r in runners.items():
            logits[name], pasts[name] = r.run_prefill(ids)
        prefill = {n: {"input_ids": ids, **empty_past(r.prefill, 1)} for n, r in runners.items()}
        times = {(n, phase): [] for n in runners for phase in ("prefill", "decode")}
        order = list(runners)
        for rep in range(args.repeats + 3):
            for name in order if rep % 2 == 0 else order[::-1]:
                r = runners[name]
                t0 = time.perf_counter()
                r.prefill.run(None, prefill[name])
                t1 = time.perf_counter()
                r.run_decode(step, pasts[name])
                t2 = time.perf_counter()
                if rep >= 3:  # warm-up rounds are not counted
                    times[(name, "prefill")].append((t1 - t0) * 1e3)
                    times[(name, "decode")].append((t2 - t1) * 1e3)
        prompt = ids[:, :32]
        tokens = {n: r.generate_greedy(prompt, 32) for n, r in runners.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    agree = int((tokens["fp32"] == tokens["int8"]).sum())
    first = np.argmin(tokens["fp32"][0] == tokens["int8"][0]) if agree < 32 else 32
    print(
        f"{args.model}: onnxruntime CPU, {args.threads} thread(s), batch 1, {args.seq} tokens; "
        f"int8 per-channel {args.per_channel}, reduce-range {args.reduce_range}"
    )
    print("| graph | MB | prefill ms | decode ms |")
    print("|:--|--:|--:|--:|")
    for n in runners:
        print(
            f"| {n} | {sizes[n] / 1e6:.1f} | {med[(n, 'prefill')]:.2f} | {med[(n, 'decode')]:.2f} |"
        )
    print(
        f"int8 speed-up: prefill {med[('fp32', 'prefill')] / med[('int8', 'prefill')]:.2f}x, "
        f"decode {med[('fp32', 'decode')] / med[('int8', 'decode')]:.2f}x (medians of "
        f"{args.repeats} alternating rounds); max logit diff "
        f"{float(np.abs(logits['fp32'] - logits['int8']).max()):.3f}; greedy tokens equal "
        f"{agree}/32 (first difference at {first}); wall {time.perf_counter() - t_start:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

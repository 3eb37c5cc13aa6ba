"""A plan on paper for 8B and 70B parents on an H100 cluster, from FLOP counts and storage
formulas (shapes from ``compress/configs``), checked against the per-token costs measured on
this machine (``results/bench/scale.csv`` from ``bench/scale.py``, when present).

Assumptions (stated in the printed notes): H100 SXM bf16 dense peak 989 TFLOPS; model FLOP
utilisation 40 % for forward passes (capture, scoring, rerank, evaluation: long batched
sequences) and 25 % for BLD (one small block per task, forward + backward); quadratic attention
FLOPs left out (at 4k tokens they add about 10 % to an 8B forward, more to smaller models);
activations, library and students stored in bf16; 64 GPUs (8 nodes x 8) reading and writing
object storage at 16 GB/s in aggregate (2 GB/s per node).

    python bench/scale.py --plan        # writes results/bench/scale_plan.csv and .md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import OUT, write_table  # noqa: E402

PEAK = 989e12
MFU_FORWARD, MFU_BLD = 0.40, 0.25
GPUS = 64
IO_GBS = 16.0  # aggregate object-storage bandwidth: 8 nodes x 2 GB/s
BYTES = 2  # bf16
# token budgets of the planned job
T_BLD, T_HELD, T_SCORE = 1 << 20, 1 << 16, 1 << 17
RERANK_SOLUTIONS, T_RERANK = 20, 1 << 17
POINTS, T_EVAL = 10, 1 << 18
FFN_WIDTHS = (0.75, 0.5, 0.25)


def shape(name: str) -> dict:
    raw = json.loads((ROOT / "compress" / "configs" / f"{name}.json").read_text())
    h, heads, kv = raw["hidden_size"], raw["num_attention_heads"], raw["num_key_value_heads"]
    d = raw.get("head_dim") or h // heads
    attn = h * heads * d * 2 + 2 * h * kv * d
    ffn = 3 * h * raw["intermediate_size"]
    vocab = raw["vocab_size"]
    head = 0 if raw.get("tie_word_embeddings") else vocab * h
    layers = raw["num_hidden_layers"]
    kv_options = sorted({k for k in (kv // 2, kv // 4, 1) if k >= 1 and k < kv})
    variants = [h * heads * d * 2 + 2 * h * k * d for k in kv_options] + [h * h]  # attention
    variants += [int(ffn * w) for w in FFN_WIDTHS] + [h * h]  # FFN
    return {
        "layers": layers,
        "hidden": h,
        "params": layers * (attn + ffn) + vocab * h + head,
        "layer_params": attn + ffn,
        "head_flops": 2 * vocab * h,
        "trainable": variants,
        "scored_per_layer": len(variants) + 2,  # + attention and FFN noop
    }


def forward_flops(s: dict, layers: float | None = None) -> float:
    """FLOPs per token of a forward through ``layers`` layers (default all) and the LM head."""
    return 2 * s["layer_params"] * (s["layers"] if layers is None else layers) + s["head_flops"]


def plan(name: str) -> list[dict]:
    s = shape(name)
    L, h = s["layers"], s["hidden"]
    fwd = forward_flops(s)
    bld_params = L * sum(s["trainable"])
    weights = BYTES * s["params"]
    activations = 3 * L * h * BYTES * (T_BLD + T_HELD)
    n_bld = L * len(s["trainable"])
    # (stage, FLOPs, MFU, parallel over, bytes stored, bytes moved: written + read by tasks)
    stages = [
        ("capture", (T_BLD + T_HELD) * fwd, MFU_FORWARD, "token shards", activations, activations),
        ("BLD", 6 * T_BLD * bld_params, MFU_BLD, f"{n_bld} (layer, variant) tasks",
         BYTES * bld_params, n_bld * 2.5 * h * BYTES * T_BLD),  # a task reads 2-3 arrays of its layer
        ("scoring", L * s["scored_per_layer"] * T_SCORE * forward_flops(s, L / 2), MFU_FORWARD,
         f"{L} layer tasks ({s['scored_per_layer']} variants each)", (L + 1) * h * BYTES * T_SCORE,
         L * weights / 2),  # a layer-l task loads the parent's layers l..
        ("rerank", RERANK_SOLUTIONS * T_RERANK * fwd, MFU_FORWARD, f"{RERANK_SOLUTIONS} solutions",
         0, RERANK_SOLUTIONS * weights),
        ("students", POINTS * T_EVAL * 2 * fwd, MFU_FORWARD, f"{POINTS} points",
         POINTS * 0.7 * weights, POINTS * 1.7 * weights),
    ]  # fmt: skip
    rows = []
    for stage, flops, mfu, over, stored, moved in stages:
        gpu_s = flops / (PEAK * mfu)
        rows.append(
            {
                "parent": name,
                "stage": stage,
                "parallel over": over,
                "PFLOP": round(flops / 1e15, 1),
                "GPU-hours": round(gpu_s / 3600, 2),
                f"wall on {GPUS} GPUs (min)": round(gpu_s / GPUS / 60, 1),
                "stored (GB)": round(stored / 1e9, 1),
                "moved (TB)": round(moved / 1e12, 2),
                f"I/O at {IO_GBS:.0f} GB/s (min)": round(moved / (IO_GBS * 1e9) / 60, 1),
            }
        )
    rows.append(
        {
            "parent": name,
            "stage": "profile + selection",
            "parallel over": "variants (target GPU) / budgets (CPU)",
            "PFLOP": "",
            "GPU-hours": "",
            f"wall on {GPUS} GPUs (min)": "minutes",
            "stored (GB)": round(BYTES * s["params"] / 1e9, 1),  # the parent itself
            "moved (TB)": "",
            f"I/O at {IO_GBS:.0f} GB/s (min)": "",
        }
    )
    return rows


def measured_check() -> list[dict]:
    """Forward tokens/s measured here x forward FLOPs per token: about constant across parents
    when the cost per token grows with the parameters, as the plan assumes."""
    path = OUT / "scale.csv"
    if not path.exists():
        return []
    import pandas as pd

    frame = pd.read_csv(path)
    rows = []
    for (parent, dtype), group in frame.groupby(["parent", "dtype"], sort=False):
        name = parent.removeprefix("random:")
        config = ROOT / "compress" / "configs" / f"{name}.json"
        if not config.exists():
            name = "smollm2-135m"
        s = shape(name) if config.exists() else None
        for stage in ("baseline", "capture"):
            hit = group[group["stage"] == stage]
            if s is None or hit.empty or pd.isna(hit["tokens_per_s"].iloc[0]):
                continue
            tps = float(hit["tokens_per_s"].iloc[0])
            rows.append(
                {
                    "parent": parent,
                    "dtype": dtype,
                    "stage": stage,
                    "tokens/s here": tps,
                    "GFLOP/token": round(forward_flops(s) / 1e9, 2),
                    "effective GFLOP/s": round(tps * forward_flops(s) / 1e9, 1),
                }
            )
    return rows


def main() -> None:
    rows = plan("llama-3.1-8b") + plan("llama-3.1-70b")
    notes = (
        "Command: `python bench/scale.py --plan`. H100 bf16 dense peak 989 TFLOPS, MFU 40 % "
        f"(forward) / 25 % (BLD), {GPUS} GPUs; tokens: BLD {T_BLD:,} per variant (+{T_HELD:,} "
        f"held out), scoring {T_SCORE:,} per variant, rerank {RERANK_SOLUTIONS} x {T_RERANK:,}, "
        f"students {POINTS} x {T_EVAL:,}; space: attention KV-head halvings + linear, FFN "
        "75/50/25 % + linear, noop. Stored: activations (capture), library (BLD), residual "
        "cache (scoring), students in bf16; moved: written + read by tasks, at 16 GB/s aggregate."
    )
    write_table("scale_plan", rows, "Plan: 8B and 70B parents on an H100 cluster", notes=notes)
    check = measured_check()
    if check:
        write_table(
            "scale_check",
            check,
            "Measured here: forward tokens/s x FLOPs/token",
            notes="From results/bench/scale.csv (`python bench/scale.py`).",
        )


if __name__ == "__main__":
    main()

"""Which linear layers of a parent can run in int8 without hurting quality: the measurement
behind the ``int8`` variant family (``compress/families/int8.py``).

For each group of linear layers (in every layer: attention q/k/v, attention o, FFN gate/up,
FFN down; the LM head; the family's choice; all of them), the parent is exported with that
group computed as onnxruntime's dynamic quantization computes it (``DynamicInt8Linear``,
``compress.quantize_onnx``). Every graph is timed side by side with the fp32 export (rotated
rounds, batch 1, ``--seq`` tokens, ``--threads`` threads), and its quality measured from its
own onnxruntime logits on the eval sets of a finished job (``--job``): perplexity ratio and
KL to the fp32 parent.

    python bench/int8_sensitivity.py --job q6 [--results results] [--repeats 10]
        [--threads 1] [--seq 256] [--name int8_sensitivity]

Writes results/bench/NAME.csv and .md. Exit 2 with one line when the job has no eval sets.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import write_table  # noqa: E402
from bench.general_quality import ort_quality  # noqa: E402
from bench.healed_front import time_prompts  # noqa: E402
from nas.layout import JobLayout  # noqa: E402

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")
GROUPS = {  # name: (attention layers, FFN layers, LM head)
    "attention q/k/v": (ATTENTION[:3], (), False),
    "attention o": (ATTENTION[3:], (), False),
    "FFN gate/up": ((), FFN[:2], False),
    "FFN down": ((), FFN[2:], False),
    "LM head": ((), (), True),
    "int8 family: q/k/v/o + gate/up": (ATTENTION, FFN[:2], False),
    "every linear layer": (ATTENTION, FFN, True),
}


def marked(model, attention, ffn, head: bool):
    """A copy of ``model`` with those linear layers ``DynamicInt8Linear``."""
    from compress.export.nas_llm_layers import quantize_linears

    model = copy.deepcopy(model)
    for layer in model.layers:
        quantize_linears(layer.attention, attention)
        quantize_linears(layer.ffn, ffn)
    if head:
        quantize_linears(model, ["lm_head"])
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True, help="a finished job with eval sets (their tokens)")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--name", default="int8_sensitivity")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    from compress.export_onnx import export_onnx
    from compress.loading import load_parent
    from nas.store import JobStore

    spec = JobStore.open(args.results, args.job).spec()
    layout = JobLayout(Path(args.results) / args.job)
    sets = {s.name: layout.eval_set(s.name) for s in spec.eval.sets}
    if not sets or not all(p.exists() for p in sets.values()):
        print(f"error: job {args.job!r} has no eval-set tokens in {args.results}", file=sys.stderr)
        return 2
    parent = load_parent(spec.model.source)
    folder = Path(tempfile.mkdtemp(prefix="nas-int8-"))
    try:
        paths = {}
        for i, (name, group) in enumerate(({"parent": ((), (), False)} | GROUPS).items()):
            model = marked(parent.adapter, *group) if i else parent.adapter
            exported = export_onnx(
                model, folder / str(i), parity=False, decode=False, exporter="torchscript"
            )
            paths[name] = exported.prefill
        times = time_prompts(paths, parent.shape.vocab_size, args.seq, args.threads, args.repeats)
        quality = ort_quality(paths, sets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    parent_ms = float(np.median(times["parent"]))
    rows = []
    for name in GROUPS:
        row = {"int8 linear layers": name, "speed-up": round(parent_ms / np.median(times[name]), 3)}
        for s in sets:
            row |= {
                f"ppl ratio @{s}": quality[name][s]["ratio"],
                f"KL @{s}": quality[name][s]["kl"],
            }
        rows.append(row)
    tokens = ", ".join(f"{s.name} {s.tokens} tokens" for s in spec.eval.sets)
    notes = (
        f"{spec.model.source}; onnxruntime CPU, {args.threads} thread(s), batch 1, {args.seq} "
        f"tokens, {args.repeats} rotated rounds after 3 warm-ups; parent (fp32) median "
        f"{parent_ms:.1f} ms. Quality from each graph's onnxruntime logits on job {args.job}'s "
        f"eval sets ({tokens}): perplexity ratio and KL(fp32 parent || graph) per token. Wall "
        f"time {time.perf_counter() - t_start:.0f}s. Command: `python bench/int8_sensitivity.py "
        f"--job {args.job}`."
    )
    write_table(args.name, rows, "int8 linear layers of the parent: speed and quality", notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

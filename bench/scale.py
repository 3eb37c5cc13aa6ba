"""Scaling table: per stage wall time, peak RSS of the process tree, disk written and tokens/s
for parents of growing size, in float32 and bfloat16, on this machine.

Parents: the real SmolLM2-135M and random-weight parents of real shapes (``random:NAME``,
``compress/configs``): SmolLM2-360M, Llama-3.2-1B, Llama-3.2-3B. Each (parent, dtype) runs
``nas run`` once, as a child process, on a reduced space (variants in two layers, few tokens:
``SPEC`` below) so the whole table takes a bounded time; a sampler attributes the summed RSS of
the process tree (the CLI, Ray's processes and workers; shared pages counted once per
process, an upper bound) and the job folder's growth to the stage the manifest names.
Quality figures of these runs are not reported (random weights: meaningless). A random
parent's weights are written to the cache once, before its timed run (``prepare_s``).

    nice -n 10 python bench/scale.py [--parents smollm2-135m,random:llama-3.2-1b]
        [--dtypes float32,bfloat16] [--budget-min 30]

Rows whose start would pass ``--budget-min`` are skipped and listed. Writes
results/bench/scale.csv and .md. ``--plan`` prints the paper plan for 8B and 70B parents on a
GPU cluster instead (``bench/scale_plan.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not an installed package

from bench._report import write_table  # noqa: E402
from bench.bld import PeakRSS  # noqa: E402
from bench.footprint import StageWatch, folder_bytes  # noqa: E402
from nas.layout import JobLayout  # noqa: E402

PARENTS = "smollm2-135m,random:smollm2-360m,random:llama-3.2-1b,random:llama-3.2-3b"
STAGES = ("baseline", "capture", "bld", "scoring", "selection", "rerank", "students")
SEQ = 64
SPEC = {
    "data": {
        "seq_len": SEQ,
        "train_tokens": 1024,
        "eval_tokens": 512,
        "seed": 0,
        "sources": [{"kind": "files", "files": ["builtin:stories_sample.txt"]}],
    },
    "space": {"attention": ["parent", "noop"], "ffn": ["parent", 0.5, "noop"]},
    "bld": {"tokens": 256, "batch_size": 1, "init_tokens": 128, "eval_tokens": 128},
    "scoring": {"eval_tokens": SEQ, "batch_size": 1},
    "hardware": {
        "measure": {"backend": "torch-cpu", "repeats": 3, "warmup": 1},
        "phases": [{"phase": "prefill", "batch": 1, "seq": 32}],
    },
    # variants in two layers only: a budget just under the parent is what every row can meet
    "targets": [{"metric": "prefill_latency_ms", "values": [0.99], "relative": True}],
    "strategy": {"names": ["puzzle-mip"], "solutions_per_budget": 1, "rerank_tokens": SEQ},
    "export": {"formats": ["hf"], "eval_tokens": SEQ},
    "ray": {"num_cpus": 2},
}
PRECISION = {"float32": "fp32", "bfloat16": "bf16"}


def spec_for(source: str, dtype: str, layers: int) -> dict:
    """The reduced spec of one row: variants in the first and the middle layer only."""
    spec = json.loads(json.dumps(SPEC))
    spec["name"] = f"scale-{Path(source.removeprefix('random:')).name}-{dtype}"
    spec["model"] = {"source": source, "dtype": dtype}
    spec["space"]["layers"] = [0, layers // 2]
    spec["hardware"]["measure"]["precision"] = PRECISION[dtype]
    spec["export"]["precision"] = PRECISION[dtype]
    return spec


def prepare(source: str, dtype: str) -> tuple[int, float]:
    """(num_layers, seconds to write the random weights; 0 for a real parent)."""
    import torch

    from compress.loading import cache_dir, ensure_default_folder
    from compress.random_parent import config_path, is_random, random_parent_folder

    t0 = time.perf_counter()
    if is_random(source):
        random_parent_folder(source, getattr(torch, dtype), cache_dir(), ensure_default_folder)
        layers = json.loads(config_path(source).read_text())["num_hidden_layers"]
        return layers, time.perf_counter() - t0
    folder = Path(source) if Path(source).is_dir() else ensure_default_folder(source)
    return json.loads((folder / "config.json").read_text())["num_hidden_layers"], 0.0


def stage_tokens(job: Path, spec: dict) -> dict:
    """Tokens each stage pushed through a model (forward, or forward+backward for BLD)."""
    stages = job / "stages"

    def record(name: str) -> dict:
        path = stages / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    capture = record("capture")
    library = [json.loads(p.read_text()) for p in (job / "library").glob("L*.json")]
    points = len(JobLayout(job).measured_points())
    return {
        "baseline": record("baseline").get("tokens"),
        "capture": capture.get("train", {}).get("num_sequences", 0) * SEQ
        + capture.get("heldout", {}).get("num_sequences", 0) * SEQ,
        "bld": sum(r.get("tokens", 0) for r in library),
        "scoring": record("scoring").get("computed", 0) * spec["scoring"]["eval_tokens"],
        "students": (points + 1) * spec["export"]["eval_tokens"],
    }


def run_row(source: str, dtype: str, nas: str) -> list[dict]:
    layers, prepare_s = prepare(source, dtype)
    spec = spec_for(source, dtype, layers)
    tmp = Path(tempfile.mkdtemp(prefix="nas-scale-"))
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    job = tmp / "results" / "scale"
    watch = StageWatch(job)
    command = [nas, "run", str(spec_path), "--job-id", "scale", "--results", str(tmp / "results")]
    print("$", " ".join(command), flush=True)
    t0 = time.perf_counter()
    with PeakRSS(label=watch) as peak:
        proc = subprocess.run(command, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = []
    try:
        manifest = json.loads((job / "manifest.json").read_text())
        seconds = manifest.get("stage_seconds", {})
        tokens = stage_tokens(job, spec)
        end = folder_bytes(job)
        starts = [watch.bytes_at.get(s) for s in STAGES] + [end]
        for i, stage in enumerate(STAGES):
            if stage not in seconds:
                continue
            after = next((b for b in starts[i + 1 :] if b is not None), end)
            # a stage too short for the sampler to see has no start figure: nothing to report
            written = after - starts[i] if starts[i] is not None else None
            n = tokens.get(stage)
            rows.append(
                {
                    "parent": source,
                    "dtype": dtype,
                    "stage": stage,
                    "wall_s": round(seconds[stage], 1),
                    "peak_rss_MiB": round(peak.peaks.get(stage, 0) / 2**20),
                    "peak_pss_MiB": round(peak.pss_peaks.get(stage, 0) / 2**20),
                    "disk_written_MiB": "" if written is None else round(written / 2**20, 1),
                    "tokens": n if n else "",
                    "tokens_per_s": round(n / seconds[stage], 1) if n else "",
                }
            )
        rows.append(
            {
                "parent": source,
                "dtype": dtype,
                "stage": f"whole run (exit {proc.returncode}; weights written in {prepare_s:.0f}s)",
                "wall_s": round(wall, 1),
                "peak_rss_MiB": round(peak.peak / 2**20),
                "peak_pss_MiB": round(peak.peak_pss / 2**20),
                "disk_written_MiB": round(end / 2**20, 1),
                "tokens": "",
                "tokens_per_s": "",
            }
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parents", default=PARENTS)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--nas", default="nas", help="the nas executable to run")
    parser.add_argument("--plan", action="store_true", help="print the GPU-cluster plan only")
    args = parser.parse_args()
    if args.plan:
        from bench.scale_plan import main as plan

        plan()
        return
    start, rows, skipped = time.perf_counter(), [], []
    for source in args.parents.split(","):
        for dtype in args.dtypes.split(","):
            if time.perf_counter() - start > args.budget_min * 60:
                skipped.append(f"{source} {dtype}")
                continue
            rows += run_row(source, dtype, args.nas)
    notes = (
        f"Command: `python bench/scale.py --parents {args.parents} --dtypes {args.dtypes}`; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; reduced space (variants in 2 layers, {SEQ}-token "
        "sequences); random-weight parents: time/memory/disk only, quality meaningless."
    )
    if skipped:
        notes += f" Skipped (over the {args.budget_min:.0f}-minute budget): {', '.join(skipped)}."
    write_table("scale", rows, "Scaling: per stage, per parent and dtype", notes=notes)


if __name__ == "__main__":
    main()

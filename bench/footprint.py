"""Footprint of a whole job: wall time, peak RSS of the process tree, job-folder size on disk.

Runs ``nas run SPEC`` as a child process under a fresh results folder and samples the summed
memory of this process and all its descendants (the CLI, the Ray GCS/raylet and workers) every
0.25 s, in total and per stage of the job: RSS (shared pages, e.g. the memory-mapped parent
that Ray workers map again, count once per process: an upper bound) and PSS (shared pages
split among the processes: the tree's real footprint). Afterwards it reports the job
folder's size, with its largest sub-folders.

    python bench/footprint.py search_spaces/quickstart.yaml [--name quickstart] [--keep]
    python bench/footprint.py SPEC --nas /path/to/venv/bin/nas   # another install of the CLI

Writes results/bench/footprint_<name>.csv and .md.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not an installed package

from bench._report import write_table  # noqa: E402
from bench.bld import PeakRSS  # noqa: E402


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (hard links counted once)."""
    seen, total = set(), 0
    for item in path.rglob("*"):
        if item.is_file() and not item.is_symlink():
            stat = item.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


class StageWatch:
    """The job's current stage (from its manifest) and the job folder's bytes at each change."""

    def __init__(self, job: Path):
        self.job, self.stage, self.bytes_at = job, "start", {}

    def __call__(self) -> str:
        try:
            stage = json.loads((self.job / "manifest.json").read_text()).get("current_stage")
        except (OSError, ValueError):
            stage = None
        if stage and stage != self.stage:
            self.bytes_at[stage] = folder_bytes(self.job)
            self.stage = stage
        return self.stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--name", default=None, help="output name (default: the spec's stem)")
    parser.add_argument("--nas", default="nas", help="the nas executable to run")
    parser.add_argument("--keep", action="store_true", help="keep the job folder")
    args = parser.parse_args()
    name = args.name or Path(args.spec).stem

    results = Path(tempfile.mkdtemp(prefix="nas-footprint-"))
    command = [args.nas, "run", args.spec, "--job-id", "footprint", "--results", str(results)]
    print("$", " ".join(command), flush=True)
    job = results / "footprint"
    start = time.perf_counter()
    with PeakRSS(label=StageWatch(job)) as peak:
        proc = subprocess.run(command)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"nas run failed with exit code {proc.returncode} (job folder: {job})")

    rows = [
        {"figure": "wall time (s)", "value": round(wall, 1)},
        {"figure": "peak RSS, process tree summed (MiB)", "value": round(peak.peak / 2**20)},
        {"figure": "processes at the peak", "value": peak.peak_procs},
        {"figure": "peak PSS, process tree summed (MiB)", "value": round(peak.peak_pss / 2**20)},
    ]
    rows += [
        {
            "figure": f"  {stage}: peak RSS / PSS (MiB)",
            "value": f"{rss / 2**20:.0f} / {peak.pss_peaks.get(stage, 0) / 2**20:.0f}",
        }
        for stage, rss in peak.peaks.items()
    ]
    rows += [
        {"figure": "job folder (MiB)", "value": round(folder_bytes(job) / 2**20, 1)},
    ]
    subfolders = sorted((p for p in job.iterdir() if p.is_dir()), key=folder_bytes, reverse=True)
    for sub in subfolders[:6]:
        rows.append(
            {"figure": f"  {sub.name}/ (MiB)", "value": round(folder_bytes(sub) / 2**20, 1)}
        )
    write_table(
        f"footprint_{name}",
        rows,
        f"Footprint of `nas run {args.spec}`",
        notes=f"Command: `python bench/footprint.py {args.spec}`; {time.strftime('%Y-%m-%d %H:%M')}.",
    )
    if args.keep:
        print(f"job folder kept: {job}")
    else:
        shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    main()

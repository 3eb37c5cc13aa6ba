"""Footprint of a whole job: wall time, peak RSS of the process tree, job-folder size on disk.

Runs ``nas run SPEC`` as a child process under a fresh results folder and samples the summed
RSS of this process and all its descendants (the CLI, the Ray GCS/raylet and workers) every
0.25 s (shared pages are counted once per process: an upper bound). Afterwards it reports the
job folder's size, with its largest sub-folders, and the last stage timings the CLI printed.

    python bench/footprint.py search_spaces/quickstart.yaml [--name quickstart] [--keep]
    python bench/footprint.py SPEC --nas /path/to/venv/bin/nas   # another install of the CLI

Writes results/bench/footprint_<name>.csv and .md.
"""

from __future__ import annotations

import argparse
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
    start = time.perf_counter()
    with PeakRSS() as peak:
        proc = subprocess.run(command)
    wall = time.perf_counter() - start
    job = results / "footprint"
    if proc.returncode != 0:
        sys.exit(f"nas run failed with exit code {proc.returncode} (job folder: {job})")

    rows = [
        {"figure": "wall time (s)", "value": round(wall, 1)},
        {"figure": "peak RSS, process tree summed (MiB)", "value": round(peak.peak / 2**20)},
        {"figure": "processes at the peak", "value": peak.peak_procs},
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

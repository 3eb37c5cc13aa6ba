"""BLD at scale (acceptance 6 of issue 3): capture + BLD of a spec's space on Ray.

Runs the capture and BLD stages of ``--spec`` (default: search_spaces/quickstart.yaml, i.e.
smollm2-135m, 30 layers x 3 trainable variants) as a fresh job under a temporary results
folder (the baseline LM-loss evaluation is skipped: it is not part of BLD). Reports the
capture time, the BLD wall time, the summed BLD time and the tokens/s of each trained
variant (from the library records, measured inside the Ray task, one thread each), and the
peak resident memory of the whole stage: the sum of RSS over this process and all its
descendants (the Ray raylet, GCS and workers), sampled every 0.25 s (shared pages are counted
once per process, so this is an upper bound), plus ``getrusage`` maxima for self and children.

    python bench/bld.py [--spec search_spaces/quickstart.yaml] [--keep]

Writes results/bench/bld.csv (one row per figure) and results/bench/bld.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not an installed package

from bench._report import write_table  # noqa: E402


class PeakRSS:
    """Samples the summed memory of this process and its descendants in a thread.

    Two sums: RSS (a page shared by several processes, e.g. memory-mapped weights or Ray's
    object store, counts once per process: an upper bound) and PSS (each shared page split
    among the processes that map it: the tree's real footprint). With ``label`` (called at
    each sample, e.g. the job's current stage), ``peaks`` / ``pss_peaks`` keep the peak per
    label.
    """

    def __init__(self, every_s: float = 0.25, label=None):
        self.every_s, self.peak, self.peak_procs, self.peak_pss = every_s, 0, 0, 0
        self.label, self.peaks, self.pss_peaks = label, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss, pss, procs = 0, 0, 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()  # /proc/PID/smaps_rollup: rss and pss
                    rss, pss, procs = rss + info.rss, pss + info.pss, procs + 1
                except psutil.Error:
                    pass
            if rss > self.peak:
                self.peak, self.peak_procs = rss, procs
            self.peak_pss = max(self.peak_pss, pss)
            if self.label is not None:
                key = self.label()
                self.peaks[key] = max(self.peaks.get(key, 0), rss)
                self.pss_peaks[key] = max(self.pss_peaks.get(key, 0), pss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    parser.add_argument("--keep", action="store_true", help="keep the job folder")
    args = parser.parse_args()

    from compress.library import read_records
    from nas.baseline_stage import load_job_parent, prepare_data
    from nas.bld_stage import planned_variants, stage_bld, stage_capture
    from nas.spec import load_spec
    from nas.stage_io import Prepared
    from nas.store import JobStore

    spec = load_spec(args.spec)
    root = Path(tempfile.mkdtemp(prefix="bench-bld-"))
    store = JobStore.create(root, "bench-bld", spec.model_dump(mode="json"), args.spec)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        parent = load_job_parent(spec)
        splits = prepare_data(spec, store, parent)
        load_s = time.perf_counter() - t0
        prepared = Prepared(parent, splits, baseline=None)
        t1 = time.perf_counter()
        captured = stage_capture(spec, store, prepared)
        capture_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        result = stage_bld(spec, store, prepared, captured)
        bld_s = time.perf_counter() - t2
    records = read_records(store.library)
    rates = [r["tokens_per_s"] for r in records]
    by_kind = {}
    for r in records:
        by_kind.setdefault(r["variant"].split("=")[0], []).append(r)
    usage_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows = [
        {"figure": "model", "value": f"{parent.shape.key}"},
        {
            "figure": "variants trained",
            "value": f"{result.trained} (planned {len(planned_variants(spec, parent.shape))})",
        },
        {
            "figure": "bld tokens / batch (seq) / lr",
            "value": f"{spec.bld.tokens} / {spec.bld.batch_size} x {splits.seq_len} / {spec.bld.lr}",
        },
        {"figure": "ray num_cpus", "value": str(spec.ray.num_cpus)},
        {"figure": "load parent + data (s)", "value": f"{load_s:.1f}"},
        {
            "figure": "capture (s)",
            "value": f"{capture_s:.1f} ({captured.train_tokens} train + {captured.heldout_tokens} held-out tokens)",
        },
        {"figure": "BLD wall (s)", "value": f"{bld_s:.1f}"},
        {"figure": "capture + BLD wall (s)", "value": f"{capture_s + bld_s:.1f}"},
        {
            "figure": "BLD task time summed (s)",
            "value": f"{sum(r['seconds'] for r in records):.1f}",
        },
        {
            "figure": "tokens/s per variant, median [min, max]",
            "value": f"{statistics.median(rates):.0f} [{min(rates):.0f}, {max(rates):.0f}]",
        },
    ]
    for name, recs in sorted(by_kind.items()):
        rows.append(
            {
                "figure": f"  {name}: tokens/s median, nMSE init -> final (mean)",
                "value": f"{statistics.median(r['tokens_per_s'] for r in recs):.0f}, "
                f"{statistics.mean(r['nmse_init'] for r in recs):.3f} -> "
                f"{statistics.mean(r['nmse_final'] for r in recs):.3f}",
            }
        )
    rows += [
        {
            "figure": "peak RSS, process tree summed (MiB)",
            "value": f"{peak.peak / 2**20:.0f} over {peak.peak_procs} processes",
        },
        {
            "figure": "getrusage maxrss self / children (MiB)",
            "value": f"{usage_self:.0f} / {usage_children:.0f}",
        },
        {
            "figure": "cpus / load avg at end",
            "value": f"{os.cpu_count()} / {os.getloadavg()[0]:.1f}",
        },
    ]
    write_table(
        "bld",
        rows,
        f"BLD of {Path(args.spec).name} on {os.cpu_count()} cores",
        notes="Timings are from a shared, noisy machine. tokens/s is measured inside each Ray task "
        "(one thread) and includes initialisation and the two held-out nMSE passes.",
    )
    if args.keep:
        print(f"job kept in {store.dir}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Pareto queries against `nas serve`: 50 concurrent requests on a finished job, p50/p95.

Usage: python bench/service_latency.py [--job JOB --results DIR] [--requests 50]
Without --job it first runs search_spaces/tiny.yaml into results/bench-jobs/.
Writes results/bench/service_latency.{csv,md}; prints the table last.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import write_table  # noqa: E402
from nas.layout import JobLayout  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_job(results: Path, job: str | None) -> str:
    if job:
        return job
    job = "bench-service-tiny"
    if not JobLayout(results / job).front.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nas.cli",
                "run",
                "search_spaces/tiny.yaml",
                "--job-id",
                job,
                "--results",
                str(results),
            ]
            if not (results / job).exists()
            else [sys.executable, "-m", "nas.cli", "resume", job, "--results", str(results)],
            cwd=ROOT,
            check=True,
        )
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "bench-jobs")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    job = ensure_job(args.results, args.job)
    token = secrets.token_hex(16)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "serve",
            "--port",
            str(port),
            "--results",
            str(args.results),
        ],
        cwd=ROOT,
        env=dict(os.environ, NAS_API_TOKEN=token),
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(150):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        requests.get(
            f"{url}/jobs/{job}/pareto", headers=headers, timeout=30
        ).raise_for_status()  # warm

        def query(i: int) -> float:
            params = {"max_latency_ms": 1e9} if i % 2 else {}
            t0 = time.perf_counter()
            r = requests.get(f"{url}/jobs/{job}/pareto", headers=headers, params=params, timeout=30)
            r.raise_for_status()
            assert r.json(), "empty front"
            return (time.perf_counter() - t0) * 1000

        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            t0 = time.perf_counter()
            times = sorted(pool.map(query, range(args.requests)))
            wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=20)
    p50 = statistics.median(times)
    p95 = times[max(0, int(round(0.95 * len(times))) - 1)]
    rows = [
        {
            "requests": args.requests,
            "concurrency": args.requests,
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "max_ms": round(times[-1], 1),
            "wall_s": round(wall, 2),
            "goal_p95_ms": 200,
            "meets_goal": p95 < 200,
        }
    ]
    write_table("service_latency", rows, f"Pareto queries against nas serve (job {job})")


if __name__ == "__main__":
    main()

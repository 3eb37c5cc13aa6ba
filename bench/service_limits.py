"""How fast `nas serve` refuses oversized or hostile bodies, side by side with a valid POST.

Usage: python bench/service_limits.py [--repeats 5]
Starts a paused server (``--max-running 0``: accepted jobs are queued, then cancelled here)
on loopback; per request kind prints the median wall time of ``--repeats`` tries, its status,
the response size, and the ratio to a valid tiny-spec POST /jobs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_spec() -> dict:
    spec_path = ROOT / "search_spaces" / "tiny.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["model"]["source"] = str((spec_path.parent / spec["model"]["source"]).resolve())
    spec["data"]["files"] = [str((spec_path.parent / f).resolve()) for f in spec["data"]["files"]]
    spec["hardware"]["profiles"] = [
        str((spec_path.parent / f).resolve()) for f in spec["hardware"]["profiles"]
    ]
    return spec


def bodies() -> dict[str, bytes]:
    import json

    valid = json.dumps({"spec": tiny_spec()}).encode()
    wide = tiny_spec()
    wide["space"]["attention"] = ["parent"] * 25_000  # ~250 KiB, schema-valid
    return {
        "valid tiny spec": valid,
        "250 KiB spec (25k entries)": json.dumps({"spec": wide}).encode(),
        "1.1 MB spec": b'{"spec": "' + b"a" * 1_100_000 + b'"}',
        "50 MB JSON list": b"[" + b"1," * 25_000_000 + b"1]",
        "100k-deep JSON (200 KB)": b"[" * 100_000 + b"]" * 100_000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    token, port = secrets.token_hex(16), free_port()
    results = Path(tempfile.mkdtemp(prefix="nas-limits-"))
    cmd = [sys.executable, "-m", "nas.cli", "serve", "--port", str(port), "--results", str(results)]
    cmd += ["--data-root", str(DATA), "--data-root", str(ROOT / "hwprofiles")]
    cmd += ["--max-running", "0", "--max-queued", "1000"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, NAS_API_TOKEN=token))
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        rows = []
        for name, body in bodies().items():
            times, status, size = [], None, 0
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                try:
                    r = requests.post(
                        f"{url}/jobs",
                        data=body,
                        headers={**headers, "Content-Type": "application/json"},
                        timeout=300,
                    )
                    status, size = r.status_code, len(r.content)
                    if r.status_code == 202:
                        requests.delete(f"{url}/jobs/{r.json()['job_id']}", headers=headers)
                except requests.ConnectionError:  # the server answered before reading it all
                    status = "closed early"
                times.append(time.perf_counter() - t0)
            rows.append((name, len(body), status, size, statistics.median(times)))
        base = rows[0][4]
        print(
            f"{'request':30s} {'body':>12s} {'status':>12s} {'reply B':>8s} {'median s':>9s} ratio"
        )
        for name, length, status, size, median in rows:
            print(
                f"{name:30s} {length:12,d} {status!s:>12s} {size:8d} {median:9.3f} {median / base:5.2f}"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

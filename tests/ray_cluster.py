"""A real Ray cluster for tests: a head and one worker as separate processes on 127.0.0.1.

Each node runs ``ray start --block`` in its own session with a private temp dir, so stopping
it kills exactly its processes (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests


def clean_env() -> dict:
    """The environment without Ray settings an in-process Ray of the test run left behind,
    and with token auth off: the test cluster is on loopback, and its readiness checks use
    plain HTTP. (The job client itself sends Ray's token when a cluster asks for one.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, worker_cpus: int = 1, head_cpus: int = 1):
        self.temp = Path(tempfile.mkdtemp(prefix="nr", dir="/tmp"))
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash_port}"
        self.procs: list[subprocess.Popen] = []
        try:
            self._start_nodes(head_cpus, worker_cpus)
        except BaseException:
            self.stop()
            raise

    def _node_ports(self) -> list[str]:
        """Free ports for one node's agents (two nodes on one host must not share them)."""
        return [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
        ]

    def _start_nodes(self, head_cpus: int, worker_cpus: int) -> None:
        env = clean_env()
        self._start(
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--dashboard-port={self.dash_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--num-cpus={head_cpus}",
                f"--temp-dir={self.temp}",
                *self._node_ports(),
            ],
            env,
        )
        self._wait_dashboard()
        self._start(
            [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={worker_cpus}", *self._node_ports()],
            env,
        )
        self._wait_nodes(2)

    def _start(self, args: list[str], env: dict) -> None:
        log = open(self.temp / f"node{len(self.procs)}.log", "wb")
        self.procs.append(
            subprocess.Popen(
                ["ray", "start", "--block", "--node-ip-address=127.0.0.1", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )

    def _wait_dashboard(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.address}/api/version", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Ray head did not start; see {self.temp}")

    def _wait_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                nodes = requests.get(f"{self.address}/nodes?view=summary", timeout=2).json()
                alive = [n for n in nodes["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
                if len(alive) >= count:
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Ray worker did not join; see {self.temp}")

    def worker_pids(self) -> list[int]:
        """PIDs of this cluster's Ray worker processes (the ones running tasks)."""
        out = subprocess.run(["pgrep", "-f", "default_worker.py"], capture_output=True, text=True)
        pids = []
        for pid in out.stdout.split():
            try:
                env = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(self.temp) in env or f":{self.gcs_port}" in env:
                pids.append(int(pid))
        return pids

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(1)
        # everything the nodes started carries the temp dir or the GCS port on its command line
        for pattern in (str(self.temp), f"127.0.0.1:{self.gcs_port}"):
            subprocess.run(["pkill", "-9", "-f", pattern], check=False)
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)

"""Jobs on a real Ray cluster (head + one worker as separate processes on 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nas.layout import JobLayout
from tests.conftest import ROOT, TINY_SPEC, need_shared_data
from tests.ray_cluster import LocalCluster, clean_env


@pytest.fixture(scope="module")
def cluster():
    need_shared_data()
    c = LocalCluster()
    yield c
    c.stop()


def nas(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=clean_env(),
    )


def test_submit_wait_and_read_front(cluster, tmp_path):
    out = nas(
        "submit",
        TINY_SPEC,
        "--address",
        cluster.address,
        "--job-id",
        "clus1",
        "--results",
        tmp_path,
        "--wait",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == "clus1"
    manifest = JobLayout(tmp_path / "clus1").manifest()
    assert manifest["state"] == "finished"
    status = nas("status", "clus1", "--results", tmp_path, "--address", cluster.address)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    logs = nas("logs", "clus1", "--address", cluster.address)
    assert "baseline" in logs.stdout
    front = nas("pareto", "clus1", "--results", tmp_path, "--format", "json")
    assert front.returncode == 0, front.stderr
    points = json.loads(front.stdout)
    assert len(points) >= 5 and all(p["strategy"] for p in points)


def test_token_auth_failure_says_what_to_set():
    """The text Ray's dashboard answers a client without a token (ray 2.60
    ``http_token_authentication.py``) becomes one line naming RAY_AUTH_MODE=token."""
    from nas.ray_runtime import explain

    line = explain(RuntimeError("Unauthorized: Missing authentication token\n(more lines)"))
    assert "\n" not in line and "export RAY_AUTH_MODE=token" in line
    assert explain(ConnectionError("Connection refused")) == "Connection refused"

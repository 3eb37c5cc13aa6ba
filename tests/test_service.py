"""The HTTP service against a real server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
import yaml

from tests.conftest import ROOT, TINY_SPEC, need_shared_data

TOKEN = "test-token-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_shared_data()
    results = tmp_path_factory.mktemp("served")
    port = _free_port()
    env = dict(os.environ, NAS_API_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "serve", "--port", str(port), "--results", str(results)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.stdout.read().decode()[-2000:]}")
    yield url, results
    proc.terminate()
    proc.wait(timeout=20)


def _auth():
    return {"Authorization": f"Bearer {TOKEN}"}


def _tiny_spec() -> dict:
    spec = yaml.safe_load(TINY_SPEC.read_text())
    spec["model"]["source"] = str((TINY_SPEC.parent / spec["model"]["source"]).resolve())
    spec["data"]["files"] = [str((TINY_SPEC.parent / f).resolve()) for f in spec["data"]["files"]]
    spec["hardware"]["profiles"] = [
        str((TINY_SPEC.parent / f).resolve()) for f in spec["hardware"]["profiles"]
    ]
    return spec


def test_no_token_is_401(server):
    url, _ = server
    assert requests.get(f"{url}/jobs", timeout=10).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert requests.get(f"{url}/jobs", headers=bad, timeout=10).status_code == 401
    assert requests.get(f"{url}/jobs", headers=_auth(), timeout=10).status_code == 200


def test_bad_spec_is_422_with_message(server):
    url, _ = server
    spec = _tiny_spec()
    spec["bld"]["colour"] = "red"
    r = requests.post(f"{url}/jobs", json={"spec": spec}, headers=_auth(), timeout=10)
    assert r.status_code == 422 and "unknown key 'bld.colour'" in r.json()["detail"]


@pytest.mark.parametrize("job_id", ["..%2F..%2Fetc", "a%2Fb", "..", "%2E%2E"])
def test_job_ids_with_path_characters_are_refused(server, job_id):
    url, _ = server
    r = requests.get(f"{url}/jobs/{job_id}", headers=_auth(), timeout=10)
    assert r.status_code in (400, 404)


def test_openapi_schema(server):
    url, _ = server
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "/jobs" in schema["paths"] and "/jobs/{job_id}/pareto" in schema["paths"]


def test_two_jobs_at_once_both_complete(server):
    url, results = server
    ids = []
    for name in ("svc-a", "svc-b"):
        r = requests.post(
            f"{url}/jobs", json={"spec": _tiny_spec(), "job_id": name}, headers=_auth(), timeout=10
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    deadline = time.monotonic() + 900
    states = {}
    while time.monotonic() < deadline:
        states = {
            j: requests.get(f"{url}/jobs/{j}", headers=_auth(), timeout=10).json() for j in ids
        }
        if all(s["process"].startswith("exited") for s in states.values()):
            break
        time.sleep(2)
    assert all(s["state"] == "finished" and s["process"] == "exited 0" for s in states.values()), (
        states
    )
    listed = {j["job_id"] for j in requests.get(f"{url}/jobs", headers=_auth(), timeout=10).json()}
    assert set(ids) <= listed


def test_refuses_public_host_without_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NAS_API_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli", "serve", "--host", "0.0.0.0", "--results", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "without a token" in out.stderr and "Traceback" not in out.stderr

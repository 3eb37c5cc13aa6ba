"""The HTTP service against a real server on loopback: jobs, cancel, exports, auth modes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import requests

from tests.conftest import ROOT
from tests.service_helpers import auth, start_server, stop_server, tiny_spec, wait_for


def test_two_jobs_at_once_both_complete(served_jobs):
    url, results, states = served_jobs
    assert all(s["state"] == "finished" for s in states.values()), states
    for job_id, status in states.items():
        assert set(status["stages_done"]) >= {"baseline", "bld", "selection", "students"}
        assert status["stage_seconds"]["bld"] > 0
        assert not list((results / job_id / "bld").glob("parent/*.pt"))  # no pickles
    listed = {j["job_id"] for j in requests.get(f"{url}/jobs", headers=auth(), timeout=10).json()}
    assert set(states) <= listed


def test_no_token_is_401(served_jobs):
    url, _, _ = served_jobs
    assert requests.get(f"{url}/jobs", timeout=10).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert requests.get(f"{url}/jobs", headers=bad, timeout=10).status_code == 401
    assert requests.get(f"{url}/jobs", headers=auth(), timeout=10).status_code == 200


def test_bad_spec_is_422_with_message(served_jobs):
    url, _, _ = served_jobs
    spec = tiny_spec()
    spec["bld"]["colour"] = "red"
    r = requests.post(f"{url}/jobs", json={"spec": spec}, headers=auth(), timeout=10)
    assert r.status_code == 422 and r.json()["detail"] == "spec: unknown key 'bld.colour'"


@pytest.mark.parametrize("job_id", ["..%2F..%2Fetc", "a%2Fb", "..", "%2E%2E", "nl%0A"])
def test_job_ids_with_path_characters_are_refused(served_jobs, job_id):
    url, _, _ = served_jobs
    r = requests.get(f"{url}/jobs/{job_id}", headers=auth(), timeout=10)
    assert r.status_code in (400, 404)


def test_openapi_schema_declares_every_error(served_jobs):
    url, _, _ = served_jobs
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    post = schema["paths"]["/jobs"]["post"]
    assert {"202", "400", "401", "403", "409", "413", "422", "429"} <= set(post["responses"])
    problem = schema["components"]["schemas"]["Problem"]
    assert problem["properties"]["detail"]["type"] == "string"
    assert "delete" in schema["paths"]["/jobs/{job_id}"]


def test_export_runs_in_the_background_into_the_job_folder(served_jobs):
    """POST .../exports queues the export; its status ends ``finished``; the archive holds the
    student; a second POST of the same export is 409; nothing is written outside the job."""
    url, results, states = served_jobs
    front = requests.get(f"{url}/jobs/svc-a/pareto", headers=auth(), timeout=30).json()
    point = front[0]["point_id"]
    body = {"point": point, "format": "hf"}
    r = requests.post(f"{url}/jobs/svc-a/exports", json=body, headers=auth(), timeout=30)
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running"), r.text
    status_url = f"{url}/jobs/svc-a/exports/{point}/hf"

    def ended():
        status = requests.get(status_url, headers=auth(), timeout=30).json()
        return status if status["state"] in ("finished", "failed") else None

    status = wait_for(ended, 300, "the export")
    assert status["state"] == "finished" and "student.json" in status["files"], status
    archive = requests.get(f"{status_url}/archive", headers=auth(), timeout=60)
    assert archive.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert f"{point}-hf/student.json" in names
    assert (results / "svc-a" / "exports" / point / "hf" / "student.json").is_file()
    again = requests.post(f"{url}/jobs/svc-a/exports", json=body, headers=auth(), timeout=30)
    assert again.status_code == 409


def test_delete_cancels_a_running_job(served_jobs):
    url, results, _ = served_jobs
    r = requests.post(
        f"{url}/jobs",
        json={"spec": tiny_spec(), "job_id": "svc-cancel"},
        headers=auth(),
        timeout=30,
    )
    assert r.status_code == 202, r.text
    driver = results / "svc-cancel" / "driver.json"
    wait_for(driver.is_file, 120, "the job's driver to start", poll=0.2)
    pid = json.loads(driver.read_text())["pid"]
    r = requests.delete(f"{url}/jobs/svc-cancel", headers=auth(), timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the driver is gone
    assert requests.get(f"{url}/jobs/svc-cancel", headers=auth(), timeout=10).status_code == 404
    kept = list((results / ".cancelled").glob("svc-cancel-*/manifest.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["state"] == "cancelled"


def _serve(tmp_path, *args, token_env: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "NAS_API_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", "serve", "--results", str(tmp_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_refuses_to_serve_without_a_token(tmp_path):
    for args in (
        ["--host", "0.0.0.0"],
        ["--host", "127.0.0.1"],
        ["--no-auth", "--host", "0.0.0.0"],
    ):
        out = _serve(tmp_path, *args)
        assert out.returncode == 2 and "without a token" in out.stderr, args
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_no_auth_is_loopback_only_and_checks_the_host(tmp_path):
    proc, url = start_server(tmp_path, "--no-auth", token=None)
    try:
        assert requests.get(f"{url}/jobs", timeout=10).status_code == 200
        rebound = requests.get(f"{url}/jobs", headers={"Host": "evil.example"}, timeout=10)
        assert rebound.status_code == 400 and "Host" in rebound.json()["detail"]
        schema = requests.get(f"{url}/openapi.json", timeout=10).json()
        assert "security" not in schema["paths"]["/jobs"]["get"]
    finally:
        stop_server(proc)

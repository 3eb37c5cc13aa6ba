"""Results on object storage: a real S3-compatible server (moto's, in this process) and a
two-node Ray cluster whose nodes share no folder with the job.

The server is moto's ``ThreadedMotoServer``: a real HTTP S3 endpoint that the driver, both
Ray nodes and the CLI reach over the network like any S3 service, started and stopped by the
fixture in this process (no stray process, no port left behind, no container runtime needed).
The job's results root is ``s3://``; the driver works in its own temporary mirror; each node's
tasks fetch what they read into the node's own cache folder (``NAS_FETCH_CACHE``) and are given
URIs only (each library record names where its activations came from).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, need_shared_data
from tests.ray_cluster import LocalCluster, clean_env, free_port
from tests.test_fault_tolerance import _trimmed_spec

BUCKET = "nas-test"
RESULTS = f"s3://{BUCKET}/results"
VARIANTS = 35  # the trimmed tiny space: 5 layers x 7 trainable variants


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server, a bucket, a two-node cluster and the environment of a client."""
    need_shared_data()
    pytest.importorskip("s3fs", reason="s3:// results need pip install 'nas-llm[s3]'")
    server_module = pytest.importorskip("moto.server", reason="needs moto[server]")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    client = boto3.client("s3", **_boto_args(aws))
    client.create_bucket(Bucket=BUCKET)
    base = tmp_path_factory.mktemp("nodes")
    folders = {name: base / name for name in ("head", "worker", "driver")}
    for folder in folders.values():
        folder.mkdir()
    # the code reaches both nodes as an installed package would (not through a shared folder
    # of results); the tasks' inputs come from the S3 server only
    code = {"PYTHONPATH": str(ROOT)}
    cluster = LocalCluster(
        env={**aws, **code, "NAS_FETCH_CACHE": str(folders["head"] / "fetch")},
        worker_env={"NAS_FETCH_CACHE": str(folders["worker"] / "fetch")},
        worker_cwd=folders["worker"],
    )
    env = {
        **clean_env(),
        **aws,
        "RAY_ADDRESS": f"127.0.0.1:{cluster.gcs_port}",
        "TMPDIR": str(folders["driver"]),
    }
    try:
        yield {"cluster": cluster, "client": client, "env": env, "folders": folders, "tmp": base}
    finally:
        cluster.stop()
        server.stop()


def _boto_args(aws: dict) -> dict:
    return {
        "endpoint_url": aws["AWS_ENDPOINT_URL"],
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
        "region_name": aws["AWS_DEFAULT_REGION"],
    }


def _nas(s3, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=s3["folders"]["driver"],
        timeout=timeout,
        env=s3["env"],
    )


def _objects(s3, job: str) -> dict[str, bytes]:
    """``{key under the job: body}`` of the JSON objects of a job on the server."""
    client, out = s3["client"], {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"results/{job}/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"].removeprefix(f"results/{job}/")
            if key.endswith(".json"):
                out[key] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return out


def _check_library(s3, job: str) -> list[dict]:
    objects = _objects(s3, job)
    records = [json.loads(v) for k, v in objects.items() if k.startswith("library/")]
    assert len(records) == VARIANTS
    # the tasks were handed URIs, never a folder of the head's
    assert {r["activations_from"] for r in records} == {f"{RESULTS}/{job}/activations/train"}
    return records


def test_tiny_job_on_s3_and_a_two_node_cluster(s3):
    spec = _trimmed_spec(s3["tmp"])
    out = _nas(s3, "run", spec, "--job-id", "s3job", "--results", RESULTS)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{RESULTS}/s3job" in out.stdout
    objects = _objects(s3, "s3job")
    manifest = json.loads(objects["manifest.json"])
    assert manifest["state"] == "finished" and "students" in manifest["stages_done"]
    _check_library(s3, "s3job")
    # both nodes ran tasks, each reading from the store into its own cache
    for node in ("head", "worker"):
        fetched = list((s3["folders"][node] / "fetch").rglob("*.npy"))
        assert fetched, f"the {node} node fetched nothing"
    assert not (s3["folders"]["driver"] / "results").exists()  # nothing went to a local folder
    front = _nas(s3, "pareto", f"{RESULTS}/s3job", "--format", "json")
    assert front.returncode == 0, front.stderr
    points = json.loads(front.stdout)
    assert len(points) >= 5 and all(p["strategy"] for p in points)
    listed = _nas(s3, "jobs", "--results", RESULTS)
    assert listed.returncode == 0 and "s3job" in listed.stdout and "finished" in listed.stdout
    again = _nas(s3, "resume", f"{RESULTS}/s3job")  # a finished job is left as it is
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stderr
    assert json.loads(_objects(s3, "s3job")["manifest.json"]) == manifest


def test_missing_job_on_s3_is_one_line(s3):
    out = _nas(s3, "pareto", f"{RESULTS}/no-such-job")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no job no-such-job" in out.stderr


@pytest.mark.slow
def test_killed_worker_node_mid_bld_still_completes(s3):
    """The worker node's raylet (and its task workers) die while BLD tasks run there: Ray
    retries them on the head, the BLD stage completes, and ``nas resume`` of the s3:// job
    finishes it. Runs last: the module's cluster has one node afterwards."""
    spec = _trimmed_spec(s3["tmp"])
    run = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "run", spec, "--job-id", "s3kill"]
        + ["--results", RESULTS, "--until", "bld"],
        cwd=s3["folders"]["driver"],
        env=s3["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    node = s3["cluster"].worker_node
    killed = False
    deadline = time.monotonic() + 600
    try:
        while not killed and time.monotonic() < deadline and run.poll() is None:
            tree = _descendants(node.pid)
            if any(_is_bld_task(p) for p in tree):  # the raylet and everything it runs
                for proc in [*tree, psutil.Process(node.pid)]:
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(signal.SIGKILL)
                killed = True
            time.sleep(0.1)
        out, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert killed, "never saw a BLD task on the worker node"
    assert run.returncode == 0, out.decode()[-3000:]
    assert "bld" in json.loads(_objects(s3, "s3kill")["manifest.json"])["stages_done"]
    _check_library(s3, "s3kill")
    done = _nas(s3, "resume", f"{RESULTS}/s3kill")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads(_objects(s3, "s3kill")["manifest.json"])["state"] == "finished"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _is_bld_task(proc: psutil.Process) -> bool:
    try:
        return (proc.cmdline() or [""])[0].startswith("ray::_train_one")
    except psutil.Error:
        return False

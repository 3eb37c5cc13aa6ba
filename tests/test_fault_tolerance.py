"""A lost Ray worker during BLD: the task is retried and the library still completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import yaml

from nas.layout import JobLayout
from tests.conftest import ROOT, TINY_SPEC, need_shared_data


def _trimmed_spec(tmp_path) -> str:
    spec = yaml.safe_load(TINY_SPEC.read_text())
    spec["model"]["source"] = str((TINY_SPEC.parent / spec["model"]["source"]).resolve())
    spec["data"]["files"] = [str((TINY_SPEC.parent / f).resolve()) for f in spec["data"]["files"]]
    spec["hardware"]["profiles"] = [
        str((TINY_SPEC.parent / f).resolve()) for f in spec["hardware"]["profiles"]
    ]
    spec["data"].update(train_tokens=16384, eval_tokens=4096)
    spec["bld"].update(tokens=8192, batch_size=8)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _bld_workers(driver_pid: int) -> list[psutil.Process]:
    """Ray worker processes of this driver's local Ray that are running a BLD task now."""
    found = []
    try:
        tree = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for proc in tree:
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith("ray::_train_one"):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_killed_ray_worker_during_bld_is_retried(tmp_path):
    need_shared_data()
    results = tmp_path / "results"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "run",
            _trimmed_spec(tmp_path),
            "--job-id",
            "lost",
            "--results",
            str(results),
            "--until",
            "bld",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    killed = None
    deadline = time.monotonic() + 300
    try:
        while killed is None and time.monotonic() < deadline and run.poll() is None:
            workers = _bld_workers(run.pid)
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        out, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert killed is not None, "never saw a BLD task running to kill"
    assert run.returncode == 0, out.decode()[-3000:]
    manifest = JobLayout(results / "lost").manifest()
    assert "bld" in manifest["stages_done"]
    library = results / "lost" / "library"
    records = list(library.glob("L*.json"))
    assert len(records) == 35  # 5 layers x (2 KV-head + linear attention, 3 widths + linear FFN)
    assert all(p.with_suffix(".safetensors").is_file() for p in records)


def _measured_where(model) -> dict:
    return {
        "median_ms": 1.0,
        "pid": os.getpid(),
        "params": sum(p.numel() for p in model.parameters()),
    }


def test_latency_measurement_is_pinned_to_the_named_resource(stories_parent):
    """``ray.latency_resource`` sends whole-student latency measurement to the nodes that
    advertise it (here a local Ray started with that custom resource)."""
    import ray

    from nas.spec import parse_spec
    from nas.students_stage import _pinned

    ray.init(num_cpus=1, resources={"hw:test": 1}, include_dashboard=False, log_to_driver=False)
    try:
        spec = parse_spec({"ray": {"latency_resource": "hw:test"}})
        result = _pinned(_measured_where, spec)(stories_parent.adapter)
        assert result["pid"] != os.getpid()  # ran in a Ray worker, not in the driver
        assert result["params"] == sum(p.numel() for p in stories_parent.adapter.parameters())
    finally:
        ray.shutdown()

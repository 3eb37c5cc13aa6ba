"""Shared fixtures: real models and text from ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT.parent / "shared" / "data").resolve()
STORIES = DATA / "models" / "stories260K"
TINYSTORIES = DATA / "text" / "tinystories_val_1000.txt"
TINY_SPEC = ROOT / "search_spaces" / "tiny.yaml"
QUICKSTART_SPEC = ROOT / "search_spaces" / "quickstart.yaml"

# keep tests on the machine's cores and quiet
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests use tiny models: one intra-op thread is much faster than two on a busy 2-core
    machine (latency measurements set their own onnxruntime threads). Without torch (the pure
    selection tests run without it) there is nothing to set."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_running():
    """Stages keep an in-process Ray up for the next stage; each test module starts clean."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def need_shared_data() -> None:
    if not STORIES.exists() or not TINYSTORIES.exists():
        pytest.skip(f"shared data not found at {DATA} (tests read ../shared/data)")


@pytest.fixture(scope="session")
def stories_parent():
    need_shared_data()
    from compress.loading import load_parent

    return load_parent(STORIES)


@pytest.fixture(scope="session")
def tiny_splits(stories_parent):
    from compress.data import text_calibration

    return text_calibration(stories_parent.tokenizer, [TINYSTORIES], 128, 32768, 8192, seed=0)


@pytest.fixture(scope="session")
def served_jobs(tmp_path_factory):
    """A real ``nas serve`` (two jobs at a time) that ran two tiny jobs, ``svc-a`` and
    ``svc-b``, to their end: yields (base URL, results folder, {job id: last status})."""
    need_shared_data()
    import requests

    from tests.service_helpers import auth, start_server, stop_server, tiny_spec, wait_for

    results = tmp_path_factory.mktemp("served")
    proc, url = start_server(results, "--max-running", "2")
    try:
        ids = ["svc-a", "svc-b"]
        for job_id in ids:
            body = {"spec": tiny_spec(), "job_id": job_id}
            r = requests.post(f"{url}/jobs", json=body, headers=auth(), timeout=30)
            assert r.status_code == 202, r.text

        def ended():
            states = {
                j: requests.get(f"{url}/jobs/{j}", headers=auth(), timeout=30).json() for j in ids
            }
            busy = [s for s in states.values() if s["state"] in ("queued", "running")]
            return states if not busy else None

        states = wait_for(ended, 900, "the two served jobs to end", poll=2.0)
        yield url, results, states
    finally:
        stop_server(proc)

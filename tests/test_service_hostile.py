"""Hostile or broken input against a real ``nas serve`` and the CLI (issue 14).

One paused server (``--max-running 0``: jobs are queued, none starts) over a results folder
that holds copies of two finished jobs and three damaged ones. The table below sends each
hostile request or command and checks its status (or exit code) and its one-line message;
then eight concurrent POSTs of one id, then schemathesis with every check over every endpoint.
The last test checks that nothing outside the results folder and the allowed roots was opened,
read or written (inotify on a folder of canaries), and that the finished jobs kept their bytes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from nas.layout import JobLayout
from tests.conftest import ROOT
from tests.service_helpers import (
    TOKEN,
    InotifyWatch,
    auth,
    snapshot,
    start_server,
    stop_server,
    tiny_spec,
)

FINISHED = ("svc-a", "svc-b")


@pytest.fixture(scope="module")
def env(served_jobs, tmp_path_factory):
    """(url, results, canary folder, data root, watch, {finished job: snapshot})."""
    _, served, states = served_jobs
    assert all(states[j]["state"] == "finished" for j in FINISHED), states
    base = tmp_path_factory.mktemp("hostile")
    results, outside, root = base / "results", base / "outside", base / "dataroot"
    for folder in (results, outside, outside / "model", root):
        folder.mkdir()
    (outside / "secret.txt").write_text("not for clients\n")
    (outside / "model" / "config.json").write_text("{}\n")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    for job in FINISHED:
        shutil.copytree(served / job, results / job)
    _damage(results)
    before = {job: snapshot(results / job) for job in FINISHED}
    watch = InotifyWatch([outside, outside / "model"])
    proc, url = start_server(
        results,
        "--max-running", "0",
        "--max-queued", "64",
        "--data-root", str(root),
        "--allow-host", "127.0.0.1",
    )  # fmt: skip
    try:
        yield {
            "url": url, "results": results, "outside": outside, "root": root,
            "watch": watch, "before": before,
        }  # fmt: skip
    finally:
        stop_server(proc)
        watch.close()


def _damage(results: Path) -> None:
    """Three damaged copies of svc-b: truncated manifest, truncated front, invalid spec."""
    for name in ("bad-manifest", "bad-front", "bad-spec"):
        shutil.copytree(results / "svc-b", results / name)
        manifest = JobLayout(results / name).manifest()
        manifest["job_id"] = name
        JobLayout(results / name).manifest_path.write_text(json.dumps(manifest))
    text = JobLayout(results / "bad-manifest").manifest_path.read_text()
    JobLayout(results / "bad-manifest").manifest_path.write_text(text[: len(text) // 2])
    front = JobLayout(results / "bad-front").front
    front.write_text(front.read_text()[:100])
    manifest = JobLayout(results / "bad-spec").manifest()
    manifest["spec"]["bld"]["tokens"] = "lots"
    JobLayout(results / "bad-spec").manifest_path.write_text(json.dumps(manifest))


def _spec(**sections) -> dict:
    spec = tiny_spec()
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        spec[section] = {**spec.get(section, {}), key: value}
    return spec


def _nested(depth: int):
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _raw_post(url: str, body: bytes, chunked: bool = False) -> tuple[int, bytes]:
    """A POST /jobs written on the socket (a chunked body has no Content-Length)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
    head += "Content-Type: application/json\r\nConnection: close\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        if chunked:
            sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
            try:
                for start in range(0, len(body), 65536):
                    chunk = body[start : start + 65536]
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            sock.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode())
            try:
                for start in range(0, len(body), 65536):
                    sock.sendall(body[start : start + 65536])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered without reading the rest: what a limit should do
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[-1]


def _http(e, method: str, path: str, **kw) -> tuple[int, str]:
    headers = kw.pop("headers", auth())
    r = requests.request(method, e["url"] + path, headers=headers, timeout=120, **kw)
    return r.status_code, r.text


def _post_spec(e, spec, job_id=None) -> tuple[int, str]:
    body = {"spec": spec} if job_id is None else {"spec": spec, "job_id": job_id}
    return _http(e, "POST", "/jobs", json=body)


def _nas(e, *args) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return out.returncode, out.stderr if out.returncode else out.stdout


def _point(e) -> str:
    return json.loads((JobLayout(e["results"] / "svc-a").front).read_text())[0]["point_id"]


def _same_message_for_missing_and_existing(e) -> tuple[int, str]:
    """An outside path that exists and one that does not: the same 403 message."""
    details = []
    for name in ("secret.txt", "absent.txt"):
        path = str(e["outside"] / name)
        status, text = _post_spec(e, _spec(data__files=[path]))
        assert status == 403, text
        details.append(json.loads(text)["detail"].replace(repr(path), "PATH"))
    assert details[0] == details[1], details
    return 403, details[0]


# (case id, call, expected status or exit code, text the one-line message must contain)
CASES = [
    # --- server paths named by a remote spec -------------------------------------------------
    ("files-etc-passwd", lambda e: _post_spec(e, _spec(data__files=["/etc/passwd"])), 403, "not a file this server lets clients use"),
    ("files-outside-exists-vs-missing", _same_message_for_missing_and_existing, 403, "not a file this server"),
    ("model-source-outside-folder", lambda e: _post_spec(e, _spec(model__source=str(e["outside"] / "model"))), 403, "'model.source'"),
    ("model-source-missing", lambda e: _post_spec(e, _spec(model__source="/root/.nope")), 403, "'model.source'"),
    ("profile-outside", lambda e: _post_spec(e, _spec(hardware__profiles=[str(e["outside"] / "secret.txt")])), 403, "'hardware.profiles'"),
    ("relative-path-escapes-root", lambda e: _post_spec(e, _spec(data__files=["../outside/secret.txt"])), 403, "'data.sources.0.files'"),
    ("symlink-in-root-leads-out", lambda e: _post_spec(e, _spec(data__files=[str(e["root"] / "escape.txt")])), 403, "'data.sources.0.files'"),
    ("nul-byte-in-path", lambda e: _post_spec(e, _spec(data__files=["/etc/passwd\0.txt"])), 403, "'data.sources.0.files'"),
    ("ray-address", lambda e: _post_spec(e, _spec(ray__address="10.0.0.1:6379")), 422, "'ray.address' cannot be set over HTTP"),
    ("ray-storage", lambda e: _post_spec(e, _spec(ray__storage=str(e["outside"]))), 422, "'ray.storage' cannot be set over HTTP"),
    ("ray-num-cpus-huge", lambda e: _post_spec(e, _spec(ray__num_cpus=10**6)), 422, "'ray.num_cpus'"),
    ("export-to-client-path", lambda e: _http(e, "POST", "/jobs/svc-a/exports", json={"point": _point(e), "format": "hf", "out": str(e["outside"] / "exported")}), 422, "unknown key 'out'"),
    # --- ids ---------------------------------------------------------------------------------
    ("job-id-trailing-newline", lambda e: _post_spec(e, tiny_spec(), "nl\n"), 422, "'job_id'"),
    ("job-id-traversal", lambda e: _post_spec(e, tiny_spec(), "../x"), 422, "'job_id'"),
    ("get-id-trailing-newline", lambda e: _http(e, "GET", "/jobs/nl%0A"), 400, "job_id"),
    ("duplicate-of-finished-job", lambda e: _post_spec(e, tiny_spec(), "svc-a"), 409, "already exists"),
    ("export-point-traversal", lambda e: _http(e, "GET", "/jobs/svc-a/exports/..%2F..%2Fetc/hf"), 404, ""),
    ("export-unknown-point", lambda e: _http(e, "POST", "/jobs/svc-a/exports", json={"point": "pnope", "format": "hf"}), 404, "has no point 'pnope'"),
    ("export-unknown-format", lambda e: _http(e, "POST", "/jobs/svc-a/exports", json={"point": _point(e), "format": "exe"}), 422, "'format'"),
    # --- auth and hosts ----------------------------------------------------------------------
    ("no-token", lambda e: _http(e, "GET", "/jobs", headers={}), 401, "bearer token"),
    ("non-ascii-token", lambda e: _http(e, "GET", "/jobs", headers={"Authorization": "Bearer t\xe9st"}), 401, "bearer token"),
    ("foreign-host-header", lambda e: _http(e, "GET", "/health", headers={"Host": "rebind.example:80"}), 400, "Host"),
    # --- size, depth, shape ------------------------------------------------------------------
    ("body-1.1MB", lambda e: _raw_post(e["url"], b'{"spec": "' + b"a" * 1_100_000 + b'"}'), 413, "over 256 KiB"),
    ("body-50MB-list-not-echoed", lambda e: _raw_post(e["url"], b"[" + b"1," * 25_000_000 + b"1]"), 413, "over 256 KiB"),
    ("chunked-body-too-large", lambda e: _raw_post(e["url"], b"[" + b"1," * 300_000 + b"1]", chunked=True), 413, "over 256 KiB"),
    ("json-100k-deep", lambda e: _raw_post(e["url"], b"[" * 100_000 + b"]" * 100_000), 422, "body"),
    ("spec-nested-20-deep", lambda e: _post_spec(e, _spec(space__attention=_nested(20))), 422, "nested deeper"),
    ("spec-as-yaml-text", lambda e: _post_spec(e, "name: x\nmodel: {source: /etc/passwd}\n"), 422, "spec"),
    ("body-not-json", lambda e: _raw_post(e["url"], b"{spec: ]"), 422, "not valid JSON"),
    ("body-a-list", lambda e: _raw_post(e["url"], b"[1, 2]"), 422, "JSON object"),
    ("unknown-top-level-key", lambda e: _post_spec(e, {**tiny_spec(), "shell": "rm -rf /"}), 422, "unknown key 'shell'"),
    ("bad-query-number", lambda e: _http(e, "GET", "/jobs/svc-a/pareto?max_latency_ms=abc"), 422, "max_latency_ms"),
    # --- methods -----------------------------------------------------------------------------
    ("options-lists-every-method", lambda e: (lambda r: (r.status_code, r.headers.get("allow", "")))(requests.options(e["url"] + "/jobs", headers=auth(), timeout=10)), 204, "GET, OPTIONS, POST"),
    ("put-is-405-with-allow", lambda e: (lambda r: (r.status_code, r.headers.get("allow", "")))(requests.put(e["url"] + "/jobs", headers=auth(), timeout=10)), 405, "GET"),
    # --- job states and damaged records ------------------------------------------------------
    ("delete-finished-job", lambda e: _http(e, "DELETE", "/jobs/svc-a"), 409, "only jobs this service queued or runs"),
    ("status-truncated-manifest", lambda e: _http(e, "GET", "/jobs/bad-manifest"), 409, "truncated or corrupt"),
    ("pareto-truncated-front", lambda e: _http(e, "GET", "/jobs/bad-front/pareto"), 409, "truncated or corrupt"),
    ("export-truncated-front", lambda e: _http(e, "POST", "/jobs/bad-front/exports", json={"point": "p1", "format": "hf"}), 409, "truncated or corrupt"),
    ("list-shows-corrupt-job", lambda e: (lambda s, t: (s, str([j["state"] for j in json.loads(t) if j["job_id"] == "bad-manifest"])))(*_http(e, "GET", "/jobs")), 200, "['corrupt']"),
    # --- the CLI on the same damaged records: exit 2, one line -------------------------------
    ("cli-status-truncated-manifest", lambda e: _nas(e, "status", "bad-manifest", "--results", str(e["results"])), 2, "truncated or corrupt"),
    ("cli-pareto-truncated-front", lambda e: _nas(e, "pareto", "bad-front", "--results", str(e["results"])), 2, "truncated or corrupt"),
    ("cli-resume-truncated-manifest", lambda e: _nas(e, "resume", "bad-manifest", "--results", str(e["results"])), 2, "truncated or corrupt"),
    ("cli-resume-invalid-spec", lambda e: _nas(e, "resume", "bad-spec", "--results", str(e["results"])), 2, "no valid spec"),
    ("cli-jobs-lists-corrupt", lambda e: _nas(e, "jobs", "--results", str(e["results"])), 0, "corrupt"),
    ("cli-export-onto-a-file", lambda e: _nas(e, "export", "svc-a", "--point", _point(e), "--format", "hf", "--out", str(e["root"] / "escape.txt"), "--results", str(e["results"])), 2, "not a folder"),
    ("cli-resume-finished-job", lambda e: _nas(e, "resume", "svc-a", "--results", str(e["results"])), 0, "nothing to run"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(env, case):
    _, call, expected, text = case
    status, message = call(env)
    if isinstance(message, bytes):
        message = message.decode(errors="replace")
    assert status == expected, message[:500]
    assert text in message, message[:500]
    assert "Traceback" not in message
    if expected != 0:
        assert len(message) < 2000  # an error never echoes the request back
    if expected == 2:  # the CLI: one line on stderr
        assert len(message.strip().splitlines()) == 1, message


def test_eight_concurrent_posts_of_one_id(env):
    """Exactly one 202, seven 409, one folder."""
    url, statuses = env["url"], []
    barrier = threading.Barrier(8)

    def post():
        barrier.wait()
        body = {"spec": tiny_spec(), "job_id": "race"}
        statuses.append(requests.post(f"{url}/jobs", json=body, headers=auth(), timeout=60))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in statuses)
    assert codes == [202] + [409] * 7, [r.text for r in statuses]
    assert [p.name for p in env["results"].glob("race*")] == ["race"]
    assert requests.get(f"{url}/jobs/race", headers=auth(), timeout=10).json()["state"] == "queued"
    assert requests.delete(f"{url}/jobs/race", headers=auth(), timeout=60).status_code == 200


def _create(args: tuple[str, float]) -> str:
    import time

    from nas.errors import JobBusy
    from nas.store import JobStore

    root, start = args
    time.sleep(max(0.0, start - time.time()))  # all eight try at the same moment
    try:
        JobStore.create(root, "raced", {"name": "raced"}, None)
        return "created"
    except JobBusy:
        return "busy"


def test_job_creation_is_exclusive_across_processes(tmp_path):
    """The store itself (what the CLI and the service share): eight processes create one id."""
    import multiprocessing
    import time

    with multiprocessing.get_context("spawn").Pool(8) as pool:
        start = time.time() + 5.0
        outcomes = sorted(pool.map(_create, [(str(tmp_path), start)] * 8, chunksize=1))
    assert outcomes == ["busy"] * 7 + ["created"]
    assert [p.name for p in tmp_path.iterdir()] == ["raced"]


def _schemathesis(env, config: str) -> subprocess.CompletedProcess:
    path = env["results"].parent / "schemathesis.toml"
    path.write_text(config)
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(path), "--no-color",
            "run", f"{env['url']}/openapi.json", "--checks", "all",
            "-H", f"Authorization: Bearer {TOKEN}",
            "--max-examples", "25", "--workers", "1", "--seed", "14",
        ],
        cwd=env["results"].parent, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize("pinned", [False, True], ids=["drawn-ids", "finished-job"])
def test_schemathesis_all_checks(env, pinned):
    """Schemathesis 4 with every check (default settings) over every endpoint, in all its
    phases (examples, coverage, fuzzing, stateful). POST /jobs included: the jobs it makes stay
    queued on this paused server and are cancelled below. The second run pins the path's
    job id and point to a finished job, so the Pareto and export endpoints answer with data."""
    config = ""
    if pinned:
        config = f'[parameters]\n"path.job_id" = "svc-a"\n"path.point" = "{_point(env)}"\n'
    out = _schemathesis(env, config)
    try:
        summary = out.stdout.split("SUMMARY")[-1]
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
        assert " passed" in summary and "failed" not in summary and "Failures" not in summary
    finally:
        url = env["url"]
        for job in requests.get(f"{url}/jobs", headers=auth(), timeout=30).json():
            if job["state"] == "queued":
                r = requests.delete(f"{url}/jobs/{job['job_id']}", headers=auth(), timeout=60)
                assert r.status_code == 200, r.text


def test_nothing_outside_was_touched_and_finished_jobs_kept_their_bytes(env):
    events = env["watch"].events()
    assert not events, events[:10]
    assert not (env["outside"] / "exported").exists()
    assert sorted(p.name for p in env["outside"].iterdir()) == ["model", "secret.txt"]
    for job, files in env["before"].items():
        assert snapshot(env["results"] / job) == files, job
    jobs = requests.get(f"{env['url']}/jobs", headers=auth(), timeout=30).json()
    assert not [j for j in jobs if j["state"] in ("queued", "running")]

"""Helpers for the HTTP service tests: a real ``nas serve`` on loopback, the tiny spec as JSON,
and an inotify watch that sees any open, read or write of files in a folder."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from tests.conftest import DATA, ROOT, TINY_SPEC

TOKEN = "test-token-123"
HWPROFILES = ROOT / "hwprofiles"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def start_server(results: Path, *args: str, token: str | None = TOKEN):
    """``nas serve`` on 127.0.0.1 with ``results``, the shared data and hwprofiles as data
    roots, and ``args``; returns (process, base URL)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "NAS_API_TOKEN"}
    if token is not None:
        env["NAS_API_TOKEN"] = token
    cmd = [sys.executable, "-m", "nas.cli", "serve", "--port", str(port), "--results", str(results)]
    cmd += ["--data-root", str(DATA), "--data-root", str(HWPROFILES), *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not start: {proc.stdout.read().decode()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the service stops the jobs it runs), then SIGKILL of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def tiny_spec() -> dict:
    """tiny.yaml as the JSON a client sends: absolute paths under the server's data roots."""
    spec = yaml.safe_load(TINY_SPEC.read_text())
    base = TINY_SPEC.parent
    spec["model"]["source"] = str((base / spec["model"]["source"]).resolve())
    spec["data"]["files"] = [str((base / f).resolve()) for f in spec["data"]["files"]]
    spec["hardware"]["profiles"] = [str((base / f).resolve()) for f in spec["hardware"]["profiles"]]
    return spec


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# --- inotify ------------------------------------------------------------------------------------
IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
IN_OPEN, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x20, 0x80, 0x100, 0x200
WATCHED = IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_OPEN | IN_MOVED_TO | IN_CREATE
WATCHED |= IN_DELETE


class InotifyWatch:
    """Records every open/read/write/create/delete in the given folders (Linux inotify).

    ``stat`` and ``realpath`` are not events: a path checked by name only is not "touched"."""

    def __init__(self, folders: list[Path]):
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.names: dict[int, Path] = {}
        for folder in folders:
            wd = self._libc.inotify_add_watch(self.fd, str(folder).encode(), WATCHED)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder} failed")
            self.names[wd] = Path(folder)

    def events(self) -> list[tuple[str, int]]:
        """(path, mask) of every event since the last call."""
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                out.append((str(self.names.get(wd, Path("?")) / name), mask))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)

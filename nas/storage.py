"""Results on object storage: ``s3://``, ``gs://``, ``file://`` (any fsspec URL) instead of a folder.

A job whose results root is a URI is worked on in a local *mirror* (a private temporary
folder per process, so two processes never write one copy) and its files are copied to the
store (``Remote``): every object is written whole with one PUT, which object stores make
atomic per object, and ordered so that a record marking something complete lands after what
it marks: data files first, then other records, then ``stages/<stage>.json``, the manifest
last. Opening a job pulls what the command needs. Ray tasks get locations (a local path for a
local job, a URI otherwise): ``fetch`` makes the files a task reads local to its node (a cache
per node), ``publish`` sends what it wrote to the store. Nothing of a URI job goes through a
shared disk. ``s3://`` needs ``pip install 'nas-llm[s3]'`` (s3fs; endpoint and credentials
come from the usual AWS variables, e.g. ``AWS_ENDPOINT_URL`` for an S3-compatible server).
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from compress.atomic import atomic_write
from nas.errors import JobError

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
SKIP = ("driver.lock", ".created")  # local bookkeeping, meaningless on another machine


class StorageError(JobError):
    """The results URI cannot be used (unknown scheme, missing package, unreachable store)."""


def is_uri(location) -> bool:
    return isinstance(location, str) and "://" in location


def _filesystem(uri: str):
    import fsspec

    scheme = uri.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError:
        extra = EXTRAS.get(scheme, scheme)
        raise StorageError(
            f"results at {scheme}:// need an extra package: pip install 'nas-llm[{extra}]'"
        ) from None
    except ValueError as exc:
        raise StorageError(f"cannot use {uri}: {str(exc).splitlines()[0][:200]}") from None


def _order(rel: str) -> tuple[int, str]:
    """Upload order: data, then records, then stage records, the manifest last."""
    if rel == "manifest.json":
        return 3, rel
    if rel.startswith("stages/"):
        return 2, rel
    return (1 if rel.endswith(".json") else 0), rel


class Remote:
    """One folder of an object store, addressed by relative POSIX paths."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.fs, self.base = _filesystem(self.uri)
        self.base = self.base.rstrip("/")

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def url(self, rel: str) -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    def exists(self, rel: str) -> bool:
        return self._call(self.fs.exists, self._key(rel))

    def put(self, local: Path, rel: str) -> None:
        """Write one object whole (one PUT: readers see the old object or the new one)."""
        self._call(self.fs.put_file, str(local), self._key(rel))

    def get(self, rel: str, local: Path) -> None:
        """Copy one object to ``local`` (temp file + rename: a local file is complete)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(local, lambda tmp: self._call(self.fs.get_file, self._key(rel), str(tmp)))

    def sizes(self, rel: str = "") -> dict[str, int]:
        """``{relative path: bytes}`` of every object under ``rel``."""
        self.fs.invalidate_cache()
        root = self._key(rel)
        try:
            found = self._call(self.fs.find, root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for key, info in found.items():
            name = key[len(self.base) + 1 :] if key.startswith(self.base + "/") else key
            out[name] = int(info.get("size") or 0)
        return out

    def children(self) -> list[str]:
        """Names of the folders directly under this one."""
        self.fs.invalidate_cache()
        try:
            entries = self._call(self.fs.ls, self.base, detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )

    def read_text(self, rel: str) -> str:
        return self._call(self.fs.cat_file, self._key(rel)).decode("utf-8")

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self._call(self.fs.rm, self._key(rel), recursive=True)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, PermissionError) as exc:
            raise StorageError(f"{self.uri}: {str(exc).splitlines()[0][:200]}") from None


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def local_files(folder: Path) -> Iterable[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of the files under ``folder`` worth storing."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in SKIP and not path.name.endswith(".tmp"):
            yield path.relative_to(folder).as_posix(), path


def push_tree(folder: Path, remote: Remote, pushed: dict) -> int:
    """Upload the files of ``folder`` changed since ``pushed`` (``{relative path: (size,
    mtime)}``, updated) in ``_order``; returns how many went up."""
    return push_files(folder, remote, pushed, [rel for rel, _ in local_files(folder)])


def push_files(folder: Path, remote: Remote, pushed: dict, names: Iterable[str]) -> int:
    """Upload those of ``names`` (relative paths) that exist and changed, in ``_order``."""
    count = 0
    for rel in sorted(names, key=_order):
        path = folder / rel
        if not path.is_file():
            continue
        signature = _signature(path)
        if pushed.get(rel) != signature:
            remote.put(path, rel)
            pushed[rel] = signature
            count += 1
    return count


def pull_tree(remote: Remote, folder: Path, pushed: dict, keep: Callable[[str], bool]) -> int:
    """Download the objects whose relative path ``keep`` accepts into ``folder``; records
    their signatures in ``pushed`` (they need no upload). Returns how many came down."""
    count = 0
    for rel, size in sorted(remote.sizes().items(), key=lambda item: _order(item[0])):
        local = folder / rel
        if not keep(rel) or (local.is_file() and local.stat().st_size == size):
            continue
        remote.get(rel, local)
        pushed[rel] = _signature(folder / rel)
        count += 1
    return count


def mirror_dir(job_id: str) -> Path:
    """A private local working copy for one job in this process (removed at exit)."""
    folder = Path(tempfile.mkdtemp(prefix=f"nas-mirror-{job_id}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder / job_id


# --- the task side ---------------------------------------------------------------------------
def node_cache() -> Path:
    """Where tasks on this node keep what they fetched (``$NAS_FETCH_CACHE``, else the
    node's temp dir)."""
    return Path(os.environ.get("NAS_FETCH_CACHE") or Path(tempfile.gettempdir()) / "nas-fetch")


def fetch(location: str, names: Iterable[str] | None = None) -> Path:
    """A local folder holding ``location``'s files (all of them, or only ``names``).

    A local path is returned as it is. A URI is copied once per node into ``node_cache()``
    (keyed by the URI; a file lock makes concurrent tasks on a node share one copy); files
    already there are not fetched again.
    """
    if not is_uri(location):
        return Path(location)
    remote = Remote(location)
    folder = node_cache() / hashlib.sha1(remote.uri.encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = list(names) if names is not None else list(remote.sizes())
        for rel in wanted:
            if not (folder / rel).is_file():
                remote.get(rel, folder / rel)
    return folder


def local_stem(location: str) -> Path:
    """The local path of ``<location>.safetensors`` and ``<location>.json`` (a saved parent
    subblock), fetched to this node when ``location`` is a URI."""
    base, _, name = location.rpartition("/")
    return fetch(base, [f"{name}.safetensors", f"{name}.json"]) / name


def output_folder(location: str) -> Path:
    """Where a task writes files meant for ``location``: that folder when it is local, else
    a fresh temporary folder whose files ``publish`` sends to the store."""
    return Path(tempfile.mkdtemp(prefix="nas-out-")) if is_uri(location) else Path(location)


def publish(folder: Path, location: str, names: Iterable[str]) -> None:
    """Send the files ``names`` of ``folder`` (in that order) to ``location`` when it is a
    URI; a local location is where they were written already."""
    if is_uri(location):
        remote = Remote(location)
        for rel in names:
            remote.put(folder / rel, rel)

"""``nas clean``: free the disk a finished job no longer needs.

Removed: the parent's captured activations (``activations/``, BLD's inputs), the scoring
stage's activation cache (``scoring/cache``) and BLD's per-task parent subblocks
(``bld/parent``). Kept: everything a later ``nas export`` or query reads (manifest, stage
records, data splits, block library, scores, Pareto front, students and their exports).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from nas.errors import JobError
from nas.layout import INTERMEDIATES
from nas.store import JobStore


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, a hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed meanwhile
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def clean_job(store: JobStore) -> dict:
    """Delete the intermediates of a finished job; returns ``removed`` (relative folders),
    ``bytes_before``, ``bytes_after`` and ``bytes_freed``, also kept in the manifest
    (``cleaned``). Raises ``JobError`` unless the job's state is ``finished``."""
    state = store.manifest().get("state")
    if state != "finished":
        raise JobError(
            f"job {store.job_id} is {state}, not finished: its intermediates are still needed "
            f"(finish it with `nas resume {store.job_id}` first)"
        )

    def size() -> int:
        remote = store.remote
        return folder_bytes(store.dir) if remote is None else sum(remote.sizes().values())

    before = size()
    removed = []
    for parts in INTERMEDIATES:
        path, rel = store.path(*parts), "/".join(parts)
        if path.exists() or (store.remote is not None and store.remote.exists(rel)):
            shutil.rmtree(path, ignore_errors=True)
            if store.remote is not None:
                store.remote.remove(rel)
            removed.append(rel)
    after = size()
    record = {"removed": removed, "bytes_before": before, "bytes_after": after}
    record["bytes_freed"] = before - after
    store.update_manifest(cleaned={**record, "at": time.time()})
    return record

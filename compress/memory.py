"""Keeping a memory-mapped parent's weights out of a process's resident memory between uses.

A parent whose safetensors file holds the run dtype is memory-mapped (``compress.loading``):
its pages are read from the file when a layer first runs and then stay resident in every
process that touched them. ``release_file_pages(folder)`` hands those pages back (Linux
``madvise(MADV_DONTNEED)`` on the mappings of files under ``folder``); the next use reads them
again from the page cache or disk. Only for mappings whose content equals the file (a
parent's weights, never edited in place): a page written since the mapping was made would be
reset to the file's bytes. A no-op where ``/proc/self/maps`` or ``madvise`` is unavailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

_MADV_DONTNEED = 4


def mapped_ranges(folder: str | os.PathLike) -> list[tuple[int, int, str]]:
    """(start, stop, path) of this process's mappings of files under ``folder``."""
    root = os.path.realpath(folder)
    out = []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith(root + os.sep):
            continue
        start, stop = (int(v, 16) for v in parts[0].split("-"))
        out.append((start, stop, parts[5]))
    return out


def resident_bytes(folder: str | os.PathLike) -> int:
    """Resident bytes of this process's mappings of files under ``folder`` (``/proc/self/smaps``)."""
    root = os.path.realpath(folder) + os.sep
    total, inside = 0, False
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5].startswith(root)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def release_file_pages(folder: str | os.PathLike | None) -> int:
    """Drop this process's resident pages of files mapped from under ``folder``; returns the
    bytes of mappings advised (0 when nothing is mapped or ``folder`` is None)."""
    if folder is None:
        return 0
    ranges = mapped_ranges(folder)
    if not ranges:
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    done = 0
    for start, stop, _ in ranges:
        if libc.madvise(start, stop - start, _MADV_DONTNEED) == 0:
            done += stop - start
    return done

"""The specs (``search_spaces/*.yaml``) and measured profiles (``hwprofiles/*.json``) the project
ships, wherever it is installed.

In a checkout (or an editable install) they are the repository's own folders; a built wheel
carries copies under ``nas/_shipped/`` (``setup.py`` copies them at build time), so an installed
package finds them too. ``init_folder`` writes them into a folder of the user's, laid out as in
the repository, so the specs' relative paths (``../hwprofiles/...``) keep working there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from compress.errors import UserError

FOLDERS = {"search_spaces": "*.yaml", "hwprofiles": "*.json"}
PACKAGED = Path(__file__).resolve().parent / "_shipped"


def shipped_root() -> Path:
    """The folder holding ``search_spaces/`` and ``hwprofiles/``: the wheel's copies when
    installed, else the checkout's root."""
    return PACKAGED if PACKAGED.is_dir() else Path(__file__).resolve().parents[1]


def shipped_files() -> list[Path]:
    """Every shipped spec and profile, relative to ``shipped_root()``."""
    root = shipped_root()
    return sorted(
        path.relative_to(root)
        for folder, pattern in FOLDERS.items()
        for path in (root / folder).glob(pattern)
    )


def init_folder(dest: str | Path, force: bool = False) -> list[Path]:
    """Copy the shipped specs and profiles into ``dest`` (``dest/search_spaces``,
    ``dest/hwprofiles``); returns the written paths. Raises ``UserError`` when a file would be
    overwritten without ``force``, or when nothing is shipped (a broken install)."""
    root, dest = shipped_root(), Path(dest)
    files = shipped_files()
    if not files:
        raise UserError(f"no shipped specs or profiles under {root}; reinstall nas-llm")
    clashes = [str(dest / f) for f in files if (dest / f).exists()]
    if clashes and not force:
        more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
        raise UserError(f"{', '.join(clashes[:3])}{more} exist already; use --force to overwrite")
    written = []
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest / rel)
        written.append(dest / rel)
    return written

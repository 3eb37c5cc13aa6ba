"""Typed failures a user can fix. The CLI prints their message as one line (no traceback)."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input or an impossible request; the message says what is wrong and what to do."""


class UnsupportedArchitecture(UserError):
    """The model is not a supported Llama-family decoder."""


class ModelLoadError(UserError):
    """A model source could not be read (missing, unreadable or corrupt file)."""


class DataError(UserError):
    """Calibration data could not be prepared (missing files, too little text)."""


def read_user_file(path: str | Path, what: str, error: type[UserError] = UserError) -> str:
    """The UTF-8 text of a file the user named; ``error`` (one line naming ``what`` and the
    path) when it is missing or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None

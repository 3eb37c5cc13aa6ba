"""Typed failures a user can fix. The CLI prints their message as one line (no traceback)."""


class UserError(Exception):
    """Bad input or an impossible request; the message says what is wrong and what to do."""


class UnsupportedArchitecture(UserError):
    """The model is not a supported Llama-family decoder."""


class ModelLoadError(UserError):
    """A model source could not be read (missing, unreadable or corrupt file)."""


class DataError(UserError):
    """Calibration data could not be prepared (missing files, too little text)."""

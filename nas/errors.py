"""Typed failures of the search side; all are ``UserError``s the CLI prints as one line."""

from compress.errors import UserError


class SpecError(UserError):
    """The search spec is malformed; the message names the key's dotted path or the file."""


class JobError(UserError):
    """A job id is invalid, or the job does not exist or cannot be resumed."""

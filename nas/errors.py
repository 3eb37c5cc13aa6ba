"""Typed failures of the search side; all are ``UserError``s the CLI prints as one line."""

from compress.errors import UserError


class SpecError(UserError):
    """The search spec is malformed; the message names the key's dotted path or the file."""


class JobError(UserError):
    """A job id is invalid, or the job does not exist or cannot be resumed."""


class NotFound(JobError):
    """No job, Pareto point or export of that id (the service answers 404)."""


class JobBusy(JobError):
    """The job is being run by a live driver, or it cannot change in its current state (409)."""


class RecordCorrupt(JobError):
    """A record of a job (manifest, stage record, Pareto table) is truncated or malformed (409)."""

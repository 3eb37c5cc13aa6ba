"""Typed failures of selection; each is a ``UserError`` the CLI prints as one line."""

from compress.errors import UserError


class SelectionError(UserError):
    """The selection inputs are unusable (a missing score or cost, an unknown metric)."""


class InfeasibleBudget(SelectionError):
    """No choice of variants fits a budget; the message names the smallest achievable value."""

    def __init__(self, message: str, infeasible=None):
        super().__init__(message)
        self.infeasible = infeasible


class SolveTimeout(SelectionError):
    """The solver hit its time limit before finding any feasible choice."""


class NoPointFits(SelectionError):
    """A Pareto-front query's filters exclude every point; the message names the nearest one."""


class FrontMissing(SelectionError):
    """The job has no Pareto front yet (its selection stage has not run)."""

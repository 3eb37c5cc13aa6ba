"""Selection: pure functions over numbers (no torch, no ray) that pick a variant per subblock.

- ``costs``: the ``SelectionProblem`` data model, budgets, human targets, ``Infeasible``.
- ``mip``: Puzzle's mixed-integer program (PuLP/CBC), with diverse solutions per budget.
- ``depth_dp``: AmoebaLLM's layer-by-layer dynamic program over layer masks.
- ``greedy``: a per-layer greedy baseline (best score per unit of cost saved).
"""

from nas.selection.costs import (
    COST_METRICS,
    LATENCY_METRICS,
    TARGET_METRICS,
    Budget,
    Infeasible,
    LayerOptions,
    Option,
    SelectionProblem,
    Solution,
    problem_from_library,
    profile_latency,
    resolve_target,
)
from nas.selection.depth_dp import DepthMask, depth_dp
from nas.selection.errors import InfeasibleBudget, SelectionError, SolveTimeout
from nas.selection.greedy import solve_greedy
from nas.selection.mip import solve_mip, solve_sweep

__all__ = [
    "COST_METRICS",
    "LATENCY_METRICS",
    "TARGET_METRICS",
    "Budget",
    "DepthMask",
    "Infeasible",
    "InfeasibleBudget",
    "LayerOptions",
    "Option",
    "SelectionError",
    "SelectionProblem",
    "Solution",
    "SolveTimeout",
    "depth_dp",
    "problem_from_library",
    "profile_latency",
    "resolve_target",
    "solve_greedy",
    "solve_mip",
    "solve_sweep",
]

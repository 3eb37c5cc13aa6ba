"""The MIP selection (real PuLP + CBC) against exhaustive enumeration, plus the pure data model."""

import itertools
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from nas.selection import (
    Infeasible,
    InfeasibleBudget,
    SelectionError,
    SelectionProblem,
    problem_from_library,
    resolve_target,
    solve_greedy,
    solve_mip,
)
from nas.selection.costs import kv_cache_mib
from tests.synthetic import llama_problem, random_problem

TAIL = 4  # layers enumerated with numpy; the ones before them with itertools.product


def _pairs(problem: SelectionProblem, metrics):
    """Per layer: the allowed (attention, FFN) index pairs, their scores and costs (summed in an
    additive layer, the block's own in a joint one)."""
    out = []
    for layer in problem.layers:
        pairs = layer.pairs()
        score = np.array([layer.pair_score(a, f) for a, f in pairs])
        costs = {m: np.array([layer.pair_cost(a, f, m) for a, f in pairs]) for m in metrics}
        out.append((pairs, score, costs))
    return out


def _outer(arrays):
    total = np.zeros(1)
    for arr in arrays:
        total = np.add.outer(total, arr).ravel()
    return total


def brute_force(
    problem: SelectionProblem,
    budgets: dict,
    objective: str | None = None,
    lower: dict | None = None,
    maximise: bool = False,
):
    """Exhaustive optimum: min summed score (or min ``objective`` cost; max with ``maximise``)
    over every choice within the budgets (``cost <= budgets[m]``, ``cost >= lower[m]``); None if
    no choice fits. Enumerates every allowed choice."""
    lower = lower or {}
    metrics = sorted(set(budgets) | set(lower) | ({objective} if objective else set()))
    layers = _pairs(problem, metrics)
    head, tail = layers[: max(0, len(layers) - TAIL)], layers[max(0, len(layers) - TAIL) :]
    tail_score = _outer([t[1] for t in tail])
    tail_costs = {m: _outer([t[2][m] for t in tail]) for m in metrics}
    best = math.inf
    for prefix in itertools.product(*[range(len(h[0])) for h in head]):
        ok = np.ones_like(tail_score, dtype=bool)
        for m, limit in budgets.items():
            base = problem.fixed(m) + sum(h[2][m][j] for h, j in zip(head, prefix, strict=True))
            ok &= base + tail_costs[m] <= limit + 1e-9 * max(1.0, abs(limit))  # summation order
        for m, limit in lower.items():
            base = problem.fixed(m) + sum(h[2][m][j] for h, j in zip(head, prefix, strict=True))
            ok &= base + tail_costs[m] >= limit - 1e-9 * max(1.0, abs(limit))
        if not ok.any():
            continue
        if objective is None:
            base = sum(h[1][j] for h, j in zip(head, prefix, strict=True))
            value = base + tail_score[ok].min()
        else:
            base = problem.fixed(objective) + sum(
                h[2][objective][j] for h, j in zip(head, prefix, strict=True)
            )
            if maximise:
                value = -(base + tail_costs[objective][ok].max())
            else:
                value = base + tail_costs[objective][ok].min()
        best = min(best, value)
    if best == math.inf:
        return None
    return -best if maximise else best


def _library_cases():
    rng = random.Random(1234)
    metrics = ("prefill_latency_ms", "decode_latency_ms", "params", "memory_mib")
    cases = []
    for n in range(50):
        if n < 4:  # the largest size, always covered
            shape = (6, 4, 4)
        else:
            shape = (rng.randint(1, 6), rng.randint(1, 4), rng.randint(1, 4))
        # every other library is homogeneous (the same option costs in every layer), which the
        # MIP solves with its count formulation
        problem = random_problem(rng, *shape, shared_costs=n % 2 == 1)
        parent = problem.parent_indices()
        budgets = []
        # one budget on one metric (every 10th below the smallest achievable), and one request
        # with two metrics together (every 5th tight enough to be jointly infeasible at times)
        single = (-0.2, -0.01) if n % 10 == 3 else (0.05, 1.05)
        joint = (0.0, 0.2) if n % 5 == 2 else (0.2, 1.0)
        for count, (low, high) in ((1, single), (2, joint)):
            request = {}
            for m in rng.sample(metrics, count):
                lo, hi = problem.min_cost(m), problem.cost(parent, m)
                request[m] = lo + rng.uniform(low, high) * (hi - lo)
            budgets.append(request)
        cases.append((n, problem, budgets))
    return cases


CASES = _library_cases()


@pytest.mark.parametrize("n, problem, requests", CASES, ids=[f"lib{c[0]}" for c in CASES])
def test_mip_optimum_equals_brute_force(n, problem, requests):
    for budgets in requests:
        expected = brute_force(problem, budgets)
        result = solve_mip(problem, budgets, time_limit_s=60)
        if expected is None:
            assert isinstance(result, Infeasible), (budgets, result)
            # the named value really is the smallest achievable (under the other budgets, if any)
            others = {m: v for m, v in budgets.items() if m != result.metric}
            smallest = brute_force(problem, others, objective=result.metric)
            assert result.smallest_achievable == pytest.approx(smallest, rel=1e-9)
            assert result.smallest_achievable > result.budget
            continue
        assert not isinstance(result, Infeasible), (budgets, result)
        (solution,) = result
        assert solution.status == "optimal"
        assert solution.score == pytest.approx(expected, rel=1e-7, abs=1e-9)
        assert solution.score == pytest.approx(problem.score(solution.indices))
        for m, limit in budgets.items():
            assert solution.costs[m] <= limit * (1 + 1e-6)
        # the greedy baseline is feasible and never better than the optimum (under two
        # interacting budgets it may get stuck, which it reports as a SelectionError)
        try:
            greedy = solve_greedy(problem, budgets)
        except SelectionError:
            assert len(budgets) > 1
            continue
        if not isinstance(greedy, Infeasible):
            assert greedy[0].score >= expected - 1e-9
            for m, limit in budgets.items():
                assert greedy[0].costs[m] <= limit * (1 + 1e-6)


def test_diverse_solutions_are_the_best_diverse_choices():
    problem = random_problem(random.Random(7), 4, 3, 3)
    metric = "decode_latency_ms"
    budget = (problem.min_cost(metric) + problem.cost(problem.parent_indices(), metric)) / 2
    k = 2
    solutions = solve_mip(problem, {metric: budget}, solutions=4, diversity_layers=k)
    assert len(solutions) == 4
    everything = list(
        itertools.product(
            *[itertools.product(range(3), range(3)) for _ in range(problem.num_layers)]
        )
    )
    earlier = []
    for solution in solutions:
        allowed = [
            c
            for c in everything
            if problem.cost(c, metric) <= budget
            and all(sum(a != b for a, b in zip(c, e, strict=True)) >= k for e in earlier)
        ]
        assert solution.score == pytest.approx(min(problem.score(c) for c in allowed), abs=1e-9)
        earlier.append(solution.indices)
    scores = [s.score for s in solutions]
    assert scores == sorted(scores)


def test_diversity_stops_when_no_more_choices_fit():
    problem = random_problem(random.Random(3), 2, 2, 1)  # only 4 possible choices
    solutions = solve_mip(problem, {"params": 1e9}, solutions=10, diversity_layers=1)
    assert len(solutions) == 4 and len({s.indices for s in solutions}) == 4


def test_infeasible_budget_is_typed_and_names_the_smallest_value():
    problem = llama_problem(8)
    smallest = problem.min_cost("decode_latency_ms")
    result = solve_mip(problem, {"decode_latency_ms": smallest * 0.5})
    assert isinstance(result, Infeasible)
    assert result.smallest_achievable == pytest.approx(smallest)
    message = result.message()
    assert "\n" not in message and f"{smallest:.6g}" in message
    error = result.error()
    assert isinstance(error, InfeasibleBudget) and str(error) == message
    # a throughput target phrases the message in tokens/s
    budget = resolve_target(problem, "throughput_tps", 1e9, relative=False, batch=4)
    result = solve_mip(problem, [budget], batch=4)
    assert isinstance(result, Infeasible)
    assert "largest achievable" in result.message()
    assert f"{4000 / smallest:.6g}" in result.message()


def test_targets_convert_to_budgets():
    problem = llama_problem(4)
    parent = problem.parent_indices()
    decode = problem.cost(parent, "decode_latency_ms")
    b = resolve_target(problem, "throughput_tps", 2.0, relative=True, batch=8)
    assert b.metric == "decode_latency_ms" and b.value == pytest.approx(decode / 2)
    assert b.target_value == pytest.approx(2 * 8000 / decode)
    b = resolve_target(problem, "throughput_tps", 500.0, relative=False, batch=8)
    assert b.value == pytest.approx(1000 * 8 / 500)
    b = resolve_target(problem, "ttft_ms", 0.5, relative=True)
    assert b.metric == "prefill_latency_ms"
    assert b.value == pytest.approx(0.5 * problem.cost(parent, "prefill_latency_ms"))
    b = resolve_target(problem, "memory_mib", 1234.0, relative=False)
    assert (b.metric, b.value) == ("memory_mib", 1234.0)
    with pytest.raises(SelectionError, match="must be positive"):
        resolve_target(problem, "params", 0.0, relative=True)


def test_problem_round_trips_through_json():
    problem = random_problem(random.Random(5), 3, 2, 3)
    again = SelectionProblem.from_dict(json.loads(json.dumps(problem.to_dict())))
    assert again == problem


def test_problem_from_library_rows():
    # two layers; hidden 8, 2 heads x head_dim 4, parent KV heads 2, FFN width 16, vocab 10
    def attn(kv):
        return 8 * 8 + 2 * 8 * kv * 4 + 8 * 8 + 8

    def kv(heads):  # the library's KV cost features: keys + values per token, no window
        return {"kv_values_per_token": 2 * heads * 4, "kv_window": 0}

    rows = [
        {"layer": i, "kind": "attention", "variant": "attention:parent", "params": attn(2)} | kv(2)
        for i in range(2)
    ]
    rows += [
        {
            "layer": i,
            "kind": "attention",
            "variant": "attention:kv_heads=1",
            "params": attn(1),
            "kl": 0.1 + i,
        }
        | kv(1)
        for i in range(2)
    ]
    rows += [
        {"layer": i, "kind": "ffn", "variant": "ffn:noop", "params": 0, "kl": 0.5} | kv(0)
        for i in range(2)
    ]
    rows += [{"layer": 0, "kind": "ffn", "variant": "ffn:parent", "params": 3 * 8 * 16 + 8} | kv(0)]
    latency = {
        "attention:parent": 1.0,
        "attention:kv_heads=1": 0.8,
        "ffn:parent": 2.0,
        "ffn:noop": 0.0,
    }
    problem = problem_from_library(
        rows,
        num_layers=2,
        hidden_size=8,
        vocab_size=10,
        tied_embeddings=True,
        latency=lambda metric, layer, variant: latency[variant],
        latency_metrics=["decode_latency_ms"],
        fixed_latency_ms={"decode_latency_ms": 0.3},
        batch=2,
        context=16,
        bytes_per_value=2,
    )
    assert problem.metrics == ("decode_latency_ms", "params", "memory_mib", "kv_cache_mib")
    assert kv_cache_mib(1, 4, 16, 2, 2) == problem.layers[0].attention[1].costs["kv_cache_mib"]
    # layer 1 got its missing ffn:parent, listed first, score 0
    assert problem.layers[1].ffn[0].variant == "ffn:parent" and problem.layers[1].ffn[0].score == 0
    kv1 = problem.layers[0].attention[1]
    assert kv1.variant == "attention:kv_heads=1" and kv1.score == pytest.approx(0.1)
    assert kv1.costs["memory_mib"] == pytest.approx(
        attn(1) * 2 / 2**20 + 2 * 1 * 4 * 16 * 2 * 2 / 2**20
    )
    assert kv1.costs["memory_mib"] == pytest.approx(
        attn(1) * 2 / 2**20 + kv_cache_mib(1, 4, 16, 2, 2)
    )
    parent = problem.parent_indices()
    assert problem.cost(parent, "decode_latency_ms") == pytest.approx(0.3 + 2 * 3.0)
    assert problem.fixed("params") == 10 * 8 + 8  # tied embeddings + final norm
    with pytest.raises(SelectionError, match="no kl score"):
        problem_from_library(
            [
                *rows,
                {
                    "layer": 1,
                    "kind": "ffn",
                    "variant": "ffn:width=4",
                    "params": 1,
                    "kl": float("nan"),
                },
            ],
            num_layers=2,
            hidden_size=8,
            vocab_size=10,
            tied_embeddings=True,
        )


def test_selection_code_imports_neither_torch_nor_ray():
    code = (
        "import sys, nas.selection.mip, nas.selection, nas.pareto, nas.selection.depth_dp;"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

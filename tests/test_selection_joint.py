"""Joint blocks, bounds solved together (max and min), HiGHS and CBC, per-layer rules, negative
scores, throughput at batch, and block-library files (`nas select`): real PuLP solvers checked
against exhaustive enumeration and against each other."""

import json
import random
import statistics
import subprocess
import sys

import pytest

from nas.pareto import Bound, Target, select_front
from nas.selection import Infeasible, InfeasibleBudget, SelectionError, solve_mip
from nas.selection.block_library import read_library, write_library
from nas.selection.costs import Budget, Workload, resolve_target
from tests.conftest import ROOT
from tests.synthetic import joint_problem, random_joint_problem, random_problem
from tests.test_mip import brute_force

METRICS = ("prefill_latency_ms", "decode_latency_ms", "params", "memory_mib")


def _cases():
    rng = random.Random(99)
    out = []
    for n in range(16):
        shape = (rng.randint(2, 5), rng.randint(1, 4), rng.randint(1, 4))
        problem = random_joint_problem(rng, *shape) if n % 4 else random_problem(rng, *shape)
        parent = problem.parent_indices()
        upper, lower = {}, {}
        for m in rng.sample(METRICS, 2):
            lo, hi = problem.min_cost(m), problem.max_cost(m)
            upper[m] = lo + rng.uniform(0.3, 1.0) * (problem.cost(parent, m) - lo)
        m = rng.choice(METRICS)
        lower[m] = problem.min_cost(m) + rng.uniform(0.0, 0.5) * (upper.get(m, hi) - lo)
        out.append((n, problem, upper, lower))
    return out


CASES = _cases()


@pytest.mark.parametrize("n, problem, upper, lower", CASES, ids=[f"lib{c[0]}" for c in CASES])
@pytest.mark.parametrize("solver", ["highs", "cbc"])
def test_joint_and_min_bounds_equal_brute_force(n, problem, upper, lower, solver):
    """Max and min bounds together, joint layers with negative scores: the optimum is exact;
    an infeasible request names a bound and its best value under the others."""
    budgets = [Budget(m, v, m, v) for m, v in upper.items()]
    budgets += [Budget(m, v, m, v, "min") for m, v in lower.items()]
    expected = brute_force(problem, upper, lower=lower)
    result = solve_mip(problem, budgets, solver=solver, time_limit_s=60)
    if expected is None:
        assert isinstance(result, Infeasible)
        b = result.target
        others_up = {m: v for m, v in upper.items() if (m, "max") != (b.metric, b.bound)}
        others_low = {m: v for m, v in lower.items() if (m, "min") != (b.metric, b.bound)}
        best = brute_force(
            problem, others_up, b.metric, lower=others_low, maximise=b.bound == "min"
        )
        assert result.smallest_achievable == pytest.approx(best, rel=1e-7)
        assert not b.holds(best)
        return
    (solution,) = result
    assert solution.status == "optimal"
    assert solution.score == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert all(b.holds(solution.costs[b.metric]) for b in budgets)


def test_joint_generator_is_not_additive_and_joint_choice_beats_the_additive_one():
    """80 layers x 16 joint blocks: whole-block no-ops score well below the sum of their halves;
    at every budget the joint MIP's choice (HiGHS, checked by CBC) has a joint KL no higher than
    the additive model's choice, and strictly lower at some."""
    joint, additive = joint_problem(80)
    assert [len(layer.blocks) for layer in joint.layers] == [16] * 80
    ratios = []
    for layer in joint.layers:
        names = [
            (layer.attention[b.attention].variant, layer.ffn[b.ffn].variant) for b in layer.blocks
        ]
        block = layer.blocks[names.index(("attention:noop", "ffn:noop"))]
        ratios.append(
            block.score / (layer.attention[block.attention].score + layer.ffn[block.ffn].score)
        )
    assert 0.6 < statistics.median(ratios) < 0.9 and min(ratios) >= 0.09 and max(ratios) <= 1.1
    parent = joint.cost(joint.parent_indices(), "decode_latency_ms")
    gains = []
    for ratio in (0.8, 0.55, 0.35):
        budget = {"decode_latency_ms": ratio * parent}
        (best,) = solve_mip(joint, budget, solver="highs")
        (check,) = solve_mip(joint, budget, solver="cbc", time_limit_s=120)
        (plain,) = solve_mip(additive, budget)
        assert best.status == check.status == "optimal"
        assert best.score == pytest.approx(check.score, rel=1e-6)
        assert best.score <= joint.score(plain.indices) + 1e-9
        gains.append(joint.score(plain.indices) / best.score)
    assert max(gains) > 1.0


def test_combined_target_meets_every_bound_and_an_impossible_one_names_the_binding_bound():
    joint, _ = joint_problem(24)
    held = (Bound("memory_mib", 0.8, relative=True), Bound("kv_cache_mib", 0.6, relative=True))
    target = Target("prefill_latency_ms", (0.9, 0.7, 0.5), True, held)
    result = select_front(joint, [target], baselines=())
    parent = joint.costs(joint.parent_indices())
    assert len(result.front) >= 2
    for _, row in result.front.iterrows():
        assert row["memory_mib"] <= 0.8 * parent["memory_mib"] * (1 + 1e-9)
        assert row["kv_cache_mib"] <= 0.6 * parent["kv_cache_mib"] * (1 + 1e-9)
        assert " & memory_mib<=" in row["target"] and " & kv_cache_mib<=" in row["target"]
    impossible = Target(
        bounds=(
            Bound("prefill_latency_ms", 0.5, relative=True),
            Bound("memory_mib", 0.9, relative=True),
            Bound("params", 0.9, "min", relative=True),  # each alone is feasible
        )
    )
    with pytest.raises(InfeasibleBudget) as info:
        select_front(joint, [impossible], baselines=())
    message = str(info.value)
    infeasible = info.value.infeasible
    assert infeasible.given_other_budgets and infeasible.target.metric in message
    assert f"{infeasible.smallest_achievable:.6g}" in message and "\n" not in message


def test_throughput_targets_at_batch():
    problem, _ = joint_problem(4)
    parent = problem.parent_indices()
    decode = problem.cost(parent, "decode_latency_ms")
    prefill = problem.cost(parent, "prefill_latency_ms")
    work = Workload(batch=8, prefill_tokens=8 * 128, decode_steps=1)
    b = resolve_target(problem, "decode_throughput_tps", 900.0, False, workload=work)
    assert (b.metric, b.bound, b.value) == ("decode_latency_ms", "max", pytest.approx(8000 / 900))
    assert b.label == "decode_throughput_tps>=900"
    b = resolve_target(problem, "decode_throughput_tps", 1.5, True, workload=work)
    assert b.value == pytest.approx(decode / 1.5)
    assert b.target_value == pytest.approx(1.5 * 8000 / decode)
    b = resolve_target(problem, "prefill_throughput_tps", 1e5, False, workload=work)
    assert b.value == pytest.approx(1000 * 8 * 128 / 1e5)
    # a Puzzle-style runtime covering a whole generation: 256 sequences x 1,200 tokens
    b = resolve_target(problem, "throughput_tps", 6000.0, False, workload=Workload(256, 1, 1200))
    assert b.value == pytest.approx(51_200.0)
    assert prefill > 0
    with pytest.raises(SelectionError, match="unknown target metric 'energy_j'"):
        resolve_target(problem, "energy_j", 1.0, False)


def test_fix_and_forbid_rules():
    joint, _ = joint_problem(6)
    rules = joint.restrict({0: ["attention:parent", "ffn:parent"]}, [(None, "attention:noop")])
    (solution,) = solve_mip(rules, {"params": 0.7 * joint.cost(joint.parent_indices(), "params")})
    assert solution.choices[0] == ("attention:parent", "ffn:parent")
    assert all(a != "attention:noop" for a, _ in solution.choices)
    with pytest.raises(SelectionError, match="no variant 'ffn:nope'"):
        joint.restrict(forbid=[(2, "ffn:nope")])
    with pytest.raises(SelectionError, match="without"):
        joint.restrict(forbid=[(1, "attention:parent"), (1, "attention:noop")])


@pytest.mark.parametrize("suffix", ["csv", "json", "parquet"])
def test_library_files_round_trip(tmp_path, suffix):
    joint, additive = joint_problem(5)
    path = write_library(joint, tmp_path / f"lib.{suffix}")
    assert read_library(path) == joint
    assert read_library(path, blocks="subblock") == additive
    mixed = random_problem(random.Random(2), 3, 2, 3)
    assert read_library(write_library(mixed, tmp_path / f"m.{suffix}")) == mixed


def test_bad_library_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,attention,ffn,kl,runtime_ms\n0,a0,f0,0.1,\n")
    with pytest.raises(SelectionError, match="row 2 runtime_ms"):
        read_library(bad)
    bad.write_text("layer,attention,kl\n0,a0,0.1\n")
    with pytest.raises(SelectionError, match="lacks the column"):
        read_library(bad)
    with pytest.raises(SelectionError, match="no score column 'lm_loss'"):
        read_library(write_library(joint_problem(2)[0], tmp_path / "ok.csv"), score="lm_loss")


def test_nas_select_reproduces_the_front_of_the_same_library(tmp_path):
    """`nas select` on a CSV (custom cost metric, no model, no torch) gives the front that
    ``select_front`` gives on the problem the file was written from."""
    joint, _ = joint_problem(12)
    path = write_library(joint, tmp_path / "lib.csv")
    sweep = Target(
        "decode_latency_ms", (0.9, 0.7, 0.5), True, (Bound("memory_mib", 0.9, relative=True),)
    )
    expected = select_front(
        joint, [sweep], baselines=(), solutions_per_budget=2, diversity_layers=2
    )
    code = (
        "import sys; from nas.cli import main; sys.argv = ['nas'] + sys.argv[1:]; main();"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]; assert not bad, bad"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "select",
            str(path),
            "--relative",
            "--sweep",
            "decode_latency_ms<=0.9,0.7,0.5",
            "--budget",
            "memory_mib<=0.9",
            "--solutions",
            "2",
            "--diversity",
            "2",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [r["point_id"] for r in got] == list(expected.front["point_id"])
    for row, (_, want) in zip(got, expected.front.iterrows(), strict=True):
        assert row["predicted_kl"] == pytest.approx(want["predicted_kl"], rel=1e-12)
        assert row["memory_mib"] == pytest.approx(want["memory_mib"], rel=1e-12)
    out = subprocess.run(
        [sys.executable, "-m", "nas.cli", "select", str(path), "--budget", "memory_mib<=1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 2 and "smallest achievable memory_mib" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_spec_targets_old_and_new_forms():
    from nas.errors import SpecError
    from nas.spec import parse_spec

    spec = parse_spec(
        {
            "targets": [
                {"metric": "throughput_tps", "values": [1.5]},  # the old form still works
                {
                    "metric": "decode_throughput_tps",
                    "values": [1.25, 2.0],
                    "bounds": [
                        {"metric": "memory_mib", "max": 0.8},
                        {"metric": "params", "min": 0.2},
                    ],
                },
                {"bounds": [{"metric": "kv_cache_mib", "max": 100, "relative": False}]},
            ],
            "strategy": {"solver": "cbc", "fix": {0: ["ffn:parent"]}, "forbid": ["3/ffn:noop"]},
            "scoring": {"blocks": "joint"},
        }
    )
    targets = [Target.of(t) for t in spec.targets]
    assert targets[1].bounds == (
        Bound("memory_mib", 0.8, "max", True),
        Bound("params", 0.2, "min", True),
    )
    assert targets[2].metric is None and targets[2].bounds[0].relative is False
    for bad, match in (
        ({"targets": [{"metric": "energy_j", "values": [1]}]}, "unknown metric 'energy_j'"),
        ({"targets": [{"bounds": [{"metric": "params"}]}]}, "needs min or max"),
        ({"targets": [{"relative": True}]}, "needs metric and values, or bounds"),
    ):
        with pytest.raises(SpecError, match=match):
            parse_spec(bad)


@pytest.mark.slow
def test_nas_select_reproduces_a_finished_tiny_job(tmp_path):
    """The tiny job through selection; `nas select` on its pareto/library.csv with the job's
    sweep gives exactly the job's puzzle-mip points (choices, costs, predicted KL, targets)."""
    from tests.conftest import TINY_SPEC, need_shared_data

    need_shared_data()
    run = [sys.executable, "-m", "nas.cli", "run", str(TINY_SPEC), "--job-id", "t"]
    out = subprocess.run(
        [*run, "--results", str(tmp_path), "--until", "selection"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    folder = tmp_path / "t" / "pareto"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "select",
            str(folder / "library.csv"),
            "--relative",
            "--sweep",
            "prefill_latency_ms<=0.9,0.8,0.7,0.6,0.5,0.4",
            "--solutions",
            "3",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = {r["point_id"]: r for r in json.loads(out.stdout)}
    job = [
        r for r in json.loads((folder / "front.json").read_text()) if r["strategy"] == "puzzle-mip"
    ]
    assert sorted(got) == sorted(r["point_id"] for r in job)
    for row in job:
        for column in (
            "choices",
            "target",
            "predicted_kl",
            "predicted_prefill_latency_ms",
            "params",
        ):
            assert got[row["point_id"]][column] == row[column]


def test_problem_from_library_with_joint_scores():
    """Joint scores of scored pairs make a joint layer: listed pairs plus the parent pair and the
    pairs with one parent half; block costs are the subblocks' sums."""
    from nas.selection import problem_from_library

    rows = [
        {"layer": i, "kind": k, "variant": v, "params": p, "kl": s}
        | {"kv_values_per_token": 4 if v == "attention:parent" else 0, "kv_window": 0}
        for i in range(2)
        for k, v, p, s in (
            ("attention", "attention:parent", 40, 0.0),
            ("attention", "attention:noop", 0, 0.3),
            ("ffn", "ffn:parent", 60, 0.0),
            ("ffn", "ffn:noop", 0, 0.5),
        )
    ]
    joint = {
        (0, "attention:noop", "ffn:noop"): 0.4,
        (0, "attention:noop", "ffn:parent"): 0.3,
        (0, "attention:parent", "ffn:noop"): 0.5,
    }
    problem = problem_from_library(
        rows,
        num_layers=2,
        hidden_size=4,
        vocab_size=8,
        tied_embeddings=True,
        joint_scores=joint,
    )
    first, second = problem.layers
    assert first.is_joint and not second.is_joint and len(first.blocks) == 4
    both = problem.indices([("attention:noop", "ffn:noop"), ("attention:noop", "ffn:noop")])
    assert problem.score(both) == pytest.approx(0.4 + 0.8)  # joint in layer 0, summed in layer 1
    assert problem.cost(both, "params") == problem.fixed("params")
    (best,) = solve_mip(problem, {"params": problem.fixed("params") + 100})
    assert best.choices[0] == ("attention:noop", "ffn:noop")  # 0.4 < 0.3 + 0.5


def test_batch_is_a_searchable_option():
    """Decode problems at batch 8 and 32 (synthetic roofline: a larger batch gives more tokens/s
    but a larger KV cache): with the same absolute throughput and memory bounds at both, the merged
    front keeps per request the lower-KL batch, and every point meets the bounds at its batch."""
    from nas.batch_search import THROUGHPUT, merge_batches
    from tests.synthetic import llama_problem

    problems = {b: llama_problem(12, decode_batch=b, seed=4) for b in (8, 32)}
    work = {b: Workload(b) for b in problems}
    base = problems[8]
    tps8 = 8000.0 / base.cost(base.parent_indices(), "decode_latency_ms")
    memory = base.cost(base.parent_indices(), "memory_mib")
    target = Target(
        "decode_throughput_tps",
        (1.2 * tps8, 2.0 * tps8, 3.0 * tps8),
        False,
        (Bound("memory_mib", 1.3 * memory),),
    )
    results = {
        b: select_front(p, [target], baselines=(), workload=work[b], on_infeasible="record")
        for b, p in problems.items()
    }
    merged = merge_batches(results)
    front = merged.front
    assert set(front["batch"]) <= {8, 32} and merged.meta["batches"] == [8, 32]
    for _, row in front.iterrows():
        tps = row["batch"] * 1000 / row["predicted_decode_latency_ms"]
        assert row[THROUGHPUT] == pytest.approx(tps)
        assert tps >= float(row["target"].split(">=")[1].split(" ")[0]) * (1 - 1e-6)
        assert row["memory_mib"] <= 1.3 * memory * (1 + 1e-9)
        for result in results.values():  # no batch has a better point for this request
            same = result.front[result.front["target"] == row["target"]]
            assert (same["predicted_kl"] >= row["predicted_kl"] - 1e-12).all()
    assert len(set(front["batch"])) == 2  # here both batches win some request

"""bench/baselines.py: the baseline point builders and the domination / 1.5x checks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from compress.variants import VariantSpec
from nas.layout import JobLayout
from tests.synthetic import llama_problem

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bl = _load("baselines")


@pytest.fixture(scope="module")
def problem():
    return llama_problem(8, hidden=512, heads=8, kv_heads=2, intermediate=2048, vocab=1000)


def test_uniform_width_is_the_same_width_everywhere(problem):
    points = bl.uniform_width_points(problem)
    widths = [
        o.variant for o in problem.layers[0].ffn if VariantSpec.parse(o.variant).type == "width"
    ]
    assert len(points) == len(widths) > 0
    values = []
    for _, choices in points:
        assert len(choices) == problem.num_layers
        assert {a for a, _ in choices} == {"attention:parent"}
        assert len({f for _, f in choices}) == 1
        values.append(VariantSpec.parse(choices[0][1]).value)
    assert values == sorted(values, reverse=True)


def test_drop_last_points_drop_the_last_layers():
    points = bl.drop_last_points(30)
    assert [label for label, _ in points][:3] == ["drop last 1", "drop last 2", "drop last 4"]
    for label, choices in points:
        k = int(label.rsplit(" ", 1)[1])
        assert choices[: 30 - k] == (bl.PARENT,) * (30 - k)
        assert choices[30 - k :] == (bl.NOOP,) * k
    assert [c for c in bl.drop_last_points(3, [1, 2, 3, 5])] == bl.drop_last_points(3, [1, 2])


def test_greedy_and_random_points_meet_the_budgets(problem):
    metric = "prefill_latency_ms"
    parent = problem.cost(problem.parent_indices(), metric)
    budgets = [{"metric": metric, "value": r * parent, "label": f"x{r}"} for r in (0.8, 0.6)]
    greedy = bl.greedy_points(problem, budgets)
    assert len(greedy) == 2
    for (_, choices), budget in zip(greedy, budgets, strict=True):
        assert problem.cost(problem.indices(choices), metric) <= budget["value"] * (1 + 1e-9)
    chosen = bl.random_points(problem, 6, metric, 0.6 * parent, 0.8 * parent, seed=1)
    assert len(chosen) == 6
    assert len({c for _, c in chosen}) == 6
    for _, choices in chosen:
        assert 0.6 * parent <= problem.cost(problem.indices(choices), metric) <= 0.8 * parent
    assert chosen == bl.random_points(problem, 6, metric, 0.6 * parent, 0.8 * parent, seed=1)


def _row(label, strategy, latency, kl, ppl_ratio=1.0):
    return {
        "label": label,
        "strategy": strategy,
        "latency_ms": latency,
        "speedup": 10.0 / latency,
        "kl": kl,
        "ppl_ratio": ppl_ratio,
    }


def test_domination_picks_the_best_front_point_no_slower():
    rows = [
        _row("parent", "parent", 10.0, 0.0),
        _row("f1", "front", 8.0, 0.1, 1.05),
        _row("f2", "front", 5.0, 0.4, 1.3),
        _row("b-dominated", "greedy", 6.0, 0.5),
        _row("b-better", "random", 9.0, 0.05),
        _row("b-fast", "drop-last", 4.0, 2.0),
    ]
    out = {d["baseline"]: d for d in bl.domination(rows)}
    assert out["b-dominated"]["front point"] == "f2"
    assert out["b-dominated"]["kl ratio"] == pytest.approx(0.8)
    assert out["b-dominated"]["dominated"] is True
    assert out["b-better"]["front point"] == "f1"
    assert out["b-better"]["kl ratio"] == pytest.approx(2.0)
    assert out["b-better"]["dominated"] is False
    assert out["b-fast"]["kl ratio"] is None and out["b-fast"]["dominated"] is None
    loose = {d["baseline"]: d for d in bl.domination(rows, tolerance=0.3)}
    assert loose["b-fast"]["front point"] == "f2"
    # 1.5x speedup (latency 6.67) lies between f1 (1.25x) and f2 (2x)
    acc3 = bl.at_speedup(rows)
    assert acc3["interpolated_ppl_ratio"] == pytest.approx(1.05 + (1.5 - 1.25) / 0.75 * 0.25)
    assert acc3["closest_point"] == "f2"


def test_unfinished_or_missing_job_is_a_one_line_error(tmp_path, capsys):
    assert bl.main(["--job", "nosuch", "--results", str(tmp_path)]) == 2
    (tmp_path / "j1").mkdir()
    JobLayout(tmp_path / "j1").manifest_path.write_text(json.dumps({"job_id": "j1", "state": "failed"}))
    assert bl.main(["--job", "j1", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not finished" in err[1]


def test_run_all_rejects_unknown_names(capsys):
    run_all = _load("run_all")
    assert run_all.main(["--only", "nope"]) == 2
    assert "unknown bench nope" in capsys.readouterr().err
    assert run_all.main(["--list"]) == 0
    assert "baselines" in capsys.readouterr().out


def test_healed_front_rotates_the_order_and_refuses_a_job_without_students(tmp_path, capsys):
    hf = _load("healed_front")

    class Clock:  # records the order the rounds run the models in
        def __init__(self, name, log):
            self.name, self.log = name, log

        def run(self, outputs, feeds):
            self.log.append(self.name)

    log: list[str] = []
    sessions = {n: Clock(n, log) for n in ("parent", "a", "b")}
    times = hf.rotated_rounds(sessions, None, repeats=6)
    assert all(len(t) == 6 for t in times.values())
    rounds = [log[9 + 3 * r : 12 + 3 * r] for r in range(6)]  # after 3 warm-ups each
    assert [r[0] for r in rounds] == ["parent", "a", "b"] * 2
    assert all(sorted(r) == ["a", "b", "parent"] for r in rounds)
    assert hf.main(["--job", "nosuch", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no exported students" in err[0]


@pytest.mark.parametrize(
    "name",
    [
        "mip_speed",
        "profile_mape",
        "diswot",
        "bld",
        "service_latency",
        "export_speed",
        "baselines",
        "healed_front",
    ],
)
def test_every_bench_script_starts_as_a_script(name):
    """run_all starts each script as ``python bench/NAME.py`` from any folder: its imports must
    work that way (``--help`` exits before any work)."""
    import subprocess

    run_all = _load("run_all")
    assert name in run_all.NAMES
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()

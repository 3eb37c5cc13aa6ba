"""The Pareto front: built from a synthetic problem, stored in a job folder, queried through the
CLI (real subprocess) and the library API, plotted."""

import itertools
import json
import subprocess
import sys

import pandas as pd
import pytest

from nas import api
from nas.layout import JobLayout
from nas.pareto import (
    CandidatePoint,
    Target,
    query_front,
    read_front,
    record_measurement,
    select_front,
    write_front,
)
from nas.selection import InfeasibleBudget, depth_dp
from nas.selection.depth_dp import mask_choices
from nas.selection.errors import FrontMissing
from nas.store import JobStore
from tests.conftest import ROOT
from tests.synthetic import llama_problem

SWEEP = Target("prefill_latency_ms", (0.9, 0.8, 0.7, 0.6, 0.5, 0.4), relative=True)


def nas(*args):
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def problem():
    return llama_problem(12, seed=3)


@pytest.fixture(scope="module")
def job(tmp_path_factory, problem):
    """A job folder holding a front from a 6-value sweep plus amoeba-dp points."""
    root = tmp_path_factory.mktemp("results")
    store = JobStore.create(root, "front-job", {"name": "front-job"}, None)
    # depth DP on the summed scores of no-op layers, as the strategy's points
    noop_score = [layer.attention[-1].score + layer.ffn[-1].score for layer in problem.layers]
    masks = depth_dp(
        problem.num_layers,
        lambda mask: sum(s for s, keep in zip(noop_score, mask, strict=True) if not keep),
        max_removed=4,
    )
    points = [CandidatePoint("amoeba-dp", mask_choices(m.mask)) for m in masks[1:]]
    # a clearly dominated point: the parent's costs with a large quality loss
    points.append(CandidatePoint("diswot-evolution", mask_choices((True,) * 12), predicted_kl=99.0))
    result = select_front(problem, [SWEEP], points, time_limit_s=30)
    write_front(store.dir, result, problem)
    return root, store, result


def test_sweep_gives_a_front_of_at_least_five_points(job):
    _, _, result = job
    front = result.front
    assert (front["strategy"] == "puzzle-mip").sum() >= 5
    assert "diswot-evolution" not in set(front["strategy"])  # dominated, dropped
    assert result.meta["candidates"] > len(front)
    # non-dominated: sorted by latency, quality loss strictly falls as latency grows
    latency = front["predicted_prefill_latency_ms"].tolist()
    assert latency == sorted(latency)
    kl = front["predicted_kl"].tolist()
    assert all(a > b for a, b in itertools.pairwise(kl))
    assert len(result.baselines) and set(result.baselines["label"]) == {"greedy"}


def test_cli_json_parses_and_filters(job):
    root, store, result = job
    out = nas("pareto", store.job_id, "--results", root, "--format", "json")
    assert out.returncode == 0, out.stderr
    points = json.loads(out.stdout)
    assert len(points) == len(result.front) >= 5
    for column in (
        "point_id",
        "strategy",
        "choices",
        "predicted_prefill_latency_ms",
        "predicted_decode_latency_ms",
        "params",
        "memory_mib",
        "predicted_kl",
        "measured_latency_ms",
        "measured_kl",
        "measured_lm_loss",
        "measured_perplexity",
    ):
        assert column in points[0]
    assert points[0]["measured_kl"] is None
    assert len(points[0]["choices"]) == 12 and len(points[0]["choices"][0]) == 2
    limit = sorted(p["predicted_prefill_latency_ms"] for p in points)[len(points) // 2]
    out = nas(
        "pareto", store.job_id, "--results", root, "--format", "json", "--max-latency-ms", limit
    )
    assert out.returncode == 0, out.stderr
    kept = json.loads(out.stdout)
    assert 0 < len(kept) < len(points)
    assert all(p["predicted_prefill_latency_ms"] <= limit for p in kept)
    assert [p["predicted_prefill_latency_ms"] for p in kept] == sorted(
        p["predicted_prefill_latency_ms"] for p in kept
    )


def test_cli_csv_table_and_plots(job, tmp_path):
    root, store, result = job
    out = nas("pareto", store.job_id, "--results", root, "--format", "csv")
    assert out.returncode == 0, out.stderr
    from io import StringIO

    frame = pd.read_csv(StringIO(out.stdout))
    assert len(frame) == len(result.front)
    assert json.loads(frame["choices"][0])[0][0].startswith("attention:")
    png, page = tmp_path / "front.png", tmp_path / "front.html"
    out = nas("pareto", store.job_id, "--results", root, "--plot", png)
    assert out.returncode == 0, out.stderr
    assert "Pareto front" in out.stdout and result.front["point_id"][0] in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    api.plot_pareto(store.job_id, page, root)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "parent" in text
    assert "baseline: greedy" in text and "prefill latency (ms)" in text
    assert all(pid in text for pid in result.front["point_id"])  # every point carries its id


def test_library_query_filters_memory_and_latency(job):
    root, store, result = job
    everything = api.pareto(store.job_id, root)
    assert len(everything) == len(result.front)
    limit = float(everything["memory_mib"].median())
    small = query_front(store.dir, max_memory_mib=limit)
    assert 0 < len(small) < len(everything) and (small["memory_mib"] <= limit).all()


def test_infeasible_query_is_one_line_with_the_smallest_value(job):
    root, store, result = job
    out = nas("pareto", store.job_id, "--results", root, "--max-latency-ms", "0.000001")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    smallest = result.meta["smallest"]["predicted_prefill_latency_ms"]
    assert f"{smallest:.6g}" in lines[0]
    assert f"{result.front['predicted_prefill_latency_ms'].min():.6g}" in lines[0]


def test_missing_front_is_a_user_error(tmp_path):
    JobStore.create(tmp_path, "empty-job", {"name": "x"}, None)
    with pytest.raises(FrontMissing, match="no Pareto front"):
        api.pareto("empty-job", tmp_path)


def test_infeasible_target_raises_with_smallest_achievable(problem):
    smallest = problem.min_cost("prefill_latency_ms")
    target = Target("prefill_latency_ms", (smallest * 0.9,), relative=False)
    with pytest.raises(InfeasibleBudget) as info:
        select_front(problem, [SWEEP, target])
    assert f"{smallest:.6g}" in str(info.value) and "\n" not in str(info.value)
    recorded = select_front(problem, [SWEEP, target], on_infeasible="record")
    assert len(recorded.meta["infeasible"]) == 1 and len(recorded.front) >= 5


def test_measurements_are_recorded(job, tmp_path):
    root, store, result = job
    pid = result.front["point_id"][0]
    copy = JobStore.create(tmp_path, "copy", {"name": "copy"}, None)
    write_front(copy.dir, result)
    record_measurement(copy.dir, pid, latency_ms=1.5, kl=0.25)
    frame = read_front(copy.dir)
    row = frame[frame["point_id"] == pid].iloc[0]
    assert row["measured_latency_ms"] == 1.5 and row["measured_kl"] == 0.25
    assert pd.isna(frame[frame["point_id"] != pid]["measured_kl"]).all()
    csv = pd.read_csv(JobLayout(copy.dir).pareto_file("front.csv"))
    assert csv.loc[csv["point_id"] == pid, "measured_kl"].iloc[0] == 0.25


def test_front_from_the_real_stories260k_profiles_and_the_tiny_sweep():
    """Costs from the shipped onnxruntime profiles of stories260K, scores synthetic (no BLD):
    the tiny spec's 6-value prefill sweep gives at least 5 front points."""
    import random

    # parse_space goes through the variant families, whose modules build torch modules
    pytest.importorskip("torch", reason="compress.variants' families import torch")

    from compress.profile import load_profile
    from compress.variants import parse_space
    from nas.selection import problem_from_library, profile_latency
    from nas.spec import load_spec
    from tests.conftest import TINY_SPEC, need_shared_data

    need_shared_data()
    profiles = {
        "prefill_latency_ms": load_profile(
            ROOT / "hwprofiles" / "onnxruntime-cpu__stories260K__prefill-b1-s128.json"
        ),
        "decode_latency_ms": load_profile(
            ROOT / "hwprofiles" / "onnxruntime-cpu__stories260K__decode-b1-c128.json"
        ),
    }
    shape = profiles["prefill_latency_ms"].shape
    spec = load_spec(TINY_SPEC)
    attention, ffn = parse_space(spec.space.attention, spec.space.ffn, shape)
    rng = random.Random(0)
    rows = []
    for layer in range(shape.num_layers):
        for v in attention + ffn:
            parent = type(v)(v.kind, "parent").params(shape)
            saved = 1 - v.params(shape) / parent
            rows.append(
                {
                    "layer": layer,
                    "kind": v.kind,
                    "variant": str(v),
                    **v.cost_features(shape),
                    "kl": 0.0 if v.is_parent else (0.05 + saved) * rng.uniform(0.5, 2.0),
                }
            )
    lookup, fixed = profile_latency(profiles)
    problem = problem_from_library(
        pd.DataFrame(rows),
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        vocab_size=shape.vocab_size,
        tied_embeddings=shape.tied_embeddings,
        latency=lookup,
        latency_metrics=list(profiles),
        fixed_latency_ms=fixed,
        batch=1,
        context=128,
    )
    parent = problem.parent_indices()
    assert problem.cost(parent, "prefill_latency_ms") == pytest.approx(
        profiles["prefill_latency_ms"].predict_ms(problem.names(parent))
    )
    result = select_front(problem, [Target.of(t) for t in spec.targets], time_limit_s=30)
    assert len(result.front) >= 5
    assert (
        result.front["predicted_prefill_latency_ms"] < problem.cost(parent, "prefill_latency_ms")
    ).all()


def test_alternates_and_rerank_keep_the_best_solution_of_each_budget(problem, tmp_path):
    """With 3 solutions per budget every MIP solution is kept as an alternate; reranking by
    a (here synthetic) measured KL keeps exactly the best one of each budget, drops a best
    that another budget's best beats, and leaves the other strategies' points alone."""
    from nas.pareto import read_alternates
    from nas.rerank_stage import reranked_front

    points = [CandidatePoint("amoeba-dp", mask_choices((True,) * 11 + (False,)))]
    result = select_front(
        problem, [SWEEP], points, solutions_per_budget=3, diversity_layers=2, time_limit_s=30
    )
    alternates = result.alternates
    assert set(alternates["target"]) == set(result.meta["targets"])
    assert (alternates.groupby("target")["point_id"].nunique() == 3).all()
    store = JobStore.create(tmp_path, "alt", {"name": "alt"}, None)
    write_front(store.dir, result, problem)
    stored = read_alternates(store.dir)
    assert list(stored["point_id"]) == list(alternates["point_id"])
    # the "measured" KL prefers the MIP's last (least predicted-optimal) solution of each budget
    rank = alternates.groupby("target").cumcount()
    scores = dict(zip(alternates["point_id"], alternates["predicted_kl"] - rank, strict=True))
    front = read_front(store.dir)
    new, changed = reranked_front(front, alternates, scores)
    mip = new[new["strategy"] == "puzzle-mip"]
    for target, group in mip.groupby("target"):
        assert len(group) == 1
        options = alternates[alternates["target"] == target]["point_id"]
        assert group["rerank_kl"].iloc[0] == min(scores[p] for p in options)
    assert changed >= 1 and new["point_id"].is_unique
    assert set(front[front["strategy"] != "puzzle-mip"]["point_id"]) <= set(new["point_id"])
    # no kept budget point is beaten on predicted cost and measured KL by another
    cost = "predicted_prefill_latency_ms"
    rows = mip[[cost, "rerank_kl"]].values.tolist()
    assert not any(o[0] <= r[0] and o[1] <= r[1] and o != r for r in rows for o in rows)
    assert new[cost].is_monotonic_increasing

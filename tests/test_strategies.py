"""Torch-side strategies: the AmoebaLLM depth DP's metric and masks, and diswot-evolution on Ray."""

from __future__ import annotations

import pytest
import torch

from compress.evaluate import kl_from_logits
from nas.selection.dominance import non_dominated
from nas.strategies import DROPPED_LAYER, PARENT_LAYER
from nas.strategies.depth import CalibrationKL, amoeba_dp_points, depth_masks
from nas.strategies.evolution import (
    ParamsLatency,
    diswot_evolution,
    homogeneous_choices,
    kept_layers,
)


@pytest.fixture(scope="module")
def calib(tiny_splits):
    return tiny_splits.train[:16]


def test_calibration_kl_reuses_the_prefix_exactly(stories_parent, calib):
    adapter = stories_parent.adapter
    metric = CalibrationKL(adapter, calib)
    assert metric((True,) * 5) == 0.0
    mask = (True, True, False, True, False)
    with torch.no_grad():
        x = adapter.embed(calib)
        for i, layer in enumerate(adapter.layers):
            if mask[i]:
                x = layer(x)
        expected = float(kl_from_logits(adapter(calib), adapter.head(x)).mean())
    assert metric(mask) == pytest.approx(expected, rel=1e-4)
    metric(mask)
    assert metric.evaluations == 2  # memoised


def test_depth_dp_masks_per_depth_and_beats_dropping_the_last_layer(stories_parent, calib):
    """Acceptance 5: one mask per depth with the right count; 4 of 5 layers no worse than
    dropping the last layer."""
    adapter = stories_parent.adapter
    masks = depth_masks(adapter, calib)
    assert [m.removed for m in masks] == [0, 1, 2, 3, 4]
    for m in masks:
        assert len(m.mask) == 5 and sum(m.mask) == 5 - m.removed
    metric = CalibrationKL(adapter, calib)
    drop_last = metric((True, True, True, True, False))
    assert masks[1].metric == pytest.approx(metric(masks[1].mask))
    assert masks[1].metric <= drop_last + 1e-9
    # keep_last: the last layer is never dropped
    kept = depth_masks(adapter, calib, keep_last=1)
    assert all(m.mask[-1] for m in kept) and len(kept) == 5
    points = amoeba_dp_points(adapter, calib, max_removed=2)
    assert [p.metrics["layers_removed"] for p in points] == [0.0, 1.0, 2.0]
    assert points[0].choices == (PARENT_LAYER,) * 5
    assert sum(c == DROPPED_LAYER for c in points[2].choices) == 2


def test_homogeneous_choices_and_kept_layers():
    assert kept_layers(5, 5) == (0, 1, 2, 3, 4)
    assert kept_layers(5, 3) == (0, 2, 4)
    assert kept_layers(5, 4, {1: (True, False, True, True, True)}) == (0, 2, 3, 4)
    choices = homogeneous_choices(5, 3, "attention:kv_heads=2", "ffn:width=86")
    assert choices[1] == DROPPED_LAYER and choices[0] == ("attention:kv_heads=2", "ffn:width=86")
    with pytest.raises(ValueError):
        kept_layers(5, 0)


def test_non_dominated_maximising_one_objective():
    """The evolution's use: DisWOT (``s``) maximised by negating it, latency (``l``) minimised."""
    rows = [
        {"s": 1.0, "l": 5.0},
        {"s": 2.0, "l": 5.0},  # beats the first
        {"s": 0.5, "l": 1.0},
        {"s": 0.4, "l": 2.0},  # beaten by the third
    ]
    assert non_dominated(rows, lambda r: (-r["s"], r["l"])) == [rows[1], rows[2]]


def test_diswot_evolution_on_ray_tune(stories_parent, tiny_splits):
    import ray

    adapter = stories_parent.adapter
    latency = ParamsLatency(adapter.shape, params_per_ms=1e3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        points = diswot_evolution(
            adapter,
            tiny_splits.train[:4],
            latency,
            depths=[3, 4, 5],
            attention_options=["attention:parent", "attention:kv_heads=1"],
            ffn_options=["ffn:parent", "ffn:width=86", "ffn:width=43"],
            trials=6,
            population_size=4,
        )
    finally:
        ray.shutdown()
    assert points
    lat = [p.metrics["predicted_latency_ms"] for p in points]
    score = [p.metrics["diswot"] for p in points]
    assert lat == sorted(lat)
    # a Pareto set: slower points must score strictly better
    assert all(b > a for a, b in zip(score, score[1:], strict=False))
    for p in points:
        assert p.strategy == "diswot-evolution" and len(p.choices) == 5
        assert p.metrics["predicted_latency_ms"] == pytest.approx(latency(p.choices))
        kept = {pair for pair in p.choices if pair != DROPPED_LAYER}
        assert len(kept) == 1  # homogeneous
        assert sum(pair != DROPPED_LAYER for pair in p.choices) == p.metrics["depth"]
        assert p.metrics["diswot"] <= 0


def test_space_options_and_candidates(stories_parent):
    from compress.variants import parse_space
    from nas.strategies import StrategyPoint
    from nas.strategies.evolution import space_options

    attention, ffn = parse_space(
        ["kv_heads=2", "linear", "noop"], [0.5, "linear", "noop"], stories_parent.shape
    )
    assert space_options(attention + ffn) == (
        ["attention:parent", "attention:kv_heads=2"],
        ["ffn:parent", "ffn:width=86"],
    )
    point = StrategyPoint("amoeba-dp", (PARENT_LAYER, DROPPED_LAYER), {"calib_kl": 0.1})
    assert point.to_dict()["choices"] == [list(PARENT_LAYER), list(DROPPED_LAYER)]

"""AmoebaLLM's depth DP on synthetic metrics with known optima."""

import itertools
import math
import random

import pytest

from nas.selection import SelectionError, depth_dp
from nas.selection.depth_dp import mask_choices


def _additive(weights):
    """KL-like metric: each dropped layer adds its own cost (the optimum drops the cheapest)."""
    calls = []

    def metric(mask):
        calls.append(mask)
        return sum(w for w, keep in zip(weights, mask, strict=True) if not keep)

    return metric, calls


@pytest.mark.parametrize(
    "num_layers, keep_last, seed", [(8, 0, 0), (9, 2, 1), (5, 1, 2), (1, 0, 3)]
)
def test_dp_finds_the_known_optimum_for_every_depth(num_layers, keep_last, seed):
    rng = random.Random(seed)
    weights = [rng.uniform(0.1, 5.0) for _ in range(num_layers)]
    metric, calls = _additive(weights)
    masks = depth_dp(num_layers, metric, keep_last=keep_last)
    droppable = num_layers - keep_last
    limit = min(droppable, num_layers - 1)
    # each distinct mask is evaluated once, about droppable x depths times in all
    assert len(set(calls)) == len(calls) <= 1 + droppable * (limit + 1)
    assert [m.removed for m in masks] == list(range(limit + 1))
    for m, result in enumerate(masks):
        assert len(result.mask) == num_layers
        assert result.kept == num_layers - m and len(result.dropped_layers) == m
        assert all(result.mask[num_layers - keep_last :])  # the last layers are kept
        # exhaustive optimum over every way to drop m of the droppable layers
        best = min(
            (sum(weights[i] for i in drop) for drop in itertools.combinations(range(droppable), m)),
            default=0.0,
        )
        assert result.metric == pytest.approx(best)
        assert result.metric == pytest.approx(metric(result.mask))


def test_dp_with_interacting_layers_avoids_dropping_neighbours():
    # interaction: dropping two adjacent layers costs extra, so the DP must avoid neighbours
    weights = [1.0, 0.2, 0.3, 0.25, 2.0, 0.1]
    seen = []

    def metric(mask):
        seen.append(mask)
        dropped = [i for i, keep in enumerate(mask) if not keep]
        adjacent = sum(1 for a, b in itertools.pairwise(dropped) if b == a + 1)
        return sum(weights[i] for i in dropped) + 10.0 * adjacent

    masks = depth_dp(6, metric, keep_last=0, max_removed=3)
    assert len(seen) == len(set(seen))
    assert [m.kept for m in masks] == [6, 5, 4, 3]
    assert masks[1].dropped_layers == (5,)
    assert masks[2].dropped_layers == (1, 5)
    assert masks[3].dropped_layers == (1, 3, 5)
    assert masks[3].metric == pytest.approx(0.2 + 0.25 + 0.1)


def test_mask_choices_map_dropped_layers_to_noops():
    assert mask_choices((True, False)) == (
        ("attention:parent", "ffn:parent"),
        ("attention:noop", "ffn:noop"),
    )


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"keep_last": 5}, "keep_last"),
        ({"max_removed": 4}, "max_removed"),
        ({"keep_last": 2, "max_removed": 3}, "max_removed"),
    ],
)
def test_bad_settings_are_user_errors(kwargs, needle):
    with pytest.raises(SelectionError, match=needle):
        depth_dp(4, lambda mask: 0.0, **kwargs)


def test_non_finite_metric_is_an_error():
    with pytest.raises(SelectionError, match="nan"):
        depth_dp(3, lambda mask: math.nan if not all(mask) else 0.0)

"""DisWOT proxies: well-defined matrices, zero for the parent, ordered by damage, and the prefilter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compress.builders import build_variant
from compress.diswot import (
    DiswotProbe,
    prefilter_variants,
    rank_variants,
    relation_matrix,
    semantic_matrix,
)
from compress.scoring import ActivationCache
from compress.variants import VariantSpec, parse_space


@pytest.fixture(scope="module")
def calib(tiny_splits):
    return tiny_splits.train[:8]


@pytest.fixture(scope="module")
def probe(stories_parent, calib):
    adapter = stories_parent.adapter
    return DiswotProbe(adapter, ActivationCache.build(adapter, calib), max_positions=256)


def test_relation_matrix_rows_are_unit():
    f = torch.randn(10, 6)
    g = relation_matrix(f)
    assert g.shape == (10, 10)
    assert torch.allclose(g.norm(dim=1), torch.ones(10), atol=1e-5)


def test_semantic_matrix_is_the_head_weight_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11, bias=False)
    hidden, targets = torch.randn(20, 6), torch.randint(0, 11, (20,))
    classes = torch.tensor([3, 0, 7])
    m = semantic_matrix(hidden, head, targets, classes)
    # reference: autograd of the mean cross-entropy w.r.t. (a copy of) the head weight
    weight = head.weight.detach().clone().requires_grad_(True)
    F.cross_entropy(hidden @ weight.T, targets).backward()
    g = weight.grad[classes]
    assert torch.allclose(m, F.normalize(g @ g.T, dim=1), atol=1e-5)
    assert head.weight.grad is None  # the model itself gets no gradient


def test_parent_scores_zero_and_damage_scores_lower(stories_parent, probe):
    adapter = stories_parent.adapter
    same = probe.score(adapter)
    assert same.relation == pytest.approx(0.0, abs=1e-9)
    assert same.semantic == pytest.approx(0.0, abs=1e-9)
    for layer in range(adapter.num_layers):
        scores = {}
        for width in (129, 43):
            module = build_variant(VariantSpec("ffn", "width", width), adapter.ffn(layer))
            old = adapter.replace(layer, "ffn", module)
            try:
                from_layer = probe.score_from_layer(adapter, layer)
                whole = probe.score(adapter)
            finally:
                adapter.replace(layer, "ffn", old)
            assert from_layer.score == pytest.approx(whole.score, rel=1e-4, abs=1e-9)
            scores[width] = from_layer.score
        assert scores[129] > scores[43] and scores[129] < 0


def test_prefilter_keeps_the_best_per_layer_and_kind(stories_parent, calib):
    adapter = stories_parent.adapter
    attention, ffn = parse_space(
        ["kv_heads=2", "kv_heads=1", "linear", "noop"], [0.75, 0.5, 0.25, "noop"], adapter.shape
    )
    variants = attention + ffn
    ranked = rank_variants(adapter, variants, calib, max_positions=256)
    assert len(ranked) == adapter.num_layers * sum(v.trainable for v in variants)
    kept = prefilter_variants(adapter, variants, calib, keep=2, max_positions=256)
    assert set(kept) == {(layer, k) for layer in range(5) for k in ("attention", "ffn")}
    for (layer, kind), chosen in kept.items():
        assert [v for v in variants if v in chosen] == chosen  # order of the space
        assert {v for v in chosen if not v.trainable} == {
            v for v in variants if v.kind == kind and not v.trainable
        }
        trainable = [v for v in chosen if v.trainable]
        assert len(trainable) == 2
        rows = sorted(
            (r for r in ranked if r.layer == layer and r.variant.kind == kind),
            key=lambda r: r.score,
            reverse=True,
        )
        assert set(trainable) == {r.variant for r in rows[:2]}
    with pytest.raises(ValueError):
        prefilter_variants(adapter, variants, calib, keep=0)


def test_calibration_rows_keep_init_and_probe_apart():
    from compress.diswot import calibration_rows

    probe, init = calibration_rows(40, 128, 512, 4096)
    assert probe == 5 and init == slice(5, 37)
    probe, init = calibration_rows(4, 128, 512, 4096)
    assert probe == 3 and init == slice(3, 4)
    assert calibration_rows(1, 128, 512, 4096) == (1, slice(0, 1))

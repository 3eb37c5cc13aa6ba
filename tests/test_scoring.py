"""Replace-one-block scoring: prefix reuse is exact, and the Ray stage scores, merges and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from compress.builders import build_variant
from compress.evaluate import kl_from_logits, lm_loss
from compress.scoring import ActivationCache, parent_scores, score_block, score_replacement
from compress.variants import VariantSpec


@pytest.fixture(scope="module")
def eval_tokens(tiny_splits):
    return tiny_splits.eval[:16]


def test_cache_on_disk_equals_memory_and_is_reused(stories_parent, eval_tokens, tmp_path):
    adapter = stories_parent.adapter
    memory = ActivationCache.build(adapter, eval_tokens, batch_size=8)
    disk = ActivationCache.build(adapter, eval_tokens, batch_size=5, folder=tmp_path / "c")
    for layer in range(adapter.num_layers + 1):
        assert torch.allclose(memory.layer_input(layer, 0, 16), disk.layer_input(layer, 0, 16))
    with torch.no_grad():
        final = adapter.head(disk.final(0, 16))
        assert torch.allclose(final, adapter(eval_tokens), atol=1e-5)
    mtime = (tmp_path / "c" / "residual_000.npy").stat().st_mtime_ns
    again = ActivationCache.build(adapter, eval_tokens, folder=tmp_path / "c")
    assert again.fingerprint == disk.fingerprint
    assert (tmp_path / "c" / "residual_000.npy").stat().st_mtime_ns == mtime
    # other tokens -> rebuilt, not silently reused
    other = ActivationCache.build(adapter, eval_tokens[:4], folder=tmp_path / "c")
    assert other.num_sequences == 4


@pytest.mark.parametrize(
    "layer,text", [(0, "ffn:width=86"), (2, "attention:kv_heads=1"), (4, "ffn:noop")]
)
def test_prefix_reuse_matches_full_forward(stories_parent, eval_tokens, layer, text):
    adapter = stories_parent.adapter
    cache = ActivationCache.build(adapter, eval_tokens)
    spec = VariantSpec.parse(text)
    module = build_variant(spec, adapter.subblock(layer, spec.kind))
    before = adapter.subblock(layer, spec.kind)
    scores = score_replacement(adapter, cache, layer, spec.kind, module, batch_size=6)
    assert adapter.subblock(layer, spec.kind) is before  # the parent is restored
    with torch.no_grad():
        parent_logits = adapter(eval_tokens)
        adapter.replace(layer, spec.kind, module)
        try:
            logits = adapter(eval_tokens)
        finally:
            adapter.replace(layer, spec.kind, before)
    kl = float(kl_from_logits(parent_logits, logits).mean())
    top1 = float((logits.argmax(-1) == parent_logits.argmax(-1)).float().mean())
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), eval_tokens[:, 1:].reshape(-1)
    )
    assert scores.kl == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert scores.kl > 0.01
    assert scores.top1 == pytest.approx(top1, abs=1e-6)
    assert scores.lm_loss == pytest.approx(float(ce), rel=1e-5)
    assert scores.tokens == eval_tokens.numel()


def test_joint_block_score_is_the_whole_block_replaced(stories_parent, eval_tokens):
    """A joint block (attention and FFN of one layer replaced together) scores the model with
    both replaced (full forward), and the parent is restored."""
    adapter = stories_parent.adapter
    cache = ActivationCache.build(adapter, eval_tokens)
    layer = 2
    specs = [VariantSpec.parse("attention:kv_heads=1"), VariantSpec.parse("ffn:width=43")]
    modules = {v.kind: build_variant(v, adapter.subblock(layer, v.kind)) for v in specs}
    before = {k: adapter.subblock(layer, k) for k in modules}
    joint = score_block(adapter, cache, layer, modules, batch_size=6)
    assert all(adapter.subblock(layer, k) is m for k, m in before.items())
    with torch.no_grad():
        parent_logits = adapter(eval_tokens)
        for kind, module in modules.items():
            adapter.replace(layer, kind, module)
        try:
            logits = adapter(eval_tokens)
        finally:
            for kind, module in before.items():
                adapter.replace(layer, kind, module)
    assert joint.kl == pytest.approx(float(kl_from_logits(parent_logits, logits).mean()), rel=1e-4)
    halves = [score_block(adapter, cache, layer, {k: m}, 6).kl for k, m in modules.items()]
    assert joint.kl != pytest.approx(sum(halves), rel=1e-3)  # not additive in general


def test_parent_scores_are_the_parent(stories_parent, eval_tokens):
    adapter = stories_parent.adapter
    scores = parent_scores(adapter, ActivationCache.build(adapter, eval_tokens))
    assert scores.kl == 0.0 and scores.top1 == 1.0
    assert scores.lm_loss == pytest.approx(lm_loss(adapter, eval_tokens)["loss"], rel=1e-6)


def _job(tmp_path, stories_parent, tiny_splits):
    from compress.builders import InitData
    from compress.library import save_variant
    from nas.spec import parse_spec
    from nas.stage_io import Baseline, BLDResult, Prepared
    from nas.store import JobStore
    from tests.conftest import STORIES, TINYSTORIES

    spec = parse_spec(
        {
            "name": "score",
            "model": {"source": str(STORIES)},
            "data": {"files": [str(TINYSTORIES)], "seq_len": 128},
            "space": {
                "attention": ["parent", "kv_heads=2", "noop"],
                "ffn": ["parent", 0.5, "noop"],
            },
            "scoring": {"eval_tokens": 1024, "batch_size": 4},
            "ray": {"num_cpus": 2},
        }
    )
    store = JobStore.create(tmp_path, "score-job", spec.model_dump(mode="json"), None)
    adapter = stories_parent.adapter
    store.write_stage("baseline", {"shape": adapter.shape.to_dict(), "loss": 0.0})
    cache = ActivationCache.build(adapter, tiny_splits.train[:4])
    for layer in range(adapter.num_layers):
        x = cache.layer_input(layer, 0, 4)
        for text in ("attention:kv_heads=2", "ffn:width=86"):
            spec_v = VariantSpec.parse(text)
            with torch.no_grad():
                a = adapter.attention(layer)(x)
                inputs = x if spec_v.kind == "attention" else x + a
                outputs = a if spec_v.kind == "attention" else adapter.ffn(layer)(inputs)
            init = InitData(inputs.reshape(-1, 64), outputs.reshape(-1, 64))
            module = build_variant(spec_v, adapter.subblock(layer, spec_v.kind), init)
            save_variant(store.library, layer, spec_v, module, {"nmse_final": 0.1})
    prepared = Prepared(stories_parent, tiny_splits, Baseline(0.0, 1.0, 0, 0.0))
    library = BLDResult(store.path("library"), 2 * adapter.num_layers, 0, 0, True, 0.0)
    return spec, store, prepared, library


def test_scoring_stage_on_ray_fills_the_library_and_resumes(stories_parent, tiny_splits, tmp_path):
    import ray

    from nas.library import library_frame
    from nas.scoring_stage import read_scores, score_file_name, stage_scoring

    spec, store, prepared, library = _job(tmp_path, stories_parent, tiny_splits)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = stage_scoring(spec, store, prepared, library, report=lambda m: None)
        assert result.scored == result.computed == 5 * 6  # parent, noop, one trained, per kind
        rows = read_scores(store.dir)
        by_key = {(r["layer"], r["variant"]): r for r in rows}
        for layer in range(5):
            assert by_key[(layer, "ffn:parent")]["kl"] == 0.0
            assert by_key[(layer, "attention:parent")]["top1"] == 1.0
            assert by_key[(layer, "ffn:noop")]["kl"] > by_key[(layer, "ffn:width=86")]["kl"] > 0
        # the stage's number equals a direct replace-one-block score of the library variant
        from compress.library import load_variant

        adapter = stories_parent.adapter
        module = load_variant(store.library, 3, VariantSpec.parse("ffn:width=86"), adapter)
        cache = ActivationCache.build(adapter, tiny_splits.eval[:8])
        direct = score_replacement(adapter, cache, 3, "ffn", module)
        assert by_key[(3, "ffn:width=86")]["kl"] == pytest.approx(direct.kl, rel=1e-5)
        frame = library_frame(store.dir)
        assert not frame["kl"].isna().any()
        assert frame.set_index(["layer", "variant"]).loc[
            (3, "ffn:width=86"), "kl"
        ] == pytest.approx(direct.kl, rel=1e-5)
        # the library may still grow while BLD is unfinished: the stage is not recorded yet
        assert not store.stage_done("scoring")
        store.write_stage("bld", {"variants": 10})
        # resume: only the missing score is computed, the others are untouched
        gone = store.scores.joinpath(score_file_name(2, VariantSpec.parse("attention:kv_heads=2")))
        gone.unlink()
        stamps = {p: p.stat().st_mtime_ns for p in store.scores.glob("L*.json")}
        again = stage_scoring(spec, store, prepared, library, report=lambda m: None)
        assert again.computed == 1 and again.scored == 30 and gone.exists()
        assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
        assert json.loads(gone.read_text())["variant"] == "attention:kv_heads=2"
        # done -> nothing recomputed
        assert store.stage_done("scoring")
        assert stage_scoring(spec, store, prepared, library, report=lambda m: None).computed == 0
    finally:
        ray.shutdown()

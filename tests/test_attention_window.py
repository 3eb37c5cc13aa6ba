"""The sliding-window attention family (``attention:window=W[,kv_heads=N]``): syntax, costs,
exactness against dense masked attention, the bounded KV cache, BLD, ONNX and HF export."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.builders import build_variant
from compress.export.hf import export_hf
from compress.export_onnx import OrtDecoder, export_onnx
from compress.families.attention_window import WindowAttention
from compress.library import read_records
from compress.shape import ModelShape
from compress.student import assemble_student, infer_choices, load_student, save_student
from compress.variants import VariantSpec, parse_space
from nas.library import library_frame
from tests.conftest import ROOT, need_shared_data

SHAPE = ModelShape("llama", 5, 64, 8, 4, 8, 172, 512, False, False)
CHOICES = [
    ["attention:window=8", "ffn:parent"],
    ["attention:window=4,kv_heads=1", "ffn:width=86"],
    ["attention:noop", "ffn:parent"],
    ["attention:kv_heads=2", "ffn:parent"],
    ["attention:window=16,kv_heads=2", "ffn:linear"],
]


def test_syntax_checks_and_cost_features():
    spec = VariantSpec.parse("attention:window=128,kv_heads=1")
    assert str(spec) == "attention:window=128,kv_heads=1" and spec.option("kv_heads") == 1
    assert VariantSpec.parse(str(spec)) == spec
    attention, _ = parse_space(["window=32", "window=16,kv_heads=2"], [], SHAPE)
    assert [str(v) for v in attention] == [
        "attention:parent",
        "attention:window=32",
        "attention:window=16,kv_heads=2",
    ]
    for bad in ("attention:window=0", "attention:window=8,heads=2", "ffn:window=8"):
        with pytest.raises(ValueError):
            VariantSpec.parse(bad)
    with pytest.raises(ValueError, match="KV heads must divide"):
        VariantSpec.parse("attention:window=8,kv_heads=3").check(SHAPE)
    parent = VariantSpec.parse("attention:parent").cost_features(SHAPE)
    window = VariantSpec.parse("attention:window=16").cost_features(SHAPE)
    narrow = VariantSpec.parse("attention:window=16,kv_heads=1").cost_features(SHAPE)
    assert window == {**parent, "kv_window": 16}
    assert narrow["kv_values_per_token"] == 2 * 8 and narrow["params"] < parent["params"]


def _dense_window(m: WindowAttention, x: torch.Tensor, window: int) -> torch.Tensor:
    """The reference: absolute rotary, every key, a banded causal mask."""
    b, s, _ = x.shape
    h = m.input_layernorm(x)
    q = m.q_proj(h).view(b, s, m.num_heads, m.head_dim).transpose(1, 2)
    k = m.k_proj(h).view(b, s, m.num_kv_heads, m.head_dim).transpose(1, 2)
    v = m.v_proj(h).view(b, s, m.num_kv_heads, m.head_dim).transpose(1, 2)
    cos, sin = m.rotary.cos_sin(torch.arange(s), q.dtype)
    q, k = m.rotary.apply(q, k, cos, sin)
    groups = m.num_heads // m.num_kv_heads
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    i = torch.arange(s)
    mask = (i[None] <= i[:, None]) & (i[None] > i[:, None] - window)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return m.o_proj(out.transpose(1, 2).reshape(b, s, -1))


@pytest.mark.parametrize("text", ["attention:window=5", "attention:window=7,kv_heads=2"])
@torch.no_grad()
def test_matches_dense_masked_attention_with_a_bounded_cache(stories_parent, text):
    parent = stories_parent.adapter.attention(1)
    spec = VariantSpec.parse(text)
    module = build_variant(spec, parent).eval()
    assert isinstance(module, WindowAttention) and module.max_cache_tokens == spec.value
    x = torch.randn(2, 19, 64, generator=torch.Generator().manual_seed(0))
    ref = _dense_window(module, x, spec.value)
    assert torch.allclose(module(x), ref, atol=1e-5)
    # prefill 6 tokens, then 13 decode steps: the cache never holds more than W positions
    delta, key, value = module.forward_cached(x[:, :6])
    steps = [delta]
    for t in range(6, 19):
        delta, key, value = module.forward_cached(x[:, t : t + 1], key, value)
        assert key.shape[2] == value.shape[2] == min(t + 1, spec.value)
        steps.append(delta)
    assert torch.allclose(torch.cat(steps, 1), ref, atol=1e-5)
    # a window as long as the text is the parent's attention (same KV heads)
    if spec.option("kv_heads") is None:
        wide = build_variant(VariantSpec.parse("attention:window=64"), parent).eval()
        assert torch.allclose(wide(x), parent(x), atol=1e-5)


@pytest.fixture(scope="module")
def windowed(stories_parent):
    return assemble_student(stories_parent.adapter, CHOICES).eval()


def test_student_round_trip(windowed, tmp_path):
    assert [[str(a), str(f)] for a, f in infer_choices(windowed)] == CHOICES
    save_student(windowed, tmp_path)
    loaded = load_student(tmp_path, tokenizer=False)
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.model(ids), windowed(ids))


def test_onnx_parity_prefill_and_decode_with_a_bounded_cache(windowed, tmp_path):
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(2))
    result = export_onnx(windowed, tmp_path, prompt_ids=ids)  # 24 prompt + 32 greedy tokens
    assert result.parity["passed"] and result.parity["greedy_equal"]
    assert result.parity["decode_max_abs_diff"] <= 1e-4
    layout = json.loads((tmp_path / "export.json").read_text())
    assert [(c["layer"], c["kv_heads"], c["max_cache"]) for c in layout["cache"]] == [
        (0, 4, 8),
        (1, 1, 4),
        (3, 2, None),
        (4, 2, 16),
    ]
    runner = OrtDecoder(tmp_path)
    logits, past = runner.run_prefill(ids.numpy())
    assert [p.shape[2] for p in past] == [8, 8, 4, 4, 24, 24, 16, 16]
    with torch.no_grad():
        ref, ref_past = windowed.forward_cached(ids)
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)
    token = logits[:, -1:].argmax(-1)
    step, past = runner.run_decode(token, past)
    with torch.no_grad():
        ref_step, _ = windowed.forward_cached(torch.from_numpy(token), ref_past)
    np.testing.assert_allclose(step, ref_step.numpy(), atol=1e-4)
    assert [p.shape[2] for p in past] == [8, 8, 4, 4, 25, 25, 16, 16]


def test_hf_export_loads_in_transformers_and_matches(stories_parent, windowed, tmp_path):
    config = stories_parent.hf_model.config.to_dict()
    record = export_hf(windowed, tmp_path, CHOICES, stories_parent.tokenizer, config)
    assert record["layout"] == "nas_llm (remote code)" and record["parity"]["passed"]
    blocks = json.loads((tmp_path / "config.json").read_text())["block_configs"]
    assert blocks[1]["attention"] == {
        "no_op": False,
        "replace_with_linear": False,
        "num_key_value_heads": 1,
        "sliding_window": 4,
    }
    assert "sliding_window" not in blocks[3]["attention"]


WINDOW_SPEC = Path(__file__).with_name("window_tiny.yaml")


@pytest.mark.slow
def test_tiny_pipeline_with_windowed_variants(tmp_path):
    """BLD trains the window variants from the parent's attention, scoring, the profile (window
    entries measured into the job), the MIP and the ONNX export all run end to end."""
    need_shared_data()
    run = [sys.executable, "-m", "nas.cli", "run", str(WINDOW_SPEC), "--job-id", "w"]
    out = subprocess.run(
        [*run, "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    job = tmp_path / "w"
    records = {(r["layer"], r["variant"]): r for r in read_records(job / "library")}
    trained = [r for (_, v), r in records.items() if v.startswith("attention:window")]
    assert len(trained) == 2 * 5 and all(r["nmse_final"] <= r["nmse_init"] for r in trained)
    # the narrow window with one KV head starts far from the parent: BLD must improve it
    narrow = [r for r in trained if r["variant"] == "attention:window=16,kv_heads=1"]
    assert all(r["nmse_final"] < r["nmse_init"] and not r["kept_initialisation"] for r in narrow)
    frame = library_frame(job)
    window = frame[frame.variant == "attention:window=16,kv_heads=1"]
    assert (window.kv_window == 16).all() and window.kl.notna().all()
    profiles = [json.loads(p.read_text()) for p in job.rglob("onnxruntime-cpu__*.json")]
    assert profiles and all("attention:window=32" in p["entries"] for p in profiles)
    front = json.loads((job / "pareto" / "front.json").read_text())
    assert front and any("window" in a for r in front for a, _ in r["choices"])

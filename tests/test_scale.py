"""Random-weight parents of real shapes, memory-mapped (lazy) weights, a bfloat16 pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from compress.random_parent import CONFIGS, parameter_shapes, shipped_configs
from tests.conftest import ROOT, STORIES, need_shared_data

DATA = ROOT / "tests" / "data"

# published parameter counts (model cards) and shapes of the shipped configs
PUBLISHED = {
    "smollm2-360m": (362e6, 32, 960, 15, 5, 2560, 49152),
    "llama-3.2-1b": (1.24e9, 16, 2048, 32, 8, 8192, 128256),
    "qwen2.5-1.5b": (1.54e9, 28, 1536, 12, 2, 8960, 151936),
    "llama-3.2-3b": (3.21e9, 28, 3072, 24, 8, 8192, 128256),
    "llama-3.1-8b": (8.03e9, 32, 4096, 32, 8, 14336, 128256),
    "llama-3.1-70b": (70.6e9, 80, 8192, 64, 8, 28672, 128256),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_configs_have_the_published_shapes(name):
    """Built on the meta device (no memory): the parameter count and shape match the card."""
    from transformers import AutoConfig

    from compress.loading import shape_from_config

    assert name in shipped_configs()
    raw = json.loads((CONFIGS / f"{name}.json").read_text())
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    params = sum(torch.Size(s).numel() for s in parameter_shapes(config).values())
    count, layers, hidden, heads, kv, ffn, vocab = PUBLISHED[name]
    assert abs(params - count) / count < 0.005, params
    shape = shape_from_config(config)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads) == (layers, hidden, heads)
    assert (shape.num_kv_heads, shape.intermediate_size, shape.vocab_size) == (kv, ffn, vocab)


def _mid_config(tmp_path):
    """Layers of ~1.5 MiB in bfloat16: large against a page, small for a test."""
    raw = json.loads((DATA / "tiny_random_llama.json").read_text())
    raw.update(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, head_dim=32)
    raw["nas_tokenizer"] = str(STORIES)
    path = tmp_path / "mid.json"
    path.write_text(json.dumps(raw))
    return path


def test_random_parent_is_memory_mapped_and_runs_one_layer_alone(tmp_path, monkeypatch):
    """Loading reads no weights; one layer's forward pass makes (about) that layer resident,
    not the others; ``release`` hands the pages back and the outputs stay the same."""
    need_shared_data()
    from compress.loading import load_parent
    from compress.memory import resident_bytes
    from compress.random_parent import MARKER

    monkeypatch.setenv("NAS_CACHE", str(tmp_path / "cache"))
    parent = load_parent(f"random:{_mid_config(tmp_path)}", dtype=torch.bfloat16)
    assert (parent.weights_dir / MARKER).exists()
    adapter = parent.adapter
    weight = adapter.layers[2].ffn.up_proj.weight
    assert weight.dtype == torch.bfloat16 and weight.shape == (1024, 256)
    layer_bytes = sum(p.numel() * p.element_size() for p in adapter.layers[2].parameters())
    total = sum(p.numel() * p.element_size() for p in parent.hf_model.parameters())
    parent.release()
    assert resident_bytes(parent.weights_dir) < layer_bytes / 4  # nothing read yet
    x = torch.randn(1, 8, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        y = adapter.layers[2](x)
    one = resident_bytes(parent.weights_dir)
    assert layer_bytes * 0.9 <= one <= layer_bytes * 1.3, (one, layer_bytes, total)
    assert one < total / 2
    assert parent.release() > 0
    assert resident_bytes(parent.weights_dir) < layer_bytes / 4
    with torch.no_grad():
        assert torch.equal(adapter.layers[2](x), y)  # read again from the file, same weights


def test_random_parent_is_deterministic_and_refuses_a_bad_source(tmp_path, monkeypatch):
    need_shared_data()
    from compress.errors import ModelLoadError
    from compress.loading import load_parent

    monkeypatch.setenv("NAS_CACHE", str(tmp_path / "a"))
    a = load_parent(f"random:{DATA / 'tiny_random_llama.json'}", dtype=torch.float32)
    monkeypatch.setenv("NAS_CACHE", str(tmp_path / "b"))
    b = load_parent(f"random:{DATA / 'tiny_random_llama.json'}", dtype=torch.float32)
    assert a.shape.key == "llama-L5-h64-a8x4x8-f172-v512"  # stories260K's shape
    for pa, pb in zip(a.hf_model.parameters(), b.hf_model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ModelLoadError, match="no shipped config 'nope'"):
        load_parent("random:nope")


def test_bfloat16_pipeline_end_to_end(tmp_path, monkeypatch):
    """Every stage of a tiny random parent in bfloat16 (variants in ``space.layers`` only):
    activations and library at the run dtype, students measured (onnxruntime, fp32) and
    exported in bf16, the random weights labelled."""
    need_shared_data()
    from compress.capture import read_meta
    from nas import api
    from nas.pareto import read_meta as front_meta

    monkeypatch.setenv("NAS_CACHE", str(tmp_path / "cache"))
    store = api.run(DATA / "tiny_random_bf16.yaml", "bf16", tmp_path / "results", report=print)
    manifest = store.manifest()
    assert manifest["state"] == "finished", manifest
    assert read_meta(store.path("activations", "train")).dtype == "bfloat16"
    from safetensors.torch import load_file

    library = sorted(store.path("library").glob("L*.safetensors"))
    assert {int(f.name[1:4]) for f in library} == {1, 3}  # space.layers
    assert library and all(
        t.dtype == torch.bfloat16 for f in library for t in load_file(str(f)).values()
    )
    meta = front_meta(store.dir)
    assert "random weights: quality figures are meaningless" in meta["quality_note"]
    exported = list(store.path("students").glob("*/hf/model.safetensors"))
    assert exported
    weights = load_file(str(exported[0]))
    assert all(t.dtype == torch.bfloat16 for k, t in weights.items() if k.endswith("weight"))


def test_space_layers_outside_the_parent_are_refused():
    from compress.shape import ModelShape
    from nas.bld_stage import planned_variants
    from nas.errors import SpecError
    from nas.spec import load_spec

    spec = load_spec(DATA / "tiny_random_bf16.yaml")
    shape = ModelShape("llama", 5, 64, 8, 4, 8, 172, 512, False, True)
    assert {layer for layer, _ in planned_variants(spec, shape)} == {1, 3}
    bad = spec.model_copy(update={"space": spec.space.model_copy(update={"layers": [1, 7]})})
    with pytest.raises(SpecError, match=r"space.layers: \[1, 7\] are not all in 0..4"):
        planned_variants(bad, shape)

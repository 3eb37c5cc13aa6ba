"""Variant specs, the space parser, the builders and the library files (stories260K)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress.blocks import GatedFFN, GQAttention, LinearSubblock, NoopSubblock
from compress.builders import (
    InitData,
    build_variant,
    ffn_channel_importance,
    kv_head_groups,
    least_squares,
)
from compress.library import (
    LibraryError,
    has_variant,
    load_variant,
    read_records,
    save_variant,
    variant_paths,
)
from compress.shape import ModelShape
from compress.variants import VariantSpec, parse_space

SHAPE = ModelShape("llama", 5, 64, 8, 4, 8, 172, 512, False, False)
ALL = [
    "attention:parent",
    "attention:kv_heads=2",
    "attention:linear",
    "attention:noop",
    "ffn:parent",
    "ffn:width=86",
    "ffn:linear",
    "ffn:noop",
]


# --- specs --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ALL)
def test_spec_canonical_and_json_round_trip(text):
    spec = VariantSpec.parse(text)
    assert str(spec) == text
    assert VariantSpec.parse(json.loads(json.dumps(str(spec)))) == spec  # records hold str(spec)
    assert spec.trainable == (spec.type not in ("parent", "noop"))


@pytest.mark.parametrize(
    "text", ["mlp:parent", "attention:width=3", "ffn:kv_heads=1", "ffn:width=0", "ffn:noop=1", "x"]
)
def test_spec_rejects_bad_text(text):
    with pytest.raises(ValueError):
        VariantSpec.parse(text)


def test_parse_space_ratios_become_integer_widths():
    attention, ffn = parse_space(
        ["parent", "kv_heads=2", 1, "linear", "noop"], [0.75, 0.5, "0.25", "linear", "noop"], SHAPE
    )
    assert [str(v) for v in attention] == [
        "attention:parent",
        "attention:kv_heads=2",
        "attention:kv_heads=1",
        "attention:linear",
        "attention:noop",
    ]
    assert [str(v) for v in ffn] == [
        "ffn:parent",
        "ffn:width=129",
        "ffn:width=86",
        "ffn:width=43",
        "ffn:linear",
        "ffn:noop",
    ]


@pytest.mark.parametrize(
    "attention, ffn, words",
    [(["kv_heads=3"], [], "divide"), ([], [2.0], "ratio"), ([], ["width=999"], "exceeds")],
)
def test_parse_space_errors_name_the_problem(attention, ffn, words):
    with pytest.raises(ValueError, match=words):
        parse_space(attention, ffn, SHAPE)


def test_params_match_built_modules(stories_parent):
    adapter = stories_parent.adapter
    for text in ALL:
        spec = VariantSpec.parse(text)
        module = build_variant(spec, adapter.subblock(0, spec.kind))
        assert sum(p.numel() for p in module.parameters()) == spec.params(stories_parent.shape)


# --- builders -------------------------------------------------------------------------------
def test_kv_heads_equal_to_parent_reproduce_the_parent_exactly(stories_parent):
    adapter = stories_parent.adapter
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    for layer in range(adapter.num_layers):
        parent = adapter.attention(layer)
        same = build_variant(VariantSpec("attention", "kv_heads", parent.num_kv_heads), parent)
        assert isinstance(same, GQAttention) and same is not parent
        assert torch.equal(same(x), parent(x))


def test_kv_head_groups_and_averaging(stories_parent):
    # 8 query heads over 4 parent KV heads (2 each): 2 new heads average parents {0,1} and {2,3}
    assert kv_head_groups(8, 4, 2) == [[0, 0, 1, 1], [2, 2, 3, 3]]
    assert kv_head_groups(8, 4, 1) == [[0, 0, 1, 1, 2, 2, 3, 3]]
    assert kv_head_groups(8, 4, 4) == [[0, 0], [1, 1], [2, 2], [3, 3]]
    parent = adapter_attention = stories_parent.adapter.attention(1)
    reduced = build_variant(VariantSpec("attention", "kv_heads", 2), adapter_attention)
    hd = parent.head_dim
    for proj in ("k_proj", "v_proj"):
        heads = getattr(parent, proj).weight.view(4, hd, -1)
        new = getattr(reduced, proj).weight.view(2, hd, -1)
        assert torch.allclose(new[0], (heads[0] + heads[1]) / 2, atol=1e-7)
        assert torch.allclose(new[1], (heads[2] + heads[3]) / 2, atol=1e-7)
    assert torch.equal(reduced.q_proj.weight, parent.q_proj.weight)
    assert torch.equal(reduced.o_proj.weight, parent.o_proj.weight)

    # when the parent's KV heads within each new group are equal, fewer heads change nothing
    twin = copy.deepcopy(parent)
    with torch.no_grad():
        for proj in ("k_proj", "v_proj"):
            w = getattr(twin, proj).weight.view(4, hd, -1)
            w[1].copy_(w[0])
            w[3].copy_(w[2])
    x = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(1))
    merged = build_variant(VariantSpec("attention", "kv_heads", 2), twin)
    assert torch.allclose(merged(x), twin(x), atol=1e-6)


def test_width_keeps_the_most_important_channels(stories_parent):
    parent = stories_parent.adapter.ffn(2)
    inputs = torch.randn(512, 64, generator=torch.Generator().manual_seed(2))
    scores = ffn_channel_importance(parent, inputs)
    narrow = build_variant(
        VariantSpec("ffn", "width", 43), parent, InitData(inputs, parent(inputs))
    )
    assert isinstance(narrow, GatedFFN) and narrow.intermediate_size == 43
    kept = scores.topk(43).indices.sort().values
    assert torch.equal(narrow.gate_proj.weight, parent.gate_proj.weight[kept])
    assert torch.equal(narrow.down_proj.weight, parent.down_proj.weight[:, kept])
    full = build_variant(VariantSpec("ffn", "width", 172), parent, InitData(inputs, parent(inputs)))
    assert torch.allclose(full(inputs), parent(inputs), atol=1e-6)


def test_linear_init_is_least_squares(stories_parent):
    parent = stories_parent.adapter.ffn(0)
    inputs = torch.randn(2048, 64, generator=torch.Generator().manual_seed(3))
    outputs = parent(inputs).detach()
    linear = build_variant(VariantSpec("ffn", "linear"), parent, InitData(inputs, outputs))
    assert isinstance(linear, LinearSubblock)
    w = least_squares(linear.norm(inputs), outputs)
    assert torch.allclose(linear.linear.weight, w)
    # the least-squares fit beats zero and any perturbation of it
    err = (linear(inputs) - outputs).pow(2).sum()
    with torch.no_grad():
        linear.linear.weight.add_(0.01 * torch.randn_like(w))
    assert err < (linear(inputs) - outputs).pow(2).sum() < outputs.pow(2).sum()


# --- library files --------------------------------------------------------------------------
def test_library_round_trip(tmp_path, stories_parent):
    adapter = stories_parent.adapter
    spec = VariantSpec("ffn", "width", 86)
    module = build_variant(spec, adapter.ffn(3))
    with torch.no_grad():
        module.down_proj.weight.mul_(1.5)
    assert not has_variant(tmp_path, 3, spec)
    with pytest.raises(LibraryError, match="not in the library"):
        load_variant(tmp_path, 3, spec, adapter)
    save_variant(tmp_path, 3, spec, module, {"nmse_init": 0.5, "nmse_final": 0.25})
    weights, record = variant_paths(tmp_path, 3, spec)
    assert weights.name == "L003__ffn__width=86.safetensors" and record.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [record.name, weights.name]  # no temps
    loaded = load_variant(tmp_path, 3, spec, adapter)
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), module(x))
    [rec] = read_records(tmp_path)
    assert rec["variant"] == "ffn:width=86" and rec["layer"] == 3 and rec["nmse_final"] == 0.25
    assert isinstance(load_variant(tmp_path, 3, VariantSpec("ffn", "noop"), adapter), NoopSubblock)
    parent_copy = load_variant(tmp_path, 3, VariantSpec("ffn", "parent"), adapter)
    assert parent_copy is not adapter.ffn(3) and torch.equal(parent_copy(x), adapter.ffn(3)(x))

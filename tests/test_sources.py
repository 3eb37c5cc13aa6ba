"""Calibration mixes (data.sources) and named eval sets (eval.sets): spec, data, pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from compress.data import Generation, eval_set_tokens, mixed_calibration
from compress.errors import DataError
from compress.sources import (
    check_disjoint,
    generate_sequences,
    generation_cache_key,
    source_documents,
)
from nas.errors import SpecError
from nas.layout import JobLayout
from nas.spec import BUILTIN_DATA, load_spec, parse_spec
from tests.conftest import QUICKSTART_SPEC, ROOT, STORIES, TINY_SPEC, TINYSTORIES, need_shared_data


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    """A small local dataset: 80 rows with two fields (question, answer)."""
    path = tmp_path_factory.mktemp("ds") / "qa.jsonl"
    rows = [
        {"question": f"Where did Tom go on day {i}?", "answer": f"Tom went to the park {i} times."}
        for i in range(80)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _mix(jsonl, tmp_path, **eval_sets):
    return {
        "model": {"source": str(STORIES)},
        "data": {
            "seq_len": 32,
            "train_tokens": 2048,
            "eval_tokens": 512,
            "sources": [
                {"kind": "files", "files": [str(TINYSTORIES)], "documents": [0, 200], "weight": 2},
                {"kind": "dataset", "path": str(jsonl), "template": "{question} {answer}"},
                {"kind": "generated", "weight": 1, "temperature": 0.8},
            ],
        },
        "eval": {"sets": [{"name": k, **v} for k, v in eval_sets.items()]},
    }


def test_spec_with_a_mix_validates_and_old_keys_still_work(jsonl, tmp_path):
    need_shared_data()
    spec = parse_spec(_mix(jsonl, tmp_path, held={"kind": "files", "files": [str(TINYSTORIES)]}))
    assert [s.kind for s in spec.data.sources] == ["files", "dataset", "generated"]
    assert spec.eval.sets[0].name == "held" and spec.eval.sets[0].tokens == 8192
    old = parse_spec({"data": {"source": "text", "files": [str(TINYSTORIES)], "separator": "\n"}})
    assert old.data.sources[0].files == [str(TINYSTORIES)] and old.data.sources[0].separator == "\n"
    assert parse_spec({"data": {"source": "generated"}}).data.sources[0].kind == "generated"
    # a round trip through the manifest's JSON keeps the spec
    assert parse_spec(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"source": "hub"}, "replaced by data.sources"),
        ({"source": "text", "files": ["a"], "sources": []}, "either data.sources or"),
        ({"sources": [{"kind": "generated", "files": ["a.txt"]}]}, "'files' does not apply"),
        ({"sources": [{"kind": "dataset"}]}, "needs 'path'"),
        ({"sources": [{"kind": "files", "files": ["nope.txt"]}]}, "nope.txt does not exist"),
        ({"sources": [{"kind": "files", "files": ["a"], "weight": 0}]}, "greater than 0"),
    ],
)
def test_bad_sources_are_one_line(data, needle):
    with pytest.raises(SpecError, match=needle) as info:
        parse_spec({"data": data})
    assert "\n" not in str(info.value)


def test_tokens_follow_the_weights_and_generated_text_is_cached(stories_parent, jsonl, tmp_path):
    spec = parse_spec(_mix(jsonl, tmp_path))
    tok = stories_parent.tokenizer
    calls = []
    gen = Generation(
        stories_parent.adapter,
        tmp_path / "gen",
        "stories260K",
        progress=lambda d, t: calls.append(d),
    )
    splits, counts = mixed_calibration(list(spec.data.sources), tok, 32, 2048, 512, 0, gen)
    assert splits.train.shape == (64, 32) and splits.eval.shape == (16, 32)
    assert [c["train_tokens"] for c in counts] == [1024, 512, 512]
    assert [c["eval_tokens"] for c in counts] == [256, 128, 128]
    assert counts[1]["source"] == "dataset:qa.jsonl[train]"
    # the dataset's template joined both fields; its rows are in the mix
    doc = source_documents(spec.data.sources[1])[0]
    assert doc == "Where did Tom go on day 0? Tom went to the park 0 times."
    # rows of the three sources are shuffled together (BLD reads the first train rows)
    first = {tuple(r.tolist()) for r in splits.train[:16]}
    assert len(first) == 16
    cached = list((tmp_path / "gen").glob("*.safetensors"))
    key = generation_cache_key("stories260K", 2000, 20, 32, 0.8, 32)
    assert [p.stem for p in cached] == [key] and calls[-1] == 20
    assert not list((tmp_path / "gen").glob("*.parts"))  # per-batch parts removed once complete
    # an interrupted run resumes at the first missing batch: the same tokens, fewer sampled
    # (batches of 8: the third of three is sampled again, the first two are read back)
    parts = []
    resumed = Generation(stories_parent.adapter, tmp_path / "g2", "k", batch_size=8)
    src = spec.data.sources[2]
    args = (tok, 20, 32, 7, src.temperature, 8, resumed.cache_dir, "k")
    full = generate_sequences(stories_parent.adapter, *args)
    key2 = generation_cache_key("k", 7, 20, 32, src.temperature, 8)
    (tmp_path / "g2" / f"{key2}.safetensors").unlink()
    folder = tmp_path / "g2" / f"{key2}.parts"
    folder.mkdir()
    for first, rows in ((0, full[:8]), (8, full[8:16])):
        save_file({"tokens": rows.contiguous()}, str(folder / f"{first:07d}.safetensors"))
    again = generate_sequences(stories_parent.adapter, *args, progress=lambda d, t: parts.append(d))
    assert torch.equal(again, full) and parts == [8, 16, 20]
    # the second time the samples come from the cache: no model is needed at all
    again, _ = mixed_calibration(
        list(spec.data.sources),
        tok,
        32,
        2048,
        512,
        0,
        Generation(None, tmp_path / "gen", "stories260K"),
    )
    assert torch.equal(again.train, splits.train) and torch.equal(again.eval, splits.eval)


def test_eval_sets_overlapping_calibration_are_refused(stories_parent, jsonl, tmp_path):
    spec = parse_spec(
        _mix(
            jsonl,
            tmp_path,
            later={"kind": "files", "files": [str(TINYSTORIES)], "documents": [200, 260]},
            same={"kind": "files", "files": [str(TINYSTORIES)], "documents": [150, 260]},
        )
    )
    later, same = spec.eval.sets
    check_disjoint(list(spec.data.sources), {"later": later})
    with pytest.raises(DataError, match="eval set 'same' shares 50 of its 110 documents"):
        check_disjoint(list(spec.data.sources), {"later": later, "same": same})
    tokens = eval_set_tokens(later, stories_parent.tokenizer, 32, 256, seed=3)
    assert tokens.shape == (8, 32)


def _tiny_spec(tmp_path, eval_sets, jsonl) -> str:
    spec = yaml.safe_load(TINY_SPEC.read_text())
    base = TINY_SPEC.parent
    spec["model"]["source"] = str((base / spec["model"]["source"]).resolve())
    stories = str(TINYSTORIES)
    spec["data"] = {
        "seq_len": 64,
        "train_tokens": 4096,
        "eval_tokens": 1024,
        "sources": [
            {"kind": "files", "files": [stories], "documents": [0, 300], "weight": 2},
            {"kind": "dataset", "path": str(jsonl), "template": "{question} {answer}", "weight": 1},
            {"kind": "generated", "weight": 1},
        ],
    }
    spec["eval"] = {"sets": eval_sets}
    spec["space"] = {"attention": ["parent", "noop"], "ffn": ["parent", 0.5, "noop"]}
    spec["bld"].update(tokens=1024, batch_size=8, init_tokens=512, eval_tokens=256)
    spec["scoring"]["eval_tokens"] = 256
    spec["hardware"]["profiles"] = [str((base / p).resolve()) for p in spec["hardware"]["profiles"]]
    spec["targets"][0]["values"] = [0.7]
    spec["strategy"] = {"names": ["puzzle-mip"], "solutions_per_budget": 1}
    spec["export"] = {"formats": [], "eval_tokens": 256}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _nas(*args, cache=None):
    env = os.environ | ({"NAS_CACHE": str(cache)} if cache else {})  # generated text goes there
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env=env,
    )


def test_run_measures_every_point_and_the_parent_on_each_eval_set(tmp_path, jsonl):
    need_shared_data()
    stories = str(TINYSTORIES)
    overlap = [{"name": "dup", "kind": "files", "files": [stories], "documents": [250, 320]}]
    for command in (["validate"], ["run", "--results", tmp_path / "r1"]):
        out = _nas(command[0], _tiny_spec(tmp_path, overlap, jsonl), *command[1:])
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and "eval set 'dup' shares 50" in lines[0]
    sets = [
        {
            "name": "held",
            "kind": "files",
            "files": [stories],
            "documents": [300, None],
            "tokens": 512,
        },
        {"name": "own", "kind": "generated", "tokens": 256},
    ]
    spec = _tiny_spec(tmp_path, sets, jsonl)
    out = _nas("run", spec, "--job-id", "mix", "--results", tmp_path / "r", cache=tmp_path / "c")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ppl@held" in out.stdout and "calibration eval split (files:" in out.stdout
    manifest = JobLayout(tmp_path / "r" / "mix").manifest()
    assert [c["train_tokens"] for c in manifest["data_sources"]] == [2048, 1024, 1024]
    assert [c["eval_tokens"] for c in manifest["data_sources"]] == [512, 256, 256]
    rows = json.loads(_nas("pareto", "mix", "--results", tmp_path / "r", "--format", "json").stdout)
    assert rows[0]["point_id"] == "parent" and len(rows) >= 2
    for row in rows:
        for name in ("held", "own"):
            for metric in ("perplexity", "kl", "lm_loss"):
                assert row[f"measured_{metric}@{name}"] is not None, (row["point_id"], name)
    assert rows[0]["measured_kl@held"] == 0.0
    assert all(r["measured_kl@held"] > 0 for r in rows[1:])
    meta = json.loads((tmp_path / "r" / "mix" / "pareto" / "meta.json").read_text())
    assert meta["eval_sets"] == ["held", "own"]
    assert meta["objective_kl_source"].startswith("calibration eval split (files:tinystories")
    # resuming reuses the stored calibration and eval tokens (no sampling again)
    before = (tmp_path / "r" / "mix" / "data" / "eval__own.safetensors").stat().st_mtime_ns
    out = _nas("resume", "mix", "--results", tmp_path / "r", cache=tmp_path / "c")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "r" / "mix" / "data" / "eval__own.safetensors").stat().st_mtime_ns == before


def test_quickstart_needs_nothing_beside_the_repository(tmp_path):
    """The quickstart's spec resolves with only the repository's own files (no ../shared)."""
    repo = tmp_path / "alone" / "repo"
    (repo / "search_spaces").mkdir(parents=True)
    shutil.copy(QUICKSTART_SPEC, repo / "search_spaces")
    shutil.copytree(ROOT / "hwprofiles", repo / "hwprofiles")
    spec = load_spec(repo / "search_spaces" / "quickstart.yaml")
    files = [f for s in [*spec.data.sources, *spec.eval.sets] for f in s.files]
    assert files and all(f.startswith(str(BUILTIN_DATA)) for f in files)
    assert "shared" not in QUICKSTART_SPEC.read_text()
    assert {s.name for s in spec.eval.sets} == {"books", "stories"}
    check_disjoint(list(spec.data.sources), {s.name: s for s in spec.eval.sets})

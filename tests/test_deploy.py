"""Deployment: transformers folders that load without this project, onnxruntime-genai folders
with each weight stored once, per-precision parity, ``nas export --point parent`` with
reuse of the job's exports, and ``nas clean``."""

import ast
import json
import os
import subprocess
import sys

import pytest
import torch

from compress.export.genai import genai_greedy, write_genai_files
from compress.export.hf import export_hf
from compress.export_onnx import export_onnx
from compress.student import assemble_student, load_student
from nas.api import clean, export_point
from tests.test_export import CHOICES, _job, _prompt, nas

# the check runs in a fresh interpreter, outside the repository, with this project's
# packages unimportable: only torch and transformers (and the exported folder) are there
FRESH_CHECK = r"""
import importlib.abc, json, sys
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nas", "compress", "tests"):
            raise ImportError(f"{name}: this check runs without the nas-llm project")
sys.meta_path.insert(0, _Blocked())
try:
    import compress  # noqa: F401
    sys.exit("the project is importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM
torch.set_num_threads(1)
folders, ids = json.loads(sys.argv[1]), torch.tensor(json.loads(sys.argv[2]))
out = {}
for name, (folder, remote) in folders.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
    with torch.no_grad():
        result = model(ids, use_cache=True)
        cache = getattr(result, "cache", None) or result.past_key_values
        layers = [l for l in cache.layers if getattr(l, "keys", None) is not None]
        new = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )[:, ids.shape[1]:]
    out[name] = {
        "class": type(model).__name__,
        "module": type(model).__module__,
        "cached_layers": sum(1 for l in layers if l.keys.numel() > 0),
        "tokens": new.tolist(),
        "logits": result.logits.tolist(),
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def student(stories_parent):
    return assemble_student(stories_parent.adapter, CHOICES).eval()


def _weight_bytes(model) -> int:
    """fp32 bytes of the model's distinct tensors (tied embeddings once)."""
    seen = {t.data_ptr(): t.numel() * 4 for t in model.state_dict().values()}
    return sum(seen.values())


def test_transformers_folders_load_without_the_project(stories_parent, student, tmp_path):
    parent = stories_parent
    config = parent.hf_model.config.to_dict()
    prompt = _prompt(parent.tokenizer)
    hetero = export_hf(student, tmp_path / "student", CHOICES, parent.tokenizer, config)
    plain = export_hf(parent.adapter, tmp_path / "parent", None, parent.tokenizer, config)
    assert hetero["layout"] == "nas_llm (remote code)" and hetero["parity"]["passed"]
    assert plain["layout"] == "LlamaForCausalLM" and plain["parity"]["passed"]
    student_config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert student_config["model_type"] == "nas_llm" and "auto_map" in student_config
    blocks = student_config["block_configs"]
    assert blocks[0]["attention"] == {"no_op": True, "replace_with_linear": False}
    assert blocks[1]["attention"]["num_key_value_heads"] == 1
    assert blocks[2]["ffn"] == {"no_op": True, "replace_with_linear": False}
    assert blocks[4]["ffn"]["intermediate_size"] == 43
    imported = set()  # the remote code imports torch, transformers and its own sibling only
    for name in ("modeling_nas_llm.py", "nas_llm_layers.py"):
        code = (tmp_path / "student" / name).read_text()
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or "").split(".")[0])
    assert imported <= {"__future__", "torch", "transformers", ".nas_llm_layers"}, imported
    for folder in ("student", "parent"):
        assert (tmp_path / folder / "generation_config.json").is_file()
        assert (tmp_path / folder / "tokenizer.json").is_file()
    parent_config = json.loads((tmp_path / "parent" / "config.json").read_text())
    assert "auto_map" not in parent_config and parent_config["model_type"] == "llama"
    assert not (tmp_path / "parent" / "modeling_nas_llm.py").exists()
    assert not (tmp_path / "parent" / "nas_llm_layers.py").exists()
    # our own loader reads both folders back
    assert torch.equal(load_student(tmp_path / "student").model(prompt), student(prompt))

    folders = {"student": [str(tmp_path / "student"), True]}
    folders["parent"] = [str(tmp_path / "parent"), False]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "-c", FRESH_CHECK, json.dumps(folders), json.dumps(prompt.tolist())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["student"]["class"] == "NasLlmForCausalLM"
    assert seen["student"]["module"].startswith("transformers_modules")
    assert seen["student"]["cached_layers"] == 3  # layers 0 (no-op) and 2 (linear) keep none
    assert seen["parent"]["class"] == "LlamaForCausalLM"
    assert seen["parent"]["module"] == "transformers.models.llama.modeling_llama"
    for name, model in (("student", student), ("parent", parent.adapter)):
        with torch.no_grad():
            logits = model(prompt)
        ours = model.generate_greedy(prompt, 32)
        assert seen[name]["tokens"] == ours.tolist(), name
        diff = (torch.tensor(seen[name]["logits"]) - logits).abs().max().item()
        assert diff <= 1e-4, (name, diff)


def test_onnx_parent_for_genai_weights_once(stories_parent, tmp_path):
    """TorchScript stores the tied LM head as a transposed copy; compaction ties it again."""
    parent = stories_parent
    prompt = _prompt(parent.tokenizer)
    result = export_onnx(parent.adapter, tmp_path, prompt_ids=prompt, exporter="torchscript")
    assert result.parity["passed"] and result.parity["greedy_equal"]
    size = sum(p.stat().st_size for p in tmp_path.glob("model.onnx*"))
    assert size <= 1.15 * _weight_bytes(parent.adapter)
    write_genai_files(parent.adapter, tmp_path, parent.tokenizer, parent.hf_model.config.to_dict())
    genai = json.loads((tmp_path / "genai_config.json").read_text())["model"]["decoder"]
    assert genai["num_hidden_layers"] == 5 and genai["filename"] == "model.onnx"
    assert (tmp_path / "tokenizer.json").is_file()
    tokens = genai_greedy(tmp_path, prompt.numpy(), 32)
    assert tokens.tolist() == parent.adapter.generate_greedy(prompt, 32).tolist()


def test_fp16_exports_meet_their_parity_limits(stories_parent, student, tmp_path):
    parent = stories_parent
    prompt = _prompt(parent.tokenizer)
    config = parent.hf_model.config.to_dict()
    hf = export_hf(student, tmp_path / "hf", CHOICES, None, config, precision="fp16")
    assert hf["parity"]["passed"] and hf["parity"]["dtype"] == "float16"
    assert load_student(tmp_path / "hf").model.embed_tokens.weight.dtype == torch.float16
    half = assemble_student(parent.adapter, CHOICES).half().eval()
    result = export_onnx(half, tmp_path / "onnx", prompt_ids=prompt, exporter="torchscript")
    assert result.parity["dtype"] == "float16" and result.parity["passed"]
    with torch.no_grad():
        top = float(half(prompt).abs().max())
    assert 1e-4 < result.parity["logit_limit"] <= 0.1 * max(1.0, top)


def test_nas_export_parent_reuses_the_jobs_export_and_clean(stories_parent, tmp_path):
    store = _job(tmp_path / "results", stories_parent, exporter="torchscript")
    first = tmp_path / "first"
    run = nas(
        "export", "job1", "--point", "parent", "--format", "onnx", "--out", first,
        "--results", store.root,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "exported in" in run.stdout
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "parity.json"} <= {
        p.name for p in first.iterdir()
    }
    parity = json.loads((first / "parity.json").read_text())
    assert parity["genai"]["greedy_equal"] and parity["greedy_equal"]
    held = store.export("parent", "onnx")
    again = export_point("job1", "parent", "onnx", tmp_path / "again", results=store.root)
    assert again["reused"] == "linked" and again["genai"]["greedy_equal"]
    assert os.path.samefile(held / "model.onnx", tmp_path / "again" / "model.onnx")
    with pytest.raises(Exception, match="unknown precision 'int4'"):
        export_point("job1", "parent", "onnx", tmp_path / "x", precision="int4", results=store.root)

    refused = nas("clean", "job1", "--results", store.root)
    assert refused.returncode == 2 and "not finished" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    store.update_manifest(state="finished")
    store.activations_train.mkdir(parents=True)
    (store.activations_train / "L000.safetensors").write_bytes(b"\0" * 2**20)
    cleaned = clean("job1", results=store.root)
    assert cleaned["removed"] == ["activations"] and cleaned["bytes_freed"] >= 2**20
    assert store.manifest()["cleaned"]["bytes_after"] == cleaned["bytes_after"]
    assert not store.activations_train.parent.exists()
    assert (held / "model.onnx").is_file() and store.library.is_dir()


def test_uniformly_narrowed_student_is_a_plain_llama_folder(stories_parent, tmp_path):
    parent = stories_parent
    uniform = [["attention:kv_heads=2", "ffn:width=86"]] * 5
    student = assemble_student(parent.adapter, uniform).eval()
    config = parent.hf_model.config.to_dict()
    record = export_hf(student, tmp_path, uniform, parent.tokenizer, config)
    assert record["layout"] == "LlamaForCausalLM" and record["parity"]["passed"]
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["num_key_value_heads"], written["intermediate_size"]) == (2, 86)
    assert "auto_map" not in written and not (tmp_path / "modeling_nas_llm.py").exists()

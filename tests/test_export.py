"""Export: ONNX prefill/decode graphs with onnxruntime parity, TensorRT's missing-package
error, ``nas export`` on a job with a (synthetic) Pareto table, and measured columns."""

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from compress.builders import build_variant
from compress.data import encode_document, read_documents
from compress.export.genai import genai_greedy, write_genai_files
from compress.export_onnx import OrtDecoder, export_onnx, ort_prefill_latency
from compress.library import save_variant
from compress.measured import measure_point
from compress.student import assemble_student, library_loader, load_student
from compress.variants import VariantSpec
from nas.api import export_point
from nas.errors import JobError
from nas.export import write_measured
from nas.spec import parse_spec
from nas.store import JobStore
from tests.conftest import ROOT, STORIES, TINYSTORIES

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None

# no-op attention (layers 0, 2 via linear), reduced KV heads (1 and 2 of 4), mixed FFNs
CHOICES = [
    ["attention:noop", "ffn:width=86"],
    ["attention:kv_heads=1", "ffn:parent"],
    ["attention:linear", "ffn:noop"],
    ["attention:kv_heads=2", "ffn:parent"],
    ["attention:parent", "ffn:width=43"],
]


def _prompt(tokenizer, length=24):
    doc = read_documents([TINYSTORIES])[3]
    return torch.tensor(encode_document(tokenizer, doc)[:length])[None]


@pytest.fixture(scope="module")
def exported(stories_parent, tmp_path_factory):
    student = assemble_student(stories_parent.adapter, CHOICES).eval()
    out = tmp_path_factory.mktemp("onnx")
    result = export_onnx(student, out, prompt_ids=_prompt(stories_parent.tokenizer))
    return student, result


def test_onnx_parity_with_noop_attention_and_reduced_kv_heads(exported):
    student, result = exported
    parity = json.loads((result.out_dir / "parity.json").read_text())
    assert parity == result.parity and parity["passed"]
    assert parity["prefill_max_abs_diff"] <= 1e-4
    assert parity["decode_max_abs_diff"] <= 1e-4
    assert parity["greedy_tokens"] == 32 and parity["greedy_equal"]
    layout = json.loads((result.out_dir / "export.json").read_text())
    assert layout["layout"] == "decoder" and layout["prefill"] == layout["decode"] == "model.onnx"
    assert [(c["layer"], c["cache"], c["kv_heads"]) for c in layout["cache"]] == [
        (1, 0, 1),
        (3, 1, 2),
        (4, 2, 4),
    ]


def test_onnx_graphs_have_dynamic_axes_and_per_layer_caches(exported, stories_parent):
    student, result = exported
    runner = OrtDecoder(result.out_dir)
    assert runner.prefill is runner.decode  # one graph serves prefill and decode
    past_shapes = {i.name: i.shape for i in runner.decode.get_inputs()}
    # caches are numbered over the layers that have one (layers 1, 3, 4)
    assert past_shapes["past_key_values.0.key"][1] == 1
    assert past_shapes["past_key_values.1.value"][1] == 2
    assert not any(name.startswith("past_key_values.3") for name in past_shapes)
    # another batch and sequence length than the parity check, then 3 decode tokens at once
    ids = torch.randint(0, 512, (3, 11), generator=torch.Generator().manual_seed(5))
    logits, present = runner.run_prefill(ids.numpy())
    nxt = torch.randint(0, 512, (3, 3), generator=torch.Generator().manual_seed(6))
    step, _ = runner.run_decode(nxt.numpy(), present)
    with torch.no_grad():
        full = student(torch.cat([ids, nxt], 1))
    assert np.abs(logits - full[:, :11].numpy()).max() <= 1e-4
    assert np.abs(step - full[:, 11:].numpy()).max() <= 1e-4


def test_genai_generates_with_noop_attention_and_mixed_kv_heads(exported, stories_parent):
    """onnxruntime-genai runs the one decoder graph: caches of 1, 2 and 4 KV heads, and
    layers 0 and 2 (no-op and linear attention) without any cache."""
    student, result = exported
    parent = stories_parent
    write_genai_files(student, result.out_dir, parent.tokenizer, parent.hf_model.config.to_dict())
    prompt = _prompt(parent.tokenizer)
    tokens = genai_greedy(result.out_dir, prompt.numpy(), 32)
    assert tokens.tolist() == student.generate_greedy(prompt, 32).tolist()
    size = sum(p.stat().st_size for p in result.out_dir.glob("model.onnx*"))
    weights = sum({t.data_ptr(): t.numel() * 4 for t in student.state_dict().values()}.values())
    assert size <= 1.15 * weights


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here; this checks its absence")
def test_tensorrt_missing_is_one_clear_line(exported):
    from compress.export_tensorrt import EngineShapes, TensorRTUnavailable, build_engine

    with pytest.raises(TensorRTUnavailable) as err:
        build_engine(exported[1].prefill, exported[1].out_dir / "x.engine", EngineShapes())
    assert "\n" not in str(err.value) and str(err.value).startswith("TensorRT is not installed")


def test_measure_point_and_write_measured(exported, stories_parent, tiny_splits, tmp_path):
    student, result = exported
    parent = stories_parent.adapter

    def latency(model):  # the real exported graph, timed in onnxruntime
        return ort_prefill_latency(result.prefill, 1, 64, repeats=5, warmup=1, vocab_size=512)

    measured = measure_point(student, parent, tiny_splits.eval[:4], latency)
    same = measure_point(parent, parent, tiny_splits.eval[:4], latency)
    assert measured["measured_kl"] > 0.01 and same["measured_kl"] < 1e-6
    assert measured["measured_latency_ms"] > 0
    assert measured["measured_perplexity"] == pytest.approx(np.exp(measured["measured_lm_loss"]))
    job = _job(tmp_path, stories_parent)
    record = write_measured(job.dir, "p0", measured)
    assert record["measured_kl"] == measured["measured_kl"]
    assert job.front_records()[0]["measured_latency_ms"] == measured["measured_latency_ms"]
    with open(job.pareto_file("front.csv"), newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["measured_kl"]) == pytest.approx(measured["measured_kl"])


# --- nas export on a job ----------------------------------------------------------------------
def _job(root, stories_parent, exporter: str = "dynamo") -> JobStore:
    spec = parse_spec(
        {
            "name": "t",
            "export": {"exporter": exporter},
            "model": {"source": str(STORIES)},
            "data": {
                "files": [str(TINYSTORIES)],
                "seq_len": 64,
                "train_tokens": 4096,
                "eval_tokens": 1024,
            },
        }
    )
    store = JobStore.create(root, "job1", spec.model_dump(mode="json"), None)
    parent = stories_parent.adapter
    for layer, pair in enumerate(CHOICES):
        for text in pair:
            spec_v = VariantSpec.parse(text)
            if spec_v.trainable:
                module = build_variant(spec_v, parent.subblock(layer, spec_v.kind))
                save_variant(store.library, layer, spec_v, module, {"nmse_final": 0.1})
    point = {"point_id": "p0", "strategy": "puzzle-mip", "choices": CHOICES, "predicted_kl": 0.4}
    for key in ("measured_latency_ms", "measured_kl", "measured_lm_loss", "measured_perplexity"):
        point[key] = None
    store.pareto.mkdir(parents=True, exist_ok=True)
    store.front.write_text(json.dumps([point]))
    store.front_meta.write_text("{}")
    with open(store.pareto_file("front.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(point))
        writer.writeheader()
        writer.writerow({**point, "choices": json.dumps(CHOICES)})
    return store


def nas(*args):
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def test_nas_export_hf_and_one_line_errors(stories_parent, tmp_path):
    store = _job(tmp_path / "results", stories_parent)
    out = tmp_path / "hf"
    run = nas(
        "export", "job1", "--point", "p0", "--format", "hf", "--out", out, "--results", store.root
    )
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = load_student(out)
    parent = stories_parent.adapter
    reference = assemble_student(parent, CHOICES, library_loader(store.library, parent))
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), reference(ids))
    assert json.loads((out / "point.json").read_text())["point"]["choices"] == CHOICES

    missing_point = nas("export", "job1", "--point", "zz", "--out", out, "--results", store.root)
    assert missing_point.returncode == 2
    assert missing_point.stderr.strip() == "error: job job1 has no point 'zz'; points: p0"
    with pytest.raises(JobError, match="unknown export format 'gguf'; choose one of onnx"):
        export_point("job1", "p0", "gguf", out, results=store.root)
    with pytest.raises(JobError, match="no job nojob") as err:
        export_point("nojob", "p0", "onnx", out, results=store.root)
    assert "\n" not in str(err.value)
    if not HAS_TENSORRT:
        trt = nas(
            "export",
            "job1",
            "--point",
            "p0",
            "--format",
            "tensorrt",
            "--out",
            tmp_path / "trt",
            "--results",
            store.root,
        )
        assert trt.returncode == 2 and len(trt.stderr.strip().splitlines()) == 1
        assert "TensorRT is not installed" in trt.stderr


@pytest.mark.slow
def test_nas_export_onnx_writes_parity(stories_parent, tmp_path):
    store = _job(tmp_path / "results", stories_parent)
    out = tmp_path / "onnx"
    run = nas(
        "export", "job1", "--point", "p0", "--format", "onnx", "--out", out, "--results", store.root
    )
    assert run.returncode == 0, run.stderr[-2000:]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["greedy_equal"] and parity["genai"]["greedy_equal"]
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "export.json", "point.json"} <= {
        p.name for p in out.iterdir()
    }


@pytest.mark.slow
def test_torchscript_exporter_parity(stories_parent, tmp_path):
    student = assemble_student(stories_parent.adapter, CHOICES).eval()
    prompt = _prompt(stories_parent.tokenizer)
    result = export_onnx(
        student, tmp_path, prompt_ids=prompt, exporter="torchscript", layout="pair"
    )
    assert result.prefill.name == "prefill.onnx" and result.decode.name == "decode.onnx"
    assert result.parity["prefill_max_abs_diff"] <= 1e-4
    assert result.parity["decode_max_abs_diff"] <= 1e-4
    assert result.parity["greedy_equal"]

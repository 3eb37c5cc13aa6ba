"""int8 subblocks: torch computes what onnxruntime's dynamic quantization computes, the export
quantizes exactly those MatMuls, every export's parity holds, and TensorRT refuses them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from compress.export.genai import genai_parity, write_genai_files
from compress.export.hf import export_hf
from compress.export.nas_llm_layers import INT8_LINEARS, DynamicInt8Linear, quantize_linears
from compress.export.parity import float_linears, kl_per_token
from compress.export_onnx import empty_past, export_onnx, ort_session
from compress.export_tensorrt import EngineBuildError, export_tensorrt
from compress.families import recognise
from compress.quantize_onnx import QuantizeError, quantize_int8_matmuls
from compress.student import assemble_student, load_student
from compress.variants import VariantSpec, parse_space
from tests.test_export import _prompt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript export

CHOICES = [
    ["attention:int8", "ffn:int8"],
    ["attention:parent", "ffn:int8"],
    ["attention:noop", "ffn:width=86"],
    ["attention:int8", "ffn:parent"],
    ["attention:kv_heads=2", "ffn:int8"],
]


@pytest.fixture(scope="module")
def student(stories_parent):
    return assemble_student(stories_parent.adapter, CHOICES).eval()


def _linear_graph(module, x, path):
    names = {"input_names": ["x"], "output_names": ["y"], "dynamic_axes": {"x": {0: "b", 1: "s"}}}
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=18, **names)
    return path


def test_int8_linear_is_what_onnxruntime_computes(tmp_path):
    torch.manual_seed(0)
    module = quantize_linears(torch.nn.Sequential(torch.nn.Linear(64, 96, bias=True)), ["0"])
    x = torch.randn(2, 7, 64) * 3 + 0.5
    path = _linear_graph(module, x, tmp_path / "linear.onnx")
    assert quantize_int8_matmuls(path, module) == 1
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops
    ours = module(x).detach()
    theirs = ort_session(path, 1).run(None, {"x": x.numpy()})[0]
    with float_linears():
        plain = module(x).detach()
    assert np.abs(theirs - ours.numpy()).max() < 1e-4
    assert (plain - ours).abs().max() > 100 * np.abs(theirs - ours.numpy()).max()
    # the float weight is kept: gradients pass straight through the rounding
    module(x).sum().backward()
    assert module[0].weight.grad is not None and module[0].weight.grad.abs().sum() > 0


def test_quantizing_a_graph_without_the_weights_is_refused(tmp_path):
    torch.manual_seed(0)
    exported = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))
    other = quantize_linears(torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False)), ["0"])
    path = _linear_graph(exported, torch.randn(1, 3, 8), tmp_path / "g.onnx")
    with pytest.raises(QuantizeError, match="1 of 1 int8 linear layers have no MatMul"):
        quantize_int8_matmuls(path, other)
    assert quantize_int8_matmuls(path, exported) == 0  # nothing in int8: the file is untouched


def test_int8_family(stories_parent):
    shape = stories_parent.adapter.shape
    attention, ffn = parse_space(["int8", "noop"], ["int8", 0.5], shape)
    assert VariantSpec("attention", "int8") in attention and VariantSpec("ffn", "int8") in ffn
    for kind in ("attention", "ffn"):
        spec = VariantSpec(kind, "int8")
        parent = stories_parent.adapter.subblock(1, kind)
        module = spec.family.build(spec, parent, None)
        assert spec.params(shape) == VariantSpec(kind, "parent").params(shape)
        assert not spec.trainable
        assert recognise(kind, module, shape) == spec
        assert recognise(kind, parent, shape) == VariantSpec(kind, "parent")
        names = {n for n, m in module.named_modules() if isinstance(m, DynamicInt8Linear)}
        assert names == set(INT8_LINEARS[kind])
        assert spec.family.hf_block(spec, shape)["int8"] is True
        x = torch.randn(2, 5, shape.hidden_size)
        with torch.no_grad():
            assert not torch.equal(module(x), parent(x))  # rounded, not the parent's numbers
            with float_linears():
                assert torch.allclose(module(x), parent(x), atol=1e-6)


def test_int8_student_exports_for_onnxruntime_genai_and_transformers(
    stories_parent, student, tmp_path
):
    prompt = _prompt(stories_parent.tokenizer)
    result = export_onnx(student, tmp_path / "onnx", prompt_ids=prompt, exporter="torchscript")
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())
    assert parity["passed"] and parity["int8_prefill"]["passed"] and parity["int8_decode"]["passed"]
    graph = onnx.load(str(result.prefill))
    int8_layers = sum(
        len(INT8_LINEARS[c.split(":")[0]]) for pair in CHOICES for c in pair if c.endswith(":int8")
    )
    assert sum(n.op_type == "MatMulInteger" for n in graph.graph.node) == int8_layers
    # onnxruntime's logits are the quantized model's, not its float twin's
    session = ort_session(result.prefill, 1)
    logits = session.run(None, {"input_ids": prompt.numpy(), **empty_past(session, 1)})[0]
    with torch.no_grad():
        ours = student(prompt)
        with float_linears():
            twin = student(prompt)
    assert kl_per_token(ours, logits) < 0.5 * kl_per_token(twin, logits)

    config = stories_parent.hf_model.config.to_dict()
    write_genai_files(student, result.out_dir, stories_parent.tokenizer, config)
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    record = genai_parity(student, result.out_dir, prompt)
    assert record["passed"] and record["greedy_equal"] and record["reference"] == "onnxruntime"


def test_int8_student_transformers_folder(stories_parent, student, tmp_path):
    parent = stories_parent
    config = parent.hf_model.config.to_dict()
    record = export_hf(student, tmp_path / "hf", CHOICES, parent.tokenizer, config)
    assert record["parity"]["passed"] and "int8" in record["parity"]
    blocks = json.loads((tmp_path / "hf" / "config.json").read_text())["block_configs"]
    assert blocks[0]["attention"]["int8"] and blocks[1]["ffn"]["int8"]
    assert "int8" not in blocks[1]["attention"]
    prompt = _prompt(parent.tokenizer)
    loaded = load_student(tmp_path / "hf").model
    shape = parent.adapter.shape
    assert recognise("attention", loaded.layers[0].attention, shape) == VariantSpec(
        "attention", "int8"
    )
    assert recognise("ffn", loaded.layers[1].ffn, shape) == VariantSpec("ffn", "int8")
    assert torch.equal(loaded(prompt), student(prompt))


def test_tensorrt_refuses_int8_students(student, tmp_path):
    with pytest.raises(EngineBuildError, match="onnxruntime's dynamic quantization"):
        export_tensorrt(student, tmp_path)


def test_int8_variants_are_profiled_in_onnxruntime(stories_parent):
    from compress.latency import MeasureSettings, measure_profile

    s = MeasureSettings(
        backend="onnxruntime-cpu", phase="prefill", seq=32, threads=1, repeats=3, min_block_ms=2.0
    )
    names = ["attention:parent", "attention:int8", "ffn:parent", "ffn:int8"]
    specs = [VariantSpec.parse(v) for v in names]
    prof = measure_profile(stories_parent.adapter, specs, s, students=2, report=lambda m: None)
    assert all(prof.entries[v].median_ms > 0 for v in names)
    assert prof.validation is not None and len(prof.validation.students) == 2


def test_int8_refused_for_parents_over_2gb(stories_parent):
    import dataclasses

    big = dataclasses.replace(stories_parent.adapter.shape, num_layers=16, hidden_size=2048,
                              num_heads=16, num_kv_heads=8, head_dim=128,
                              intermediate_size=8192, vocab_size=128256)  # fmt: skip
    with pytest.raises(ValueError, match="under 2 GB of fp32 weights"):
        parse_space(["int8"], [], big)
    parse_space(["int8"], ["int8"], stories_parent.adapter.shape)  # small parents are fine

"""ONNX export of a student (or a parent), with onnxruntime parity.

Layouts (``export_onnx(layout=...)``):

- ``decoder`` (the default, what ``nas export --format onnx`` writes): one graph
  ``model.onnx`` that serves prefill and decode, so every weight is stored once. Inputs:
  ``input_ids`` (batch, seq) and, for the ``j``-th layer (in layer order) whose attention
  keeps a cache, ``past_key_values.{j}.key`` / ``.value`` (batch, kv_heads_j, past,
  head_dim); prefill feeds a past of length 0. Outputs: ``logits`` (batch, seq, vocab) and
  ``present.{j}.key`` / ``.value`` of length past + seq. Layers with no-op or linear
  attention have no cache. This is the naming onnxruntime-genai expects
  (``compress.export.genai`` writes its config).
- ``pair`` (TensorRT engines are built from it): ``prefill.onnx`` (``input_ids`` only) and
  ``decode.onnx`` (as ``model.onnx``).
- ``prefill``: ``prefill.onnx`` only (latency measurement).

``export.json`` records the layout, the input/output names and the cache layout (layer,
cache index, KV heads, head dim); ``parity.json`` is written by ``parity_check``.

Batch, sequence and past length are dynamic axes. Both exporters of torch 2.13 work (the
parity check holds for either): ``dynamo`` (the default, ``torch.onnx.export(dynamo=True)``:
torch.export traces the attention's ``torch.arange`` positions and boolean causal mask
symbolically; tied embeddings stay one initializer) and ``torchscript`` (the deprecated
tracer, ``dynamo=False``: about 6x faster to export on a CPU, same onnxruntime speed, but
stores tied embeddings twice). The export wrapper skips no-op subblocks (their delta is
zero), so they cost nothing in the graph. Deployed layouts are compacted
(``compress.export.compact``): each weight stored once, whichever exporter wrote it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.atomic import atomic_write_json
from compress.blocks import NoopSubblock
from compress.errors import UserError
from compress.export.compact import compact_onnx
from compress.export.nas_llm_layers import is_int8
from compress.export.parity import greedy_verdict, int8_verdict, parity_limits
from compress.model import BlockModel
from compress.quantize_onnx import quantize_int8_matmuls

PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
DECODER_FILE = "model.onnx"
LAYOUTS = ("decoder", "pair", "prefill")
EXPORTERS = ("dynamo", "torchscript")


class ExportError(UserError):
    """An export or its parity check failed."""


def cached_layers(model: BlockModel) -> list[dict]:
    """Per layer with a KV cache: ``{"layer", "cache", "kv_heads", "head_dim", "max_cache"}``
    in layer order (``cache``: the index in the graphs' ``past_key_values.{cache}`` names;
    ``max_cache``: the most positions the module keeps in ``present``, None: all)."""
    out = []
    for i, layer in enumerate(model.layers):
        attn = layer.attention
        if getattr(attn, "has_kv_cache", False):
            out.append(
                {
                    "layer": i,
                    "cache": len(out),
                    "kv_heads": attn.num_kv_heads,
                    "head_dim": attn.head_dim,
                    "max_cache": attn.max_cache_tokens,
                }
            )
    return out


def cache_names(layers: list[dict], prefix: str) -> list[str]:
    """``prefix.{j}.key``, ``prefix.{j}.value`` for each cache index ``j``, in order."""
    return [f"{prefix}.{c['cache']}.{part}" for c in layers for part in ("key", "value")]


class _Graph(nn.Module):
    """Shared body of all graphs: the model's cached forward, with no-ops left out."""

    def __init__(self, model: BlockModel):
        super().__init__()
        self.model = model

    def body(self, input_ids: torch.Tensor, past: list | None) -> tuple:
        x = self.model.embed(input_ids)
        presents: list[torch.Tensor] = []
        j = 0
        for layer in self.model.layers:
            attn = layer.attention
            if getattr(attn, "has_kv_cache", False):
                pk, pv = (None, None) if past is None else (past[2 * j], past[2 * j + 1])
                delta, k, v = attn.forward_cached(x, pk, pv)
                x = x + delta
                presents += [k, v]
                j += 1
            elif not isinstance(attn, NoopSubblock):
                x = x + attn(x)
            if not isinstance(layer.ffn, NoopSubblock):
                x = x + layer.ffn(x)
        return (self.model.head(x), *presents)


class PrefillGraph(_Graph):
    def forward(self, input_ids: torch.Tensor):
        return self.body(input_ids, None)


class DecodeGraph(_Graph):
    def forward(self, input_ids: torch.Tensor, past: list[torch.Tensor]):
        return self.body(input_ids, past)


@dataclass
class ExportResult:
    out_dir: Path
    prefill: Path  # the graph that takes a prompt (model.onnx in the decoder layout)
    decode: Path
    parity: dict | None
    layout: str = "decoder"


def export_onnx(
    model: BlockModel,
    out_dir: str | os.PathLike,
    parity: bool = True,
    parity_tokens: int = 32,
    prompt_ids: torch.Tensor | None = None,
    opset: int | None = None,
    decode: bool = True,
    exporter: str = "dynamo",
    layout: str = "decoder",
) -> ExportResult:
    """Export ``model`` to ``out_dir`` in ``layout`` (see the module doc), then check parity.

    The graph files appear in ``out_dir`` only once all of them exported. ``decode=False``
    is ``layout="prefill"``. With ``parity``, runs ``parity_check`` and writes
    ``parity.json``; raises ``ExportError`` if the export or the parity check fails.
    ``exporter``: one of ``EXPORTERS``.
    """
    layout = layout if decode else "prefill"
    if layout not in LAYOUTS:
        raise ExportError(f"unknown ONNX layout {layout!r}; use one of {LAYOUTS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    layers = cached_layers(model)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    files = {"decoder": [DECODER_FILE], "pair": [PREFILL_FILE, DECODE_FILE]}.get(
        layout, [PREFILL_FILE]
    )
    try:
        t0 = time.perf_counter()
        if PREFILL_FILE in files:
            _export_prefill(model, layers, tmp / PREFILL_FILE, opset, exporter)
        for name in set(files) & {DECODE_FILE, DECODER_FILE}:
            _export_decode(model, layers, tmp / name, opset, exporter)
        for name in files:  # int8 subblocks: their MatMuls become integer ones
            quantize_int8_matmuls(tmp / name, model)
        if layout != "prefill":  # deployed graphs: weights once, no annotations
            for name in files:
                compact_onnx(tmp / name)
        seconds = time.perf_counter() - t0
        (out / "parity.json").unlink(missing_ok=True)  # never leave a stale verdict
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prompt_graph = DECODER_FILE if layout == "decoder" else PREFILL_FILE
    step_graph = {"decoder": DECODER_FILE, "pair": DECODE_FILE}.get(layout)
    atomic_write_json(
        out / "export.json",
        {
            "layout": layout,
            "prefill": prompt_graph,
            "decode": step_graph,
            "dtype": _dtype_name(model),
            "vocab_size": model.shape.vocab_size,
            "num_layers": model.num_layers,
            "cache": layers,
            "inputs": ["input_ids", *cache_names(layers, "past_key_values")],
            "outputs": ["logits", *cache_names(layers, "present")],
            "dynamic_axes": {
                "batch": "dim 0",
                "seq": "input_ids dim 1",
                "past": "cache dim 2, per cache",
            },
            "exporter": exporter,
            "export_seconds": seconds,
            "torch": torch.__version__,
        },
    )
    record = None
    if parity:
        record = parity_check(model, out, parity_tokens, prompt_ids)
        if not record["passed"]:
            raise ExportError(
                f"ONNX parity failed in {out}: {record['summary']} (see {out / 'parity.json'})"
            )
    return ExportResult(out, out / prompt_graph, out / (step_graph or prompt_graph), record, layout)


def _quiet_export(fn, *args, **kwargs):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logger_states = _silence_torch_loggers()
        try:
            return fn(*args, **kwargs)
        finally:
            for logger, level in logger_states:
                logger.setLevel(level)


def _silence_torch_loggers():
    import logging

    states = []
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental"):
        logger = logging.getLogger(name)
        states.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    return states


def _export(graph: nn.Module, args: tuple, path: Path, names, out_names, dynamic, opset, exporter):
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; use one of {EXPORTERS}")
    if exporter == "dynamo":
        shapes = (dynamic[0],) if len(args) == 1 else (dynamic[0], dynamic[1])
        options = {"dynamo": True, "dynamic_shapes": shapes}
    else:  # TorchScript tracing: the same axes, by input/output name
        axes = {}
        for name, spec in zip(names, [dynamic[0], *dynamic[1]], strict=True):
            axes[name] = {dim: d.__name__ for dim, d in spec.items()}
        for name in out_names:
            axes[name] = {0: "batch", 1: "seq"} if name == "logits" else {0: "batch", 2: "total"}
        options = {"dynamo": False, "dynamic_axes": axes}
        opset = opset or 18
    try:
        with torch.no_grad():
            _quiet_export(
                torch.onnx.export,
                graph,
                args,
                str(path),
                input_names=names,
                output_names=out_names,
                opset_version=opset,
                verbose=False,
                **options,
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"ONNX export of {path.name} failed: {first}") from None


def _dims():
    from torch.export import Dim

    return Dim("batch", min=1), Dim("seq", min=1)


def _export_prefill(model: BlockModel, layers: list[dict], path: Path, opset, exporter) -> None:
    batch, seq = _dims()
    ids = torch.zeros((2, 3), dtype=torch.long)
    _export(
        PrefillGraph(model),
        (ids,),
        path,
        ["input_ids"],
        ["logits", *cache_names(layers, "present")],
        ({0: batch, 1: seq}, []),
        opset,
        exporter,
    )


def _export_decode(model: BlockModel, layers: list[dict], path: Path, opset, exporter) -> None:
    from torch.export import Dim

    batch, seq = _dims()
    # one past length per cache: a cache bounded by its module (``max_cache``) has its own
    past_len = [Dim(f"past_{c['cache']}", min=1) for c in layers]
    ids = torch.zeros((2, 2), dtype=torch.long)
    dtype = model.embed_tokens.weight.dtype
    past = [
        torch.zeros((2, c["kv_heads"], 3, c["head_dim"]), dtype=dtype)
        for c in layers
        for _ in range(2)
    ]
    _export(
        DecodeGraph(model),
        (ids, past),
        path,
        ["input_ids", *cache_names(layers, "past_key_values")],
        ["logits", *cache_names(layers, "present")],
        ({0: batch, 1: seq}, [{0: batch, 2: length} for length in past_len for _ in "kv"]),
        opset,
        exporter,
    )


def _dtype_name(model: BlockModel) -> str:
    return str(model.embed_tokens.weight.dtype).removeprefix("torch.")


# --- onnxruntime side -------------------------------------------------------------------------
def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session: all graph optimisations, sequential, no spinning threads
    (``threads``: intra-op threads, default onnxruntime's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting threads: the machine may be shared, and timings stay comparable
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def empty_past(session, batch: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Zero-length ``past_key_values.*`` inputs of a decoder graph (none for a prefill graph)."""
    feed = {}
    for item in session.get_inputs():
        if item.name.startswith("past_key_values."):
            kv, head_dim = item.shape[1], item.shape[3]
            feed[item.name] = np.zeros((batch, kv, 0, head_dim), dtype=_np_dtype(item.type))
    return feed


def _np_dtype(onnx_type: str):
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(onnx_type, np.float32)


class OrtDecoder:
    """Runs an exported folder (decoder or pair layout) with the KV cache (numpy in and out)."""

    def __init__(self, out_dir: str | os.PathLike, threads: int | None = None):
        out = Path(out_dir)
        layout = json.loads((out / "export.json").read_text())
        self.decode = ort_session(out / layout["decode"], threads)
        same = layout["prefill"] == layout["decode"]
        self.prefill = self.decode if same else ort_session(out / layout["prefill"], threads)
        self.past_names = [i.name for i in self.decode.get_inputs()][1:]

    def run_prefill(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {"input_ids": ids, **empty_past(self.prefill, ids.shape[0])}
        logits, *present = self.prefill.run(None, feed)
        return logits, present

    def run_decode(self, ids: np.ndarray, past: list[np.ndarray]):
        feed = {"input_ids": ids, **dict(zip(self.past_names, past, strict=True))}
        logits, *present = self.decode.run(None, feed)
        return logits, present

    def generate_greedy(self, ids: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """Greedy tokens (B, max_new_tokens), as ``BlockModel.generate_greedy``."""
        logits, past = self.run_prefill(ids)
        out = []
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            out.append(token)
            logits, past = self.run_decode(token, past)
        return np.concatenate(out, axis=1)


def parity_check(
    model: BlockModel,
    out_dir: str | os.PathLike,
    greedy_tokens: int = 32,
    prompt_ids: torch.Tensor | None = None,
) -> dict:
    """Compare onnxruntime with torch and write ``parity.json``; returns the record.

    Checks: prompt logits and caches (batch 2); with a decode graph, one decode step with
    the cache and ``greedy_tokens`` greedy tokens through onnxruntime vs.
    ``model.generate_greedy``. Limits per dtype: ``parity_limits``; greedy: ``greedy_verdict``.
    ``prompt_ids`` (B, S) defaults to seeded random tokens; a real text prompt avoids ties.
    """
    out = Path(out_dir)
    layout = json.loads((out / "export.json").read_text())
    if prompt_ids is None:
        gen = torch.Generator().manual_seed(0)
        prompt_ids = torch.randint(0, model.shape.vocab_size, (2, 16), generator=gen)
    prompt_ids = prompt_ids.long()
    if prompt_ids.shape[0] == 1:
        prompt_ids = prompt_ids.repeat(2, 1)
    record: dict = {"dtype": _dtype_name(model), "layout": layout["layout"]}
    record["prompt_shape"] = list(prompt_ids.shape)
    with torch.no_grad():
        ref_logits, ref_past = model.forward_cached(prompt_ids)
    prefill = ort_session(out / layout["prefill"])
    feed = {"input_ids": prompt_ids.numpy(), **empty_past(prefill, prompt_ids.shape[0])}
    logits, *present = prefill.run(None, feed)
    limit = parity_limits(model.embed_tokens.weight.dtype, ref_logits)
    record["logit_limit"] = limit
    record["prefill_max_abs_diff"] = _max_diff(logits, ref_logits)
    flat_ref = [t for kv in ref_past if kv is not None for t in kv]
    cache_limit = max([limit] + [parity_limits(t.dtype, t) for t in flat_ref])
    record["cache_limit"] = cache_limit
    record["prefill_cache_max_abs_diff"] = max(
        (_max_diff(a, b) for a, b in zip(present, flat_ref, strict=True)), default=0.0
    )
    int8 = is_int8(model)
    if int8:  # distributions, not logits (``int8_verdict``); caches and greedy only recorded
        record["int8_prefill"] = int8_verdict(model, prompt_ids, ref_logits, logits)
        checks = [record["int8_prefill"]["passed"]]
        summary = f"int8 prefill KL {record['int8_prefill']['kl_runtime']:.2e}"
    else:
        checks = [
            record["prefill_max_abs_diff"] <= limit,
            record["prefill_cache_max_abs_diff"] <= cache_limit,
        ]
        summary = f"prefill {record['prefill_max_abs_diff']:.2e}"
    if layout["decode"]:
        runner = OrtDecoder(out)
        token = ref_logits[:, -1].argmax(-1, keepdim=True)
        with torch.no_grad():
            ref_step, ref_new = model.forward_cached(token, ref_past)
        step, new = runner.run_decode(token.numpy(), present)
        record["decode_max_abs_diff"] = _max_diff(step, ref_step)
        flat_new = [t for kv in ref_new if kv is not None for t in kv]
        record["decode_cache_max_abs_diff"] = max(
            (_max_diff(a, b) for a, b in zip(new, flat_new, strict=True)), default=0.0
        )
        first = prompt_ids[:1]
        ref_tokens = model.generate_greedy(first, greedy_tokens).numpy()
        ort_tokens = runner.generate_greedy(first.numpy(), greedy_tokens)
        record.update(greedy_verdict(model, first, ref_tokens, ort_tokens, limit))
        if int8:
            record["int8_decode"] = int8_verdict(
                model, torch.cat([prompt_ids, token], 1), ref_step, step
            )
            checks.append(record["int8_decode"]["passed"])
        else:
            checks += [
                record["decode_max_abs_diff"] <= limit,
                record["decode_cache_max_abs_diff"] <= cache_limit,
                record["greedy_equal"] or record["greedy_tie"],
            ]
        step_diff = record["int8_decode"]["kl_runtime"] if int8 else record["decode_max_abs_diff"]
        summary += f", decode {step_diff:.2e}, greedy " + (
            "equal" if record["greedy_equal"] else f"differs at {record['greedy_first_mismatch']}"
        )
    record["passed"] = bool(all(checks))
    shown = record["int8_prefill"]["kl_limit"] if int8 else limit
    record["summary"] = summary + f" (limit {shown:.2g}{' nats per token' * int8})"
    atomic_write_json(out / "parity.json", record)
    return record


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a.astype(np.float64) - b.double().numpy()).max()) if a.size else 0.0


def ort_prefill_latency(
    onnx_path: str | os.PathLike,
    batch: int = 1,
    seq: int = 256,
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    vocab_size: int = 2,
    seed: int = 0,
) -> dict:
    """Time a prompt (a prefill graph, or a decoder graph with no past) in onnxruntime: median, p10 and p90 in ms over ``repeats`` runs."""
    session = ort_session(onnx_path, threads)
    ids = np.random.default_rng(seed).integers(0, vocab_size, (batch, seq), dtype=np.int64)
    feed = {"input_ids": ids, **empty_past(session, batch)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": float(np.median(times)),
        "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)),
        "repeats": repeats,
        "batch": batch,
        "seq": seq,
        "threads": threads,
    }

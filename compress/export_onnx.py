"""ONNX export of a student (or a parent): a prefill graph and a decode graph, with parity.

- ``prefill.onnx``: ``input_ids`` (batch, seq) -> ``logits`` (batch, seq, vocab) and, for every
  layer ``i`` whose attention keeps a cache, ``present.{i}.key`` / ``present.{i}.value``
  (batch, kv_heads_i, seq, head_dim). Layers with no-op or linear attention have no cache.
- ``decode.onnx``: ``input_ids`` (batch, seq) plus ``past_key_values.{i}.key`` / ``.value``
  (batch, kv_heads_i, past, head_dim) -> ``logits`` and the ``present.*`` caches of length
  past + seq.
- ``export.json``: the input/output names and the cache layout (layer, KV heads, head dim).
- ``parity.json``: written right after export by ``parity_check`` (onnxruntime vs. torch).

Batch, sequence and past length are dynamic axes. Both exporters of torch 2.13 work (the
parity check holds for either): ``dynamo`` (the default, ``torch.onnx.export(dynamo=True)``:
torch.export traces the attention's ``torch.arange`` positions and boolean causal mask
symbolically; tied embeddings stay one initializer) and ``torchscript`` (the deprecated
tracer, ``dynamo=False``: about 6x faster to export on a CPU, same onnxruntime speed, but
stores tied embeddings twice). The export wrapper skips no-op subblocks (their delta is
zero), so they cost nothing in the graph.
"""

from __future__ import annotations

import contextlib
import io
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
from compress.model import BlockModel

PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
EXPORTERS = ("dynamo", "torchscript")
TOLERANCE = {"float32": 1e-4}  # max abs logit difference; other dtypes: 5e-2
# ... or this fraction of the largest reference value: deep fp32 models carry that much
# rounding noise (smollm2-135m students: torch fp32 vs. fp64 differ by ~1e-5 of the top logit)
REL_TOLERANCE = 3e-5


class ExportError(UserError):
    """An export or its parity check failed."""


def cached_layers(model: BlockModel) -> list[dict]:
    """Per layer with a KV cache: ``{"layer", "kv_heads", "head_dim"}``, in layer order."""
    out = []
    for i, layer in enumerate(model.layers):
        attn = layer.attention
        if getattr(attn, "has_kv_cache", False):
            out.append({"layer": i, "kv_heads": attn.num_kv_heads, "head_dim": attn.head_dim})
    return out


def cache_names(layers: list[dict], prefix: str) -> list[str]:
    """``prefix.{i}.key``, ``prefix.{i}.value`` for each cached layer ``i``, in order."""
    return [f"{prefix}.{c['layer']}.{part}" for c in layers for part in ("key", "value")]


class _Graph(nn.Module):
    """Shared body of both graphs: the model's cached forward, with no-ops left out."""

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
    prefill: Path
    decode: Path
    parity: dict | None


def export_onnx(
    model: BlockModel,
    out_dir: str | os.PathLike,
    parity: bool = True,
    parity_tokens: int = 32,
    prompt_ids: torch.Tensor | None = None,
    opset: int | None = None,
    decode: bool = True,
    exporter: str = "dynamo",
) -> ExportResult:
    """Export ``model`` to ``out_dir`` (prefill, decode, export.json), then check parity.

    The files appear in ``out_dir`` only once both graphs exported (``decode=False``: the
    prefill graph only). With ``parity``, runs ``parity_check`` and writes ``parity.json``;
    raises ``ExportError`` if the export or the parity check fails. ``exporter``: one of
    ``EXPORTERS``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    layers = cached_layers(model)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        t0 = time.perf_counter()
        _export_prefill(model, layers, tmp / PREFILL_FILE, opset, exporter)
        if decode:
            _export_decode(model, layers, tmp / DECODE_FILE, opset, exporter)
        seconds = time.perf_counter() - t0
        (out / "parity.json").unlink(missing_ok=True)  # never leave a stale verdict
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(
        out / "export.json",
        {
            "prefill": PREFILL_FILE,
            "decode": DECODE_FILE if decode else None,
            "dtype": _dtype_name(model),
            "vocab_size": model.shape.vocab_size,
            "num_layers": model.num_layers,
            "cache": layers,
            "prefill_inputs": ["input_ids"],
            "prefill_outputs": ["logits", *cache_names(layers, "present")],
            "decode_inputs": ["input_ids", *cache_names(layers, "past_key_values")],
            "decode_outputs": ["logits", *cache_names(layers, "present")],
            "dynamic_axes": {"batch": "dim 0", "seq": "input_ids dim 1", "past": "cache dim 2"},
            "exporter": exporter,
            "export_seconds": seconds,
            "torch": torch.__version__,
        },
    )
    record = None
    if parity:
        record = parity_check(model, out, parity_tokens, prompt_ids, decode=decode)
        if not record["passed"]:
            raise ExportError(
                f"ONNX parity failed in {out}: {record['summary']} (see {out / 'parity.json'})"
            )
    return ExportResult(out, out / PREFILL_FILE, out / DECODE_FILE, record)


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

    return Dim("batch", min=1), Dim("seq", min=1), Dim("past", min=1)


def _export_prefill(model: BlockModel, layers: list[dict], path: Path, opset, exporter) -> None:
    batch, seq, _ = _dims()
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
    batch, seq, past_len = _dims()
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
        ({0: batch, 1: seq}, [{0: batch, 2: past_len} for _ in past]),
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


class OrtDecoder:
    """Runs an exported pair of graphs with the KV cache (numpy in, numpy out)."""

    def __init__(self, out_dir: str | os.PathLike, threads: int | None = None):
        out = Path(out_dir)
        self.prefill = ort_session(out / PREFILL_FILE, threads)
        self.decode = ort_session(out / DECODE_FILE, threads)
        self.past_names = [i.name for i in self.decode.get_inputs()][1:]

    def run_prefill(self, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        logits, *present = self.prefill.run(None, {"input_ids": ids})
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
    decode: bool = True,
) -> dict:
    """Compare onnxruntime with torch and write ``parity.json``; returns the record.

    Checks: prefill logits (batch 2), one decode step with the cache (and the caches), and
    ``greedy_tokens`` greedy tokens through onnxruntime vs. ``model.generate_greedy``.
    A difference passes within the dtype's absolute tolerance (fp32: 1e-4) or within
    ``REL_TOLERANCE`` of the largest reference value (large models have large logits). A
    greedy mismatch passes only where torch's top-2 logits are within ten limits (a tie).
    ``prompt_ids`` (B, S) defaults to seeded random tokens; a real text prompt avoids ties.
    """
    out = Path(out_dir)
    tol = TOLERANCE.get(_dtype_name(model), 5e-2)
    if prompt_ids is None:
        gen = torch.Generator().manual_seed(0)
        prompt_ids = torch.randint(0, model.shape.vocab_size, (2, 16), generator=gen)
    prompt_ids = prompt_ids.long()
    if prompt_ids.shape[0] == 1:
        prompt_ids = prompt_ids.repeat(2, 1)
    record: dict = {
        "tolerance": tol,
        "dtype": _dtype_name(model),
        "prompt_shape": list(prompt_ids.shape),
    }
    with torch.no_grad():
        ref_logits, ref_past = model.forward_cached(prompt_ids)
    prefill = ort_session(out / PREFILL_FILE)
    logits, *present = prefill.run(None, {"input_ids": prompt_ids.numpy()})
    limit = max(tol, REL_TOLERANCE * float(ref_logits.abs().max()))
    record["logit_limit"] = limit
    record["prefill_max_abs_diff"] = _max_diff(logits, ref_logits)
    flat_ref = [t for kv in ref_past if kv is not None for t in kv]
    cache_limit = max([tol] + [REL_TOLERANCE * float(t.abs().max()) for t in flat_ref])
    record["cache_limit"] = cache_limit
    record["prefill_cache_max_abs_diff"] = max(
        (_max_diff(a, b) for a, b in zip(present, flat_ref, strict=True)), default=0.0
    )
    checks = [
        record["prefill_max_abs_diff"] <= limit,
        record["prefill_cache_max_abs_diff"] <= cache_limit,
    ]
    if decode:
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
        equal = ref_tokens == ort_tokens
        record["greedy_tokens"] = greedy_tokens
        record["greedy_equal"] = bool(equal.all())
        mismatch = None if equal.all() else int(np.argmin(equal[0]))
        record["greedy_first_mismatch"] = mismatch
        record["greedy_tie"] = False
        if mismatch is not None:
            seen = torch.cat([first, torch.as_tensor(ref_tokens[:, :mismatch])], dim=1)
            with torch.no_grad():
                top2 = model(seen)[0, -1].float().topk(2).values
            record["greedy_margin"] = float(top2[0] - top2[1])
            record["greedy_tie"] = record["greedy_margin"] <= 10 * limit
        checks += [
            record["decode_max_abs_diff"] <= limit,
            record["decode_cache_max_abs_diff"] <= cache_limit,
            record["greedy_equal"] or record["greedy_tie"],
        ]
    record["passed"] = bool(all(checks))
    record["summary"] = (
        f"prefill {record['prefill_max_abs_diff']:.2e}"
        + (
            f", decode {record['decode_max_abs_diff']:.2e}, greedy "
            f"{'equal' if record['greedy_equal'] else 'differs at ' + str(record['greedy_first_mismatch'])}"
            if decode
            else ""
        )
        + f" (limit {limit:.2g})"
    )
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
    """Time a prefill graph in onnxruntime: median, p10 and p90 in ms over ``repeats`` runs."""
    session = ort_session(onnx_path, threads)
    ids = np.random.default_rng(seed).integers(0, vocab_size, (batch, seq), dtype=np.int64)
    for _ in range(warmup):
        session.run(None, {"input_ids": ids})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {"input_ids": ids})
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

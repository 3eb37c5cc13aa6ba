"""Measured points: a student's real latency and its quality on the eval split.

``measure_point`` returns the ``measured_*`` columns of a Pareto point: latency from a
``latency_fn`` (by default ``ort_latency_fn``: the exported prefill graph timed in an
onnxruntime session, medians over repeats) and quality on eval tokens (KL from the parent,
LM loss, perplexity: ``compress.evaluate.evaluate``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import torch

from compress.evaluate import evaluate
from compress.model import BlockModel

LatencyFn = Callable[[BlockModel], dict]


def ort_latency_fn(
    batch: int = 1,
    seq: int = 256,
    threads: int | None = None,
    repeats: int = 20,
    warmup: int = 3,
    exporter: str = "torchscript",
) -> LatencyFn:
    """A ``latency_fn``: export the prefill graph to a temp folder and time it in onnxruntime.

    The returned function gives ``compress.export_onnx.ort_prefill_latency``'s record
    (``median_ms``, ``p10_ms``, ``p90_ms``, ...). The TorchScript exporter is the default
    here: it exports several times faster and onnxruntime runs its graph as fast.
    """
    from compress.export_onnx import export_onnx, ort_prefill_latency

    def measure(model: BlockModel) -> dict:
        folder = tempfile.mkdtemp(prefix="nas-latency-")
        try:
            result = export_onnx(model, folder, parity=False, decode=False, exporter=exporter)
            return ort_prefill_latency(
                result.prefill, batch, seq, threads, repeats, warmup, model.shape.vocab_size
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return measure


def profile_latency_fn(profile, **overrides) -> LatencyFn:
    """A ``latency_fn`` timing the whole student with a hardware profile's backend and
    settings (``compress.latency``), so measured and predicted latency are comparable."""
    from compress.latency import get_backend, settings_of, time_graphs, whole_graph

    settings = settings_of(profile, **overrides)

    def measure(model: BlockModel) -> dict:
        times = time_graphs(
            get_backend(settings), {"student": whole_graph(model, settings)}, settings
        )
        values = times["student"]
        return {
            "median_ms": float(np.median(values)),
            "p10_ms": float(np.percentile(values, 10)),
            "p90_ms": float(np.percentile(values, 90)),
            "repeats": len(values),
            "backend": settings.backend,
            "phase": settings.phase,
            "batch": settings.batch,
            "seq": settings.seq,
        }

    return measure


def measure_point(
    student: BlockModel,
    parent: BlockModel,
    eval_tokens: torch.Tensor,
    latency_fn: LatencyFn | None = None,
    batch_size: int = 8,
) -> dict:
    """The measured columns of one point: ``measured_latency_ms`` (median), ``measured_kl``,
    ``measured_lm_loss``, ``measured_perplexity``, plus the latency record's details."""
    latency = (latency_fn or ort_latency_fn())(student)
    q = evaluate(student, eval_tokens, parent, batch_size)
    return {
        "measured_latency_ms": latency["median_ms"],
        "measured_kl": q.kl,
        "measured_lm_loss": q.lm_loss,
        "measured_perplexity": q.perplexity,
        "measured_latency": latency,
    }

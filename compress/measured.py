"""Measured points: a student's real latency and its quality on the eval split.

``measure_point`` returns the ``measured_*`` columns of a Pareto point: latency from a
``latency_fn`` (by default ``ort_latency_fn``: the exported prefill graph timed in an
onnxruntime session, medians over repeats) and quality on eval tokens (KL from the parent,
LM loss, perplexity).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import torch

from compress.evaluate import kl_from_logits
from compress.model import BlockModel

LatencyFn = Callable[[BlockModel], dict]


@torch.no_grad()
def quality(
    student: BlockModel, parent: BlockModel, eval_tokens: torch.Tensor, batch_size: int = 8
) -> dict:
    """KL(parent || student) per position, LM loss (nats/token) and perplexity on (N, S) ids."""
    kl_sum, kl_count, nll_sum, nll_count = 0.0, 0, 0.0, 0
    for start in range(0, eval_tokens.shape[0], batch_size):
        ids = eval_tokens[start : start + batch_size]
        logits = student(ids)
        kl = kl_from_logits(parent(ids), logits)
        kl_sum += float(kl.sum())
        kl_count += kl.numel()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        nll_sum += float(nll)
        nll_count += ids[:, 1:].numel()
    loss = nll_sum / max(nll_count, 1)
    return {"kl": kl_sum / max(kl_count, 1), "lm_loss": loss, "perplexity": math.exp(loss)}


class KLReference:
    """The parent's logits on fixed (N, S) tokens, computed once, so that many students can be
    compared against them (``kl``) without rerunning the parent."""

    @torch.no_grad()
    def __init__(self, parent: BlockModel, tokens: torch.Tensor, batch_size: int = 4):
        self.batches = [
            (tokens[start : start + batch_size], parent(tokens[start : start + batch_size]))
            for start in range(0, tokens.shape[0], batch_size)
        ]
        self.tokens = int(tokens.numel())

    @torch.no_grad()
    def kl(self, student: BlockModel) -> float:
        """Mean per-position KL(parent || student) in nats over the reference tokens."""
        total, count = 0.0, 0
        for ids, parent_logits in self.batches:
            kl = kl_from_logits(parent_logits, student(ids))
            total += float(kl.sum())
            count += kl.numel()
        return total / max(count, 1)


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
    q = quality(student, parent, eval_tokens, batch_size)
    return {
        "measured_latency_ms": latency["median_ms"],
        "measured_kl": q["kl"],
        "measured_lm_loss": q["lm_loss"],
        "measured_perplexity": q["perplexity"],
        "measured_latency": latency,
    }

"""Parity verdicts shared by every export (ONNX, onnxruntime-genai, transformers folders):
how far a runtime's logits may be from this project's model, and when greedy tokens agree."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from compress.export.nas_llm_layers import DynamicInt8Linear
from compress.model import BlockModel

# parity limits per dtype: (absolute, fraction of the largest reference value). A difference
# passes within either: deep fp32 models carry rounding noise proportional to their logits
# (smollm2-135m students: torch fp32 vs. fp64 differ by ~1e-5 of the top logit); half
# precisions keep ~3 (fp16) or ~2 (bf16) significant digits per operation, and two runtimes
# round differently at every one of them (stories260K students, 5 layers: torch fp16 vs.
# onnxruntime fp16 differ by up to ~7e-2 at logits of ~15).
PARITY_LIMITS = {"float32": (1e-4, 3e-5), "float16": (1e-1, 1e-2), "bfloat16": (2.5e-1, 4e-2)}


def parity_limits(dtype: torch.dtype | str, reference: torch.Tensor) -> float:
    """The largest allowed absolute difference from ``reference`` in ``dtype``."""
    name = str(dtype).removeprefix("torch.")
    absolute, relative = PARITY_LIMITS.get(name, PARITY_LIMITS["bfloat16"])
    return max(absolute, relative * float(reference.abs().max()))


def greedy_verdict(
    model: BlockModel, prompt: torch.Tensor, ours: np.ndarray, theirs: np.ndarray, limit: float
) -> dict:
    """Compare greedy tokens (1, T) of ``model`` (``ours``) and a runtime (``theirs``).

    A mismatch is excused only where ``model``'s top-2 logits at the first differing step
    are within ten ``limit`` (a tie the runtime may break either way)."""
    equal = ours.shape == theirs.shape and bool((ours == theirs).all())
    record = {"greedy_tokens": int(ours.shape[1]), "greedy_equal": equal, "greedy_tie": False}
    record["greedy_first_mismatch"] = None
    if not equal:
        same = ours[0, : theirs.shape[1]] == theirs[0, : ours.shape[1]]
        mismatch = int(np.argmin(same)) if not same.all() else int(min(same.size, ours.shape[1]))
        record["greedy_first_mismatch"] = mismatch
        seen = torch.cat([prompt[:1], torch.as_tensor(ours[:1, :mismatch])], dim=1)
        with torch.no_grad():
            top2 = model(seen)[0, -1].float().topk(2).values
        record["greedy_margin"] = float(top2[0] - top2[1])
        record["greedy_tie"] = record["greedy_margin"] <= 10 * limit
    return record


# --- models with int8 layers ---------------------------------------------------------------------
# Their logits cannot match a runtime's to float precision: an input a float rounding away from
# a quantization boundary lands on the other side in one of the two, and that difference grows
# from layer to layer (60 int8 subblocks of smollm2-135m: torch and onnxruntime differ by a KL of
# ~0.05 per token, about what int8 rounding itself moves the model). So the verdict is on
# distributions: the runtime may be no further from this model than int8 rounding moves it.
INT8_KL_FLOOR = 1e-3  # nats per token a runtime may differ by, however little rounding moves it


@contextlib.contextmanager
def float_linears():
    """Within: every ``DynamicInt8Linear`` computes in float (the model's float twin)."""
    DynamicInt8Linear.quantized = False
    try:
        yield
    finally:
        DynamicInt8Linear.quantized = True


def kl_per_token(ref: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(ref || other) over the positions of two (..., vocab) logit tensors."""
    p = ref.double().log_softmax(-1)
    q = torch.as_tensor(other).double().log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def int8_verdict(model: BlockModel, ids: torch.Tensor, ours: torch.Tensor, theirs) -> dict:
    """For a model with int8 layers (``is_int8``): KL(ours || theirs) per token of the logits of
    ``ids`` (or of its last positions, for a decode step) must stay within twice the KL by which
    int8 rounding moves ``model`` (from its float twin), and at least ``INT8_KL_FLOOR``."""
    with torch.no_grad(), float_linears():
        twin = model(ids)[:, -ours.shape[1] :]  # a decode step's logits: the last positions
        rounding = kl_per_token(twin.float(), ours.float())
    runtime = kl_per_token(ours.float(), theirs)
    limit = max(INT8_KL_FLOOR, 2 * rounding)
    return {
        "kl_runtime": runtime,
        "kl_int8_rounding": rounding,
        "kl_limit": limit,
        "passed": runtime <= limit,
    }

"""Parity verdicts shared by every export (ONNX, onnxruntime-genai, transformers folders):
how far a runtime's logits may be from this project's model, and when greedy tokens agree."""

from __future__ import annotations

import numpy as np
import torch

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

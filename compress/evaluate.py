"""Language-model quality on token sequences: LM loss, perplexity, KL to a reference."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from compress.progress import track


@torch.no_grad()
def lm_loss(
    model, sequences: Iterable[torch.Tensor], batch_size: int = 8, description: str | None = None
) -> dict:
    """Mean next-token cross-entropy (nats/token) over all predicted positions.

    ``sequences`` is a (N, S) tensor or an iterable of 1-D tensors of any length (each is run
    on its own). ``model(ids)`` must return (B, S, vocab) logits. Returns loss, perplexity and
    the number of predicted tokens. With ``description``, batches show a progress bar.
    """
    total, count = 0.0, 0
    batches = list(_batches(sequences, batch_size))
    for batch in track(batches, description) if description else batches:
        logits = model(batch)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            batch[:, 1:].reshape(-1),
            reduction="sum",
        )
        total += float(loss)
        count += batch[:, 1:].numel()
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def kl_from_logits(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student) of the next-token distributions, shape (...)."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def _batches(sequences, batch_size: int):
    if isinstance(sequences, torch.Tensor) and sequences.dim() == 2:
        for start in range(0, sequences.shape[0], batch_size):
            yield sequences[start : start + batch_size]
    else:
        for seq in sequences:
            yield seq.view(1, -1)

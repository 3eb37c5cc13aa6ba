"""Language-model quality on token sequences: LM loss, perplexity, KL to a reference.

One evaluator for every quality figure of the project (baseline loss, replace-one-block
scores, rerank, GKD checks, measured columns, benchmarks): ``QualityMeter`` accumulates a
stream of batches, ``evaluate`` runs a model (and its reference) over tokens batch by batch,
running the reference once per batch, or never when its logits are cached (``ParentLogits``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compress.progress import track


@dataclass(frozen=True)
class Quality:
    """``kl``: mean per-position KL(reference || model) in nats (``nan`` without a reference;
    exactly 0 for the reference itself); ``lm_loss``: mean next-token cross-entropy in
    nats/token; ``top1``: share of positions whose argmax agrees with the reference's;
    ``tokens``: predicted positions (targets)."""

    kl: float
    lm_loss: float
    perplexity: float
    top1: float
    tokens: int

    def to_dict(self) -> dict:
        """The measured-column keys: ``kl``, ``lm_loss``, ``perplexity``."""
        return {"kl": self.kl, "lm_loss": self.lm_loss, "perplexity": self.perplexity}


def kl_from_logits(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(teacher || student) of the next-token distributions, shape (...)."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1)


class QualityMeter:
    """Sums of KL, cross-entropy and argmax agreement over batches (``add``), then ``result``."""

    def __init__(self) -> None:
        self.kl_sum = self.nll_sum = 0.0
        self.agree = self.positions = self.targets = 0
        self.with_reference = True

    @torch.no_grad()
    def add(
        self, ids: torch.Tensor, logits: torch.Tensor, reference: torch.Tensor | None = None
    ) -> None:
        """One batch: ``ids`` (B, S), the model's ``logits`` (B, S, vocab) and the reference's
        (same shape; ``None``: no KL; ``logits`` itself: KL 0 without computing it)."""
        same = reference is logits
        logits = logits.float()
        self.nll_sum += float(
            F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="sum",
            )
        )
        self.targets += ids[:, 1:].numel()
        self.positions += ids.numel()
        if reference is None:
            self.with_reference = False
        elif same:
            self.agree += ids.numel()
        else:
            self.kl_sum += float(kl_from_logits(reference, logits).sum())
            self.agree += int((logits.argmax(-1) == reference.argmax(-1)).sum())

    def result(self) -> Quality:
        loss = self.nll_sum / max(self.targets, 1)
        positions = max(self.positions, 1)
        kl = self.kl_sum / positions if self.with_reference else math.nan
        top1 = self.agree / positions if self.with_reference else math.nan
        return Quality(kl, loss, math.exp(loss), top1, self.targets)


class ParentLogits:
    """A reference's logits on fixed (N, S) tokens, computed once, so that many models are
    compared against them (``evaluate(model, logits.tokens, logits)``) without rerunning it."""

    @torch.no_grad()
    def __init__(self, reference, tokens: torch.Tensor, batch_size: int = 8):
        self.tokens = tokens
        self.batch_size = batch_size
        self.logits = [reference(ids) for ids in _batches(tokens, batch_size)]


@torch.no_grad()
def evaluate(
    model,
    sequences: torch.Tensor | Iterable[torch.Tensor],
    reference=None,
    batch_size: int = 8,
    description: str | None = None,
) -> Quality:
    """Quality of ``model`` on ``sequences``: a (N, S) tensor or an iterable of 1-D tensors
    of any length (each run on its own). ``model(ids)`` must return (B, S, vocab) logits.

    ``reference``: ``None`` (LM loss only), a model (run once per batch; the model itself is
    run once and scores KL 0) or ``ParentLogits`` of these very tokens (never rerun). With
    ``description``, batches show a progress bar."""
    if isinstance(reference, ParentLogits):
        if reference.tokens is not sequences and not torch.equal(reference.tokens, sequences):
            raise ValueError("ParentLogits were computed on other tokens than these")
        batch_size = reference.batch_size
    meter = QualityMeter()
    batches = list(_batches(sequences, batch_size))
    for b, ids in enumerate(track(batches, description) if description else batches):
        logits = model(ids)
        if reference is None:
            meter.add(ids, logits)
        elif isinstance(reference, ParentLogits):
            meter.add(ids, logits, reference.logits[b])
        else:
            meter.add(ids, logits, logits if reference is model else reference(ids))
    return meter.result()


def lm_loss(
    model, sequences: Iterable[torch.Tensor], batch_size: int = 8, description: str | None = None
) -> dict:
    """Mean next-token cross-entropy (nats/token) over all predicted positions: ``loss``,
    ``perplexity`` and ``tokens`` (predicted tokens); see ``evaluate``."""
    q = evaluate(model, sequences, None, batch_size, description)
    return {"loss": q.lm_loss, "perplexity": q.perplexity, "tokens": q.tokens}


def _batches(sequences, batch_size: int):
    if isinstance(sequences, torch.Tensor) and sequences.dim() == 2:
        for start in range(0, sequences.shape[0], batch_size):
            yield sequences[start : start + batch_size]
    else:
        for seq in sequences:
            yield seq.view(1, -1)

"""Global knowledge distillation (GKD): heal an assembled student against its whole parent.

Loss per batch, averaged over positions::

    KL(parent || student) of the next-token distributions
    + hidden_weight * (1 - cosine(student hidden, parent hidden))

where the hidden states are the final ones *after* the final norm (what the LM head reads).
Every student parameter is trained (embeddings and head included) with AdamW and a linear
warm-up followed by a cosine decay to zero; the parent is only run forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from compress.evaluate import ParentLogits, evaluate, kl_from_logits
from compress.model import BlockModel
from compress.progress import track


@dataclass(frozen=True)
class GKDSettings:
    """``tokens``: training tokens in total (rounded down to whole batches, at least one);
    ``train_embeddings``: also train the embeddings, LM head and final norm (by default only
    the layers are trained: on SmolLM2-135M that healed as well in 8-15 % less time,
    ``bench/gkd_ablation.py``)."""

    tokens: int = 16384
    batch_size: int = 4
    lr: float = 1e-4
    hidden_weight: float = 1.0
    train_embeddings: bool = False
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.batch_size < 1 or self.lr <= 0 or self.hidden_weight < 0:
            raise ValueError(f"bad GKD settings {self}")


def gkd_loss(
    student: BlockModel, parent: BlockModel, ids: torch.Tensor, hidden_weight: float
) -> tuple[torch.Tensor, dict]:
    """The GKD loss of one batch ``ids`` (B, S) and its two parts (floats)."""
    with torch.no_grad():
        parent_hidden = parent.hidden_states(ids)  # (B, S, hidden), after the final norm
        parent_logits = parent.lm_head(parent_hidden)
    hidden = student.hidden_states(ids)
    logits = student.lm_head(hidden)
    kl = kl_from_logits(parent_logits, logits).mean()
    cos = F.cosine_similarity(hidden.float(), parent_hidden.float(), dim=-1).mean()
    loss = kl + hidden_weight * (1.0 - cos)
    return loss, {"kl": float(kl.detach()), "cosine": float(cos.detach())}


def heal_student(
    student: BlockModel,
    parent: BlockModel,
    train: torch.Tensor,
    settings: GKDSettings = GKDSettings(),
    eval_tokens: torch.Tensor | None = None,
    report: Callable[[str], None] | None = None,
) -> tuple[BlockModel, dict]:
    """Train ``student`` in place against ``parent`` on ``train`` (N, S) token sequences.

    Returns the student (in eval mode) and a record: steps, tokens, seconds, first and last
    loss, and (with ``eval_tokens``) the eval KL before and after.
    """
    if train.dim() != 2 or train.shape[0] == 0:
        raise ValueError(
            f"train tokens must be a non-empty (N, S) tensor, got {tuple(train.shape)}"
        )
    seq_len = train.shape[1]
    batch = min(settings.batch_size, train.shape[0])
    steps = max(1, settings.tokens // (batch * seq_len))
    warmup = int(steps * settings.warmup_fraction)
    record: dict = {"settings": asdict(settings), "steps": steps, "tokens": steps * batch * seq_len}
    was_training = parent.training
    parent.eval()
    reference = None
    if eval_tokens is not None:  # the parent's eval logits, once for both checks
        reference = ParentLogits(parent, eval_tokens)
        record["eval_kl_before"] = evaluate(student, eval_tokens, reference).kl
    ends = (student.embed_tokens, student.lm_head, student.norm)
    frozen = [] if settings.train_embeddings else [p for m in ends for p in m.parameters()]
    frozen = [p for p in frozen if p.requires_grad]
    frozen_ids = {id(p) for p in frozen}
    if not any(p.requires_grad for p in student.parameters() if id(p) not in frozen_ids):
        frozen = []  # nothing else to train (every layer a no-op): train the ends after all
    for p in frozen:  # no gradient at all for them (the LM head's weight gradient is costly)
        p.requires_grad_(False)
    try:
        losses, seconds = _train(student, parent, train, settings, steps, batch, warmup)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    student.eval()
    parent.train(was_training)
    record.update(seconds=seconds, loss_first=losses[0], loss_last=losses[-1])
    if report:
        report(
            f"[gkd] {steps} steps on {record['tokens']} tokens: loss {losses[0]:.4f} -> "
            f"{losses[-1]:.4f} in {record['seconds']:.1f}s"
        )
    if reference is not None:
        record["eval_kl_after"] = evaluate(student, eval_tokens, reference).kl
    return student, record


def _train(student, parent, train, settings, steps: int, batch: int, warmup: int):
    """The GKD loop over the student's trainable parameters: (losses, seconds)."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _cosine_with_warmup(step, warmup, steps)
    )
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(train.shape[0], generator=generator)
    cursor = 0
    student.train()
    t0 = time.perf_counter()
    losses = []
    for _step in track(range(steps), "[gkd] steps"):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(train.shape[0], generator=generator), 0
        ids = train[order[cursor : cursor + batch]]
        cursor += batch
        loss, _parts = gkd_loss(student, parent, ids, settings.hidden_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses, time.perf_counter() - t0


def _cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

"""Blockwise local distillation (Puzzle BLD): train one variant to imitate its parent subblock.

The variant sees the parent's own recorded inputs (teacher forcing, ``compress.capture``), so
every (layer, variant) trains alone. Loss: normalised MSE ``||y_v - y_p||^2 / ||y_p||^2`` of
the subblock output over a batch; AdamW; linear warm-up then cosine decay to zero.
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compress.builders import InitData, build_variant
from compress.capture import Activations
from compress.variants import VariantSpec


@dataclass(frozen=True)
class BLDConfig:
    """``tokens``: training tokens seen per variant; ``batch_size``: sequences per step;
    ``init_tokens``: tokens of the train capture used to initialise (importance, least squares);
    ``eval_batch_size``: sequences per forward pass when measuring nMSE."""

    tokens: int = 32768
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    seed: int = 0
    init_tokens: int = 2048
    eval_batch_size: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


def nmse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||pred - target||^2 / ||target||^2`` over all elements (a scalar tensor)."""
    return (pred - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-20)


@torch.no_grad()
def heldout_nmse(
    module: nn.Module, data: Activations, layer: int, kind: str, batch: int = 16
) -> float:
    """nMSE of ``module`` against the parent over every sequence of ``data`` (summed, then
    divided), computed on the module's device."""
    device = next(module.parameters(), torch.empty(0)).device
    err, ref = 0.0, 0.0
    for first in range(0, data.num_sequences, batch):
        inputs, targets = data.sequences(layer, kind, slice(first, first + batch))
        inputs, targets = inputs.to(device), targets.to(device)
        pred = module(inputs).float()
        err += float((pred - targets).pow(2).sum())
        ref += float(targets.pow(2).sum())
    return err / max(ref, 1e-20)


def init_data(data: Activations, layer: int, kind: str, tokens: int) -> InitData:
    """The first ``tokens`` tokens (whole sequences, at least one) of the capture, (N, hidden)."""
    count = min(data.num_sequences, max(1, math.ceil(tokens / data.seq_len)))
    inputs, targets = data.tokens(layer, kind, 0, count * data.seq_len)
    return InitData(inputs=inputs, outputs=targets)


def _seed(config: BLDConfig, layer: int, spec: VariantSpec) -> int:
    return (config.seed * 1_000_003 + layer * 7919 + zlib.crc32(str(spec).encode())) % (2**31)


def lr_lambda(steps: int, warmup_fraction: float):
    """Multiplier of the base learning rate at step t: linear warm-up, then cosine to zero."""
    warmup = int(round(warmup_fraction * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_variant(
    spec: VariantSpec,
    layer: int,
    parent_subblock: nn.Module,
    train: Activations,
    heldout: Activations,
    config: BLDConfig,
    device: str = "cpu",
) -> tuple[nn.Module, dict]:
    """Build ``spec`` for ``layer`` from the parent subblock and train it with BLD.

    ``device`` (``"cpu"``, ``"cuda"``): where the training steps and nMSE run; the module is
    built on the CPU and returned there.

    Initialisation uses the first ``config.init_tokens`` tokens of ``train``; training cycles
    over ``train``'s sequences in a seeded random order for ``config.tokens`` tokens;
    ``nmse_init``/``nmse_final`` are both measured on all of ``heldout``; when training made
    the held-out nMSE worse (an initialisation that is already close, e.g. a window as long as
    most contexts), the initialised weights are kept (``kept_initialisation``, and
    ``nmse_trained`` records the trained figure). Returns the trained module (float32, eval mode) and its record (JSON-ready). Raises ``ValueError`` for a
    variant that has nothing to train (parent, noop).
    """
    if not spec.trainable:
        raise ValueError(f"{spec} has nothing to train")
    t0 = time.perf_counter()
    kind = spec.kind
    if next(parent_subblock.parameters()).dtype != torch.float32:
        parent_subblock = copy.deepcopy(parent_subblock).float()
    module = build_variant(spec, parent_subblock, init_data(train, layer, kind, config.init_tokens))
    module = module.float().to(device)
    module.eval()
    nmse_init = heldout_nmse(module, heldout, layer, kind, config.eval_batch_size)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}

    seq_len, n_seq = train.seq_len, train.num_sequences
    batch = min(config.batch_size, n_seq)
    steps = max(1, math.ceil(config.tokens / (batch * seq_len)))
    generator = torch.Generator().manual_seed(_seed(config, layer, spec))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps, config.warmup_fraction)
    )
    module.train()
    order, cursor, losses = torch.randperm(n_seq, generator=generator), 0, []
    for _ in range(steps):
        if cursor + batch > n_seq:  # a new epoch over the captured sequences
            order, cursor = torch.randperm(n_seq, generator=generator), 0
        index = order[cursor : cursor + batch].sort().values
        cursor += batch
        inputs, targets = train.sequences(layer, kind, index)  # (B, S, hidden) each
        inputs, targets = inputs.to(device), targets.to(device)
        loss = nmse_loss(module(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    module.eval()
    nmse_trained = heldout_nmse(module, heldout, layer, kind, config.eval_batch_size)
    kept_initialisation = nmse_trained > nmse_init  # training hurt: keep the initialised module
    if kept_initialisation:
        module.load_state_dict(initial)
    nmse_final = min(nmse_init, nmse_trained)
    module = module.cpu()
    seconds = time.perf_counter() - t0
    tokens = steps * batch * seq_len
    record = {
        "layer": layer,
        "kind": kind,
        "variant": str(spec),
        "params": sum(p.numel() for p in module.parameters()),
        "nmse_init": nmse_init,
        "nmse_final": nmse_final,
        "nmse_trained": nmse_trained,
        "kept_initialisation": kept_initialisation,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "tokens": tokens,
        "steps": steps,
        "heldout_tokens": heldout.num_tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "device": str(device),
        "config": config.to_dict(),
    }
    return module, record

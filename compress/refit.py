"""Sequential least-squares refit: pull an assembled student back onto its parent's residual stream.

BLD trains every variant on the parent's own inputs, so in a student each subblock sees a
residual stream that earlier replacements have already moved, and the errors add up. This pass
walks the layers in order on calibration tokens, running the student and the parent side by
side, and for every subblock with an output projection (``o_proj`` of an attention, ``down_proj``
of a gated FFN, the matrix of a linear replacement) solves, in closed form, for the projection
that makes the student's stream after that subblock closest to the parent's:

    W = argmin || x_s + W z_s - x_p' ||^2 + ridge * mean(diag(Z^T Z)) * ||W||^2

with ``z_s`` what the projection reads in the student and ``x_p'`` the parent's stream after
the same subblock. The fitted weight is then used for the rest of the walk, so a later layer
also corrects what an earlier one could not. Subblocks still on the parent's exact stream (the
untouched prefix) are left alone; no-op subblocks have nothing to fit. Nothing is trained by
gradient: one forward pass of each model per layer and one solve per projection. Memory: the
two residual streams over all the tokens, plus one projection's inputs (tokens x its input
width, e.g. 65,536 x 1,536 floats, 400 MB, for SmolLM2-135M's FFN) and its Gram matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from compress.blocks import GatedFFN, GQAttention, LinearSubblock
from compress.model import BlockModel


@dataclass(frozen=True)
class RefitSettings:
    """``tokens``: calibration tokens the solves see (whole sequences; at least a few times the
    widest projection input, 1,536 channels for SmolLM2-135M's FFN, or the fit follows noise);
    ``ridge``: the regulariser relative to the mean diagonal of each Gram matrix;
    ``batch_size``: sequences per forward pass."""

    tokens: int = 32768
    ridge: float = 1e-4
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.ridge < 0 or self.batch_size < 1:
            raise ValueError(f"bad refit settings {self}")


def output_projection(module: nn.Module) -> nn.Linear | None:
    """The linear layer that writes ``module``'s output, or None (a no-op has none)."""
    if isinstance(module, GQAttention):
        return module.o_proj
    if isinstance(module, GatedFFN):
        return module.down_proj
    if isinstance(module, LinearSubblock):
        return module.linear
    return None


def _batches(x: torch.Tensor, size: int):
    for first in range(0, x.shape[0], size):
        yield x[first : first + size]


def _apply(module: nn.Module, stream: torch.Tensor, size: int) -> torch.Tensor:
    """``module``'s output (its delta) over every sequence of ``stream``."""
    return torch.cat([module(part) for part in _batches(stream, size)])


def _solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """(out, in) weight from Z^T Z (in, in) and Z^T Y (in, out), both float64."""
    reg = ridge * gram.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + reg * eye, cross).T


@torch.no_grad()
def _fit(module: nn.Module, stream: torch.Tensor, target: torch.Tensor, settings):
    """Refit ``module``'s output projection so that ``stream + module(stream)`` ~ ``target``.

    Returns the refit module's output over ``stream`` (from the projection inputs kept during
    the fit, so without a second pass), or None when it has no projection to fit."""
    proj = output_projection(module)
    if proj is None:
        return None
    inputs: list[torch.Tensor] = []
    hook = proj.register_forward_hook(lambda _m, args, _out: inputs.append(args[0]))
    gram = cross = None
    try:
        size = settings.batch_size
        for part, goal in zip(_batches(stream, size), _batches(target, size), strict=True):
            module(part)
            z = inputs[-1].flatten(0, -2).float()
            want = (goal - part).flatten(0, -2).float()
            if proj.bias is not None:
                want = want - proj.bias.float()
            zz, zy = (z.T @ z).double(), (z.T @ want).double()
            gram, cross = (zz, zy) if gram is None else (gram + zz, cross + zy)
    finally:
        hook.remove()
    proj.weight.copy_(_solve(gram, cross, settings.ridge).to(proj.weight.dtype))
    return torch.cat([proj(z) for z in inputs]).reshape(stream.shape)


@torch.no_grad()
def refit_student(
    student: BlockModel,
    parent: BlockModel,
    train: torch.Tensor,
    settings: RefitSettings = RefitSettings(),
    report: Callable[[str], None] | None = None,
) -> dict:
    """Refit ``student``'s output projections in place against ``parent`` on ``train`` (N, S).

    Uses the first ``settings.tokens`` tokens of ``train`` (whole sequences). Returns a
    record: tokens, subblocks refit, the final stream's nMSE to the parent before and after
    (on the first 16 of those sequences), seconds.
    """
    if train.dim() != 2 or train.shape[0] == 0:
        raise ValueError(
            f"train tokens must be a non-empty (N, S) tensor, got {tuple(train.shape)}"
        )
    if student.num_layers != parent.num_layers:
        raise ValueError(f"student has {student.num_layers} layers, its parent {parent.num_layers}")
    t0 = time.perf_counter()
    count = min(train.shape[0], max(1, -(-settings.tokens // train.shape[1])))
    ids = train[:count]
    was_training = student.training, parent.training
    student.eval()
    parent.eval()
    size = settings.batch_size
    xs = torch.cat([student.embed(part) for part in _batches(ids, size)])
    xp = xs.clone()
    probe = min(count, 16)  # sequences the before/after figure is measured on
    before = _final_nmse(student, parent, ids[:probe], size)
    refit, diverged = 0, False
    for layer in range(parent.num_layers):
        for kind in ("attention", "ffn"):
            mod_p, mod_s = parent.subblock(layer, kind), student.subblock(layer, kind)
            xp_next = xp + _apply(mod_p, xp, size)
            if not diverged:
                xs_next = xs + _apply(mod_s, xs, size)
                diverged = not torch.equal(xs_next, xp_next)
                if not diverged:  # still the parent's exact stream: nothing to correct
                    xs, xp = xs_next, xp_next
                    continue
            out = _fit(mod_s, xs, xp_next, settings)
            refit += out is not None
            xs, xp = xs + (_apply(mod_s, xs, size) if out is None else out), xp_next
    after = _nmse(xs[:probe], xp[:probe])
    student.train(was_training[0])
    parent.train(was_training[1])
    record = {
        "settings": asdict(settings),
        "tokens": int(ids.numel()),
        "subblocks_refit": refit,
        "stream_nmse_before": before,
        "stream_nmse_after": after,
        "seconds": time.perf_counter() - t0,
    }
    if report:
        report(
            f"[refit] {refit} projections on {record['tokens']} tokens: final-stream nMSE "
            f"{before:.4f} -> {after:.4f} in {record['seconds']:.1f}s"
        )
    return record


def _nmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-20))


def _final_nmse(student: BlockModel, parent: BlockModel, ids: torch.Tensor, size: int) -> float:
    """nMSE of the student's last residual stream (before the final norm) to the parent's."""
    err = ref = 0.0
    for part in _batches(ids, size):
        xs, xp = student.embed(part), parent.embed(part)
        for ls, lp in zip(student.layers, parent.layers, strict=True):
            xs, xp = ls(xs), lp(xp)
        err += float((xs.float() - xp.float()).pow(2).sum())
        ref += float(xp.float().pow(2).sum())
    return err / max(ref, 1e-20)

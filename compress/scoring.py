"""Replace-one-block scoring: one variant in the otherwise intact parent, compared to the parent.

The parent's residual stream at the input of every layer (and after the last layer) is computed
once for the scored tokens and kept in an ``ActivationCache`` (in memory, or as ``.npy`` memmaps
in a folder for real models). Scoring a variant of layer ``l`` starts the forward pass at the
cached input of layer ``l``, so the prefix is never recomputed; the parent's logits are
recomputed per batch from the cached final residual (one norm + LM head), never stored.

Metrics, all over the scored tokens (N sequences of S tokens):

- ``kl``: mean over all N*S positions of KL(parent || model) of the next-token distribution (nats);
- ``lm_loss``: mean next-token cross-entropy over the N*(S-1) positions that have a target;
- ``top1``: fraction of the N*S positions whose argmax token equals the parent's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.atomic import atomic_write_json
from compress.errors import UserError
from compress.evaluate import QualityMeter
from compress.model import BlockModel

_META = "meta.json"


class ActivationCacheError(UserError):
    """An activation cache folder is missing, incomplete, or belongs to other tokens/model."""


@dataclass(frozen=True)
class ReplaceScores:
    """Scores of one model against the parent on the cached tokens (see module docstring)."""

    kl: float
    lm_loss: float
    top1: float
    tokens: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _fingerprint(tokens: torch.Tensor, adapter: BlockModel) -> str:
    import hashlib

    h = hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes())
    h.update(adapter.shape.key.encode())
    return h.hexdigest()[:16]


class ActivationCache:
    """The parent's residual stream for fixed tokens (N, S).

    ``layer_input(l, a, b)`` is the input of layer ``l`` for sequences ``a:b`` (b-a, S, hidden);
    ``layer_input(num_layers, ...)`` is the residual after the last layer (before the final
    norm). Arrays are float32, either in memory or memory-mapped ``.npy`` files.
    """

    def __init__(self, tokens: torch.Tensor, residuals: list[np.ndarray], fingerprint: str):
        self.tokens = tokens
        self.residuals = residuals  # num_layers + 1 arrays of (N, S, hidden)
        self.fingerprint = fingerprint

    @property
    def num_layers(self) -> int:
        return len(self.residuals) - 1

    @property
    def num_sequences(self) -> int:
        return int(self.tokens.shape[0])

    def layer_input(self, layer: int, start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.residuals[layer][start:stop], dtype=np.float32))

    def final(self, start: int, stop: int) -> torch.Tensor:
        return self.layer_input(self.num_layers, start, stop)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        adapter: BlockModel,
        tokens: torch.Tensor,
        batch_size: int = 8,
        folder: str | os.PathLike | None = None,
    ) -> ActivationCache:
        """Run the parent once over ``tokens``; keep results in RAM, or in ``folder`` as memmaps.

        With a folder, a complete cache for the same tokens and model shape is reused as it
        is; an incomplete or different one is rebuilt (``meta.json`` is written last).
        """
        fingerprint = _fingerprint(tokens, adapter)
        if folder is not None:
            folder = Path(folder)
            try:
                cached = cls.open(folder)
                if cached.fingerprint == fingerprint:
                    return cached
            except ActivationCacheError:
                pass
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
        n, s = tokens.shape
        shape = (n, s, adapter.shape.hidden_size)
        count = adapter.num_layers + 1
        if folder is None:
            residuals = [np.empty(shape, dtype=np.float32) for _ in range(count)]
        else:
            residuals = [
                np.lib.format.open_memmap(
                    folder / f"residual_{i:03d}.npy", mode="w+", dtype=np.float32, shape=shape
                )
                for i in range(count)
            ]
        dtype = next(adapter.parameters()).dtype
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = adapter.embed(tokens[start:stop]).to(dtype)
            for i, layer in enumerate(adapter.layers):
                residuals[i][start:stop] = x.float().numpy()
                x = layer(x)
            residuals[-1][start:stop] = x.float().numpy()
        if folder is not None:
            for array in residuals:
                array.flush()
            np.save(folder / "tokens.npy", tokens.to(torch.int64).numpy())
            atomic_write_json(
                folder / _META,
                {"fingerprint": fingerprint, "layers": adapter.num_layers, "shape": list(shape)},
            )
            return cls.open(folder)
        return cls(tokens.clone(), residuals, fingerprint)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> ActivationCache:
        """Memory-map a complete cache folder; raises ``ActivationCacheError`` otherwise."""
        folder = Path(folder)
        meta_path = folder / _META
        if not meta_path.exists():
            raise ActivationCacheError(f"no complete activation cache in {folder}")
        try:
            meta = json.loads(meta_path.read_text())
            tokens = torch.from_numpy(np.load(folder / "tokens.npy"))
            residuals = [
                np.load(folder / f"residual_{i:03d}.npy", mmap_mode="r")
                for i in range(meta["layers"] + 1)
            ]
        except (OSError, ValueError, KeyError) as exc:
            raise ActivationCacheError(f"activation cache {folder} is unreadable: {exc}") from None
        if any(tuple(r.shape) != tuple(meta["shape"]) for r in residuals):
            raise ActivationCacheError(f"activation cache {folder} has arrays of the wrong shape")
        return cls(tokens, residuals, meta["fingerprint"])


@torch.no_grad()
def score_from_layer(
    adapter: BlockModel,
    cache: ActivationCache,
    layer: int,
    batch_size: int = 8,
    skip: frozenset[int] = frozenset(),
) -> ReplaceScores:
    """Score ``adapter`` against the cached parent, running only layers ``layer``.. of it.

    ``adapter`` must equal the parent in every layer before ``layer`` (the cached prefix stands
    in for them). Layers in ``skip`` are left out entirely (used by the depth search).
    """
    t0 = time.perf_counter()
    dtype = next(adapter.parameters()).dtype
    meter = QualityMeter()
    n = cache.num_sequences
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        ids = cache.tokens[start:stop]
        x = cache.layer_input(layer, start, stop).to(dtype)
        for i in range(layer, adapter.num_layers):
            if i not in skip:
                x = adapter.layers[i](x)
        logits = adapter.head(x).float()  # (b, S, vocab)
        parent_logits = adapter.head(cache.final(start, stop).to(dtype)).float()
        meter.add(ids, logits, parent_logits)
    q = meter.result()
    return ReplaceScores(
        kl=q.kl,
        lm_loss=q.lm_loss,
        top1=q.top1,
        tokens=n * cache.tokens.shape[1],
        seconds=time.perf_counter() - t0,
    )


def score_replacement(
    adapter: BlockModel,
    cache: ActivationCache,
    layer: int,
    kind: str,
    module: nn.Module,
    batch_size: int = 8,
) -> ReplaceScores:
    """Replace-one-block scores of ``module`` as layer ``layer``'s ``kind`` subblock.

    The parent ``adapter`` is edited in place for the duration of the call and always restored.
    """
    return score_block(adapter, cache, layer, {kind: module}, batch_size)


def score_block(
    adapter: BlockModel,
    cache: ActivationCache,
    layer: int,
    modules: Mapping[str, nn.Module],
    batch_size: int = 8,
) -> ReplaceScores:
    """Replace-one-block scores with the subblocks ``modules`` (kind -> module) of layer ``layer``
    replaced together: ``{"attention": a, "ffn": f}`` scores the joint block (a, f).

    The parent ``adapter`` is edited in place for the duration of the call and always restored.
    """
    if not 0 <= layer < adapter.num_layers:
        raise ValueError(f"layer {layer} out of range 0..{adapter.num_layers - 1}")
    old: dict[str, nn.Module] = {}
    modes = {kind: module.training for kind, module in modules.items()}
    try:
        for kind, module in modules.items():
            module.eval()
            old[kind] = adapter.replace(layer, kind, module)
        return score_from_layer(adapter, cache, layer, batch_size)
    finally:
        for kind, module in old.items():
            adapter.replace(layer, kind, module)
        for kind, module in modules.items():
            module.train(modes[kind])


def parent_scores(
    adapter: BlockModel, cache: ActivationCache, batch_size: int = 8
) -> ReplaceScores:
    """The parent's own scores (KL 0, top-1 1 up to float error; its LM loss), from the cache."""
    return score_from_layer(adapter, cache, adapter.num_layers, batch_size)

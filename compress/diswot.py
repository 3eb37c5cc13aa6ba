"""DisWOT training-free proxies: how similar an untrained candidate's final features are to the parent's.

Samples are token positions: a calibration batch (N, S) gives up to N*(S-1) positions that have a
next-token target; ``max_positions`` of them (a seeded random subset) are the b samples.

- Relation distance: F (b, hidden) = final hidden states after the final norm at the sampled
  positions; G = row-L2-normalised(F F^T) (b, b); distance ``||G_parent - G_cand||_F^2 / b^2``.
- Semantic distance: one backward pass of the LM loss (mean cross-entropy of the sampled
  positions) to the LM head's weight, g = dL/dW (vocab, hidden): per target token (class) the
  gradient of the channel weights. Only the rows of the K most frequent targets in the batch
  are kept (and computed, in closed form), M = row-L2-normalised(g g^T) (K, K), distance
  ``||M_parent - M_cand||_F^2 / K^2``.
- Score = -(relation + semantic): higher predicts a better student after distillation.

``rank_variants`` scores every trainable library variant of every layer as a one-block swap in
the parent (initialised from calibration data, not trained), reusing the parent's cached
prefix; ``prefilter_variants`` keeps the best k per layer and kind before BLD.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compress.builders import InitData, build_variant
from compress.model import BlockModel
from compress.scoring import ActivationCache
from compress.variants import VariantSpec


@dataclass(frozen=True)
class DiswotScore:
    relation: float
    semantic: float

    @property
    def score(self) -> float:
        return -(self.relation + self.semantic)


def relation_matrix(features: torch.Tensor) -> torch.Tensor:
    """features (b, hidden) -> row-L2-normalised F F^T, (b, b), float32."""
    f = features.float()
    return F.normalize(f @ f.T, dim=1)


def semantic_matrix(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Row-normalised g g^T (K, K) of the LM-head weight gradient rows of ``classes``.

    hidden (b, hidden) are the head's inputs (after the final norm), targets (b,) the next
    tokens. g is the gradient of the mean cross-entropy w.r.t. the head weight rows of
    ``classes``, i.e. the backward pass through the head, ``(softmax - onehot)^T hidden / b``,
    computed only for those K rows (the model accumulates no gradient).
    """
    with torch.no_grad():
        h = hidden.float()
        bias = None if head.bias is None else head.bias.float()
        probs = F.softmax(F.linear(h, head.weight.float(), bias), dim=-1)  # (b, vocab)
        error = probs[:, classes] - (targets[:, None] == classes[None, :]).float()  # (b, K)
        g = error.T @ h / h.shape[0]  # (K, hidden)
        return F.normalize(g @ g.T, dim=1)


class DiswotProbe:
    """The parent's side of the proxies for one calibration batch, computed once.

    ``cache`` is an ``ActivationCache`` of the parent over the calibration tokens; candidates
    that differ from the parent only from layer ``l`` on can start there (``score_from_layer``).
    Positions are sampled from the first ``sequences`` cached sequences (default: all).
    """

    def __init__(
        self,
        parent: BlockModel,
        cache: ActivationCache,
        max_positions: int = 512,
        num_classes: int = 128,
        seed: int = 0,
        sequences: int | None = None,
    ):
        self.parent = parent
        self.cache = cache
        n, s = cache.tokens.shape
        n = n if sequences is None else max(1, min(sequences, n))
        if s < 2:
            raise ValueError("DisWOT needs sequences of at least 2 tokens")
        # flat index over (N, S-1) positions that have a next token
        total = n * (s - 1)
        count = min(max_positions, total)
        generator = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=generator)[:count].sort().values
        self.rows, self.cols = flat // (s - 1), flat % (s - 1)
        self.targets = cache.tokens[self.rows, self.cols + 1]
        counts = torch.bincount(self.targets, minlength=parent.shape.vocab_size)
        k = min(num_classes, int((counts > 0).sum()))
        self.classes = counts.topk(k).indices
        final = cache.final(0, n)[self.rows, self.cols]  # (b, hidden) residual
        with torch.no_grad():
            hidden = parent.norm(final.to(_dtype(parent))).float()
        self.relation_parent = relation_matrix(hidden)
        self.semantic_parent = semantic_matrix(hidden, parent.lm_head, self.targets, self.classes)

    @property
    def num_positions(self) -> int:
        return int(self.rows.numel())

    def compare(self, hidden: torch.Tensor, head: nn.Linear) -> DiswotScore:
        """hidden (b, hidden): the candidate's final-norm outputs at the probe's positions."""
        b, k = self.num_positions, int(self.classes.numel())
        rel = relation_matrix(hidden)
        sem = semantic_matrix(hidden, head, self.targets, self.classes)
        return DiswotScore(
            relation=float((rel - self.relation_parent).pow(2).sum()) / b**2,
            semantic=float((sem - self.semantic_parent).pow(2).sum()) / max(k, 1) ** 2,
        )

    @torch.no_grad()
    def score(self, model: BlockModel) -> DiswotScore:
        """Proxies of a whole candidate (any per-layer variants; same hidden size and vocab)."""
        return self.score_from_layer(model, 0)

    @torch.no_grad()
    def score_from_layer(self, model: BlockModel, layer: int) -> DiswotScore:
        """Like ``score``, but ``model`` equals the parent before ``layer`` (the cache is used)."""
        used = torch.unique(self.rows)
        dtype = _dtype(model)
        last = int(used.max()) + 1
        x = (
            self.cache.layer_input(layer, 0, last)[used].to(dtype)
            if layer > 0
            else model.embed(self.cache.tokens[used]).to(dtype)
        )
        for i in range(layer, model.num_layers):
            x = model.layers[i](x)
        # map each probe position to its row in the reduced batch
        where = torch.searchsorted(used, self.rows)
        hidden = model.norm(x[where, self.cols]).float()
        return self.compare(hidden, model.lm_head)


@dataclass(frozen=True)
class VariantProxy:
    layer: int
    variant: VariantSpec
    relation: float
    semantic: float
    score: float
    seconds: float


@torch.no_grad()
def subblock_init(parent: BlockModel, layer: int, kind: str, layer_input: torch.Tensor) -> InitData:
    """Inputs and parent outputs (N, hidden) of one subblock, from its layer's input (B, S, hidden)."""
    x = layer_input.to(_dtype(parent))
    attention = parent.attention(layer)(x)
    if kind == "attention":
        inputs, outputs = x, attention
    else:
        inputs = x + attention
        outputs = parent.ffn(layer)(inputs)
    hidden = x.shape[-1]
    return InitData(inputs.reshape(-1, hidden).float(), outputs.reshape(-1, hidden).float())


def calibration_rows(
    num_sequences: int, seq_len: int, max_positions: int, init_tokens: int
) -> tuple[int, slice]:
    """Split calibration sequences: the first ``probe`` rows for the proxies, the next ones
    (up to ``init_tokens`` tokens) to initialise variants, so that a data-fitted variant
    (least squares) is never judged on the tokens it was fitted to. With one sequence both
    use it."""
    if num_sequences < 2:
        return 1, slice(0, 1)
    probe = min(num_sequences - 1, max(1, -(-max_positions // max(seq_len - 1, 1))))
    count = max(1, -(-init_tokens // seq_len))
    return probe, slice(probe, min(num_sequences, probe + count))


def rank_variants(
    parent: BlockModel,
    variants: Sequence[VariantSpec],
    calib_tokens: torch.Tensor,
    layers: Sequence[int] | None = None,
    max_positions: int = 512,
    init_tokens: int = 4096,
    batch_size: int = 8,
) -> list[VariantProxy]:
    """DisWOT proxies of every trainable variant in ``variants`` at each layer (default: all).

    ``calib_tokens`` (N, S) is split by ``calibration_rows``: each variant is built from the
    parent subblock initialised on the init rows, swapped into the parent alone, and compared
    with the parent on the probe rows. The parent is restored after each swap. Give enough
    sequences for both (e.g. 5 + 32 of 128 tokens for the defaults).
    """
    n, seq_len = calib_tokens.shape
    probe_rows, init_rows = calibration_rows(n, seq_len, max_positions, init_tokens)
    cache = ActivationCache.build(parent, calib_tokens, batch_size=batch_size)
    probe = DiswotProbe(parent, cache, max_positions=max_positions, sequences=probe_rows)
    out: list[VariantProxy] = []
    for layer in range(parent.num_layers) if layers is None else layers:
        layer_input = cache.layer_input(layer, init_rows.start, init_rows.stop)
        inits: dict[str, InitData] = {}
        for spec in variants:
            if not spec.trainable:
                continue
            t0 = time.perf_counter()
            if spec.kind not in inits:
                inits[spec.kind] = subblock_init(parent, layer, spec.kind, layer_input)
            module = build_variant(spec, parent.subblock(layer, spec.kind), inits[spec.kind])
            module.eval()
            old = parent.replace(layer, spec.kind, module)
            try:
                result = probe.score_from_layer(parent, layer)
            finally:
                parent.replace(layer, spec.kind, old)
            out.append(
                VariantProxy(
                    layer,
                    spec,
                    result.relation,
                    result.semantic,
                    result.score,
                    time.perf_counter() - t0,
                )
            )
    return out


def prefilter_variants(
    parent: BlockModel,
    variants: Sequence[VariantSpec],
    calib_tokens: torch.Tensor,
    keep: int,
    **options,
) -> dict[tuple[int, str], list[VariantSpec]]:
    """Per (layer, kind): the variants to build, pruned by DisWOT before BLD.

    Non-trainable variants (``parent``, ``noop``) are always kept; of the trainable ones, the
    ``keep`` with the highest DisWOT score are kept. Each list keeps the order of ``variants``.
    ``options`` go to ``rank_variants``.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    ranked = rank_variants(parent, variants, calib_tokens, **options)
    best: dict[tuple[int, str], set[VariantSpec]] = {}
    for layer in range(parent.num_layers):
        for kind in ("attention", "ffn"):
            rows = [r for r in ranked if r.layer == layer and r.variant.kind == kind]
            rows.sort(key=lambda r: r.score, reverse=True)
            best[(layer, kind)] = {r.variant for r in rows[:keep]}
    return {
        key: [v for v in variants if v.kind == key[1] and (not v.trainable or v in chosen)]
        for key, chosen in best.items()
    }


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype

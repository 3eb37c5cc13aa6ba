"""Calibration data: token sequences of a fixed length, split into train and eval.

``mixed_calibration`` builds the splits from a weighted list of sources (``compress.sources``:
text files, ``datasets`` datasets, text sampled from the parent): each source gets its share of
the train and eval tokens; a text source's documents are shuffled with a fixed seed and dealt
to eval first, then train, so no document is in both. ``text_calibration`` and
``generated_calibration`` are the one-source cases. All counts are in tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import DataError
from compress.sources import (
    DEFAULT_SEPARATOR,
    Progress,
    describe,
    encode_document,
    generate_sequences,
    pack_documents,
    read_documents,
    source_documents,
)

__all__ = [
    "DEFAULT_SEPARATOR",
    "TokenSplits",
    "encode_document",
    "eval_set_tokens",
    "generated_calibration",
    "mixed_calibration",
    "read_documents",
    "text_calibration",
]


@dataclass(frozen=True)
class TokenSplits:
    """``train`` and ``eval`` are int64 tensors of shape (num_sequences, seq_len)."""

    train: torch.Tensor
    eval: torch.Tensor

    @property
    def seq_len(self) -> int:
        return int(self.train.shape[1])

    def summary(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "train_sequences": int(self.train.shape[0]),
            "eval_sequences": int(self.eval.shape[0]),
            "train_tokens": int(self.train.numel()),
            "eval_tokens": int(self.eval.numel()),
        }


@dataclass(frozen=True)
class Generation:
    """How ``generated`` sources sample: the parent (``BlockModel``), its tokenizer is passed
    separately; ``cache_dir`` + ``parent_key`` cache the samples on disk."""

    model: object
    cache_dir: Path | None = None
    parent_key: str | None = None
    batch_size: int = 32  # sampling is bound by reading the weights: bigger batches are cheaper
    progress: Progress | None = None

    def sample(self, tokenizer, sequences: int, seq_len: int, seed: int, temperature: float):
        """(sequences, seq_len) ids from ``compress.sources.generate_sequences``."""
        return generate_sequences(
            self.model,
            tokenizer,
            sequences,
            seq_len,
            seed,
            temperature,
            self.batch_size,
            self.cache_dir,
            self.parent_key,
            self.progress,
        )


def text_calibration(
    tokenizer,
    paths: list[Path],
    seq_len: int,
    train_tokens: int,
    eval_tokens: int,
    seed: int = 0,
    separator: str = DEFAULT_SEPARATOR,
) -> TokenSplits:
    """Split the files' documents into eval and train (eval first, by document), pack each.

    Raises ``DataError`` when either split gets no full sequence.
    """
    docs = read_documents(paths, separator)
    evals, train = pack_documents(tokenizer, docs, seq_len, eval_tokens, train_tokens, seed)
    splits = TokenSplits(train=train, eval=evals)
    _check_splits(splits, seq_len, train_tokens, eval_tokens, f"{len(docs)} documents")
    return splits


def generated_calibration(
    model,
    tokenizer,
    seq_len: int,
    train_tokens: int,
    eval_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> TokenSplits:
    """Sequences sampled from the parent (``compress.sources.generate_sequences``), the first
    ``eval_tokens`` (whole sequences, at least one) as eval, the rest as train."""
    n_train = max(train_tokens // seq_len, 1)
    n_eval = max(eval_tokens // seq_len, 1)
    data = generate_sequences(
        model, tokenizer, n_train + n_eval, seq_len, seed, temperature, batch_size
    )
    return TokenSplits(train=data[n_eval:], eval=data[:n_eval])


def mixed_calibration(
    sources: list,
    tokenizer,
    seq_len: int,
    train_tokens: int,
    eval_tokens: int,
    seed: int = 0,
    generation: Generation | None = None,
) -> tuple[TokenSplits, list[dict]]:
    """Train and eval splits from weighted sources, rows shuffled (seeded) across sources.

    With one source the splits are ``text_calibration``'s (or the parent's samples) as they are.

    Source i gets ``weight_i / sum(weights)`` of each split, in whole sequences (a sequence
    never mixes sources). Returns the splits and, per source, ``{source, weight, share,
    train_tokens, eval_tokens}`` as actually obtained (a text source may have less text than
    its share). Raises ``DataError`` when a split ends up empty, or a ``generated`` source is
    given without ``generation``.
    """
    total_weight = sum(s.weight for s in sources)
    trains, evals, counts = [], [], []
    for index, source in enumerate(sources):
        share = source.weight / total_weight
        n_train = int(train_tokens * share) // seq_len
        n_eval = int(eval_tokens * share) // seq_len
        if source.kind == "generated":
            if generation is None:
                raise DataError("a generated source needs the parent to sample from")
            data = generation.sample(
                tokenizer, n_train + n_eval, seq_len, seed + 1000 * index, source.temperature
            )
            ev, tr = data[:n_eval], data[n_eval:]
        else:
            docs = source_documents(source)
            ev, tr = pack_documents(
                tokenizer, docs, seq_len, n_eval * seq_len, n_train * seq_len, seed + index
            )
        trains.append(tr)
        evals.append(ev)
        counts.append(
            {
                "source": describe(source),
                "weight": source.weight,
                "share": round(share, 4),
                "train_tokens": int(tr.numel()),
                "eval_tokens": int(ev.numel()),
            }
        )
    train, evals_t = torch.cat(trains), torch.cat(evals)
    if len(sources) > 1:  # one source's rows are already in shuffled-document order
        generator = torch.Generator().manual_seed(seed)
        train = train[torch.randperm(train.shape[0], generator=generator)]
        evals_t = evals_t[torch.randperm(evals_t.shape[0], generator=generator)]
    splits = TokenSplits(train=train, eval=evals_t)
    _check_splits(splits, seq_len, train_tokens, eval_tokens, f"{len(sources)} sources")
    return splits, counts


def eval_set_tokens(
    source,
    tokenizer,
    seq_len: int,
    tokens: int,
    seed: int = 0,
    generation: Generation | None = None,
) -> torch.Tensor:
    """(N, seq_len) tokens of one evaluation set: its first ``tokens`` (whole sequences) after
    a seeded shuffle of its documents, or ``tokens`` sampled from the parent."""
    n = max(1, tokens // seq_len)
    if source.kind == "generated":
        if generation is None:
            raise DataError("a generated eval set needs the parent to sample from")
        return generation.sample(tokenizer, n, seq_len, seed, source.temperature)
    out, _ = pack_documents(tokenizer, source_documents(source), seq_len, n * seq_len, 0, seed)
    if out.shape[0] == 0:
        raise DataError(
            f"eval source {describe(source)} has no full sequence of {seq_len} tokens; add text "
            "or lower data.seq_len"
        )
    return out


def _check_splits(
    splits: TokenSplits, seq_len: int, train_tokens: int, eval_tokens: int, what: str
):
    for name, split, wanted in (
        ("train", splits.train, train_tokens),
        ("eval", splits.eval, eval_tokens),
    ):
        if split.shape[0] == 0:
            raise DataError(
                f"the {name} split has no full sequence of {seq_len} tokens (asked for {wanted} "
                f"tokens from {what}); add text or lower data.seq_len"
            )

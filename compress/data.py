"""Calibration data: token sequences of a fixed length, split into train and eval.

Two sources: text files the user names (split into documents, documents shuffled with a fixed
seed and dealt to eval first, then train, so no document is in both), or sequences sampled
from the parent itself (``generated``). All counts are in tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import DataError
from compress.progress import track

DEFAULT_SEPARATOR = "\n<|endoftext|>\n"


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


def read_documents(paths: list[Path], separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """Documents from text files: each file split on ``separator``; empty pieces dropped."""
    docs: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read data file {path}: {exc}") from None
        docs.extend(d.strip() for d in text.split(separator) if d.strip())
    if not docs:
        raise DataError(f"no text in {', '.join(str(p) for p in paths)}")
    return docs


def encode_document(tokenizer, text: str) -> list[int]:
    """Token ids of one document with BOS prepended (when the tokenizer has one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def text_calibration(
    tokenizer,
    paths: list[Path],
    seq_len: int,
    train_tokens: int,
    eval_tokens: int,
    seed: int = 0,
    separator: str = DEFAULT_SEPARATOR,
) -> TokenSplits:
    """Split documents into eval and train (eval first, by document), pack each into sequences.

    Each split's documents are concatenated and cut into ``seq_len`` pieces; the counts are
    rounded down to whole sequences. Raises ``DataError`` when either split gets no sequence.
    """
    docs = read_documents(paths, separator)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    eval_ids: list[int] = []
    train_ids: list[int] = []
    for index in order:
        if len(eval_ids) < eval_tokens:
            eval_ids.extend(encode_document(tokenizer, docs[index]))
        elif len(train_ids) < train_tokens:
            train_ids.extend(encode_document(tokenizer, docs[index]))
        else:
            break
    train = _pack(train_ids, seq_len, train_tokens)
    evals = _pack(eval_ids, seq_len, eval_tokens)
    for name, split, wanted in (("train", train, train_tokens), ("eval", evals, eval_tokens)):
        if split.shape[0] == 0:
            raise DataError(
                f"the {name} split has no full sequence of {seq_len} tokens (asked for {wanted} "
                f"tokens from {len(docs)} documents); add text or lower data.seq_len"
            )
    return TokenSplits(train=train, eval=evals)


def _pack(ids: list[int], seq_len: int, max_tokens: int) -> torch.Tensor:
    count = min(len(ids), max_tokens) // seq_len
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


@torch.no_grad()
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
    """Sequences sampled from the parent (``model``: a ``BlockModel``), starting at BOS.

    Sampling uses its own ``torch.Generator`` seeded with ``seed``, so the same parent and
    seed give the same tokens.
    """
    start = tokenizer.bos_token_id
    if start is None:
        start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    generator = torch.Generator().manual_seed(seed)
    n_train = max(train_tokens // seq_len, 1)
    n_eval = max(eval_tokens // seq_len, 1)
    total = n_train + n_eval
    rows = []
    for first in track(range(0, total, batch_size), "[data] sampling text from the parent"):
        b = min(batch_size, total - first)
        seq = torch.full((b, 1), start, dtype=torch.long)
        logits, past = model.forward_cached(seq)
        while seq.shape[1] < seq_len:
            probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)
            seq = torch.cat((seq, token), dim=1)
            logits, past = model.forward_cached(token, past)
        rows.append(seq)
    data = torch.cat(rows)
    return TokenSplits(train=data[n_eval:], eval=data[:n_eval])

"""Text sources for calibration and evaluation: files, ``datasets`` datasets, parent-generated.

A *source* is any object with the attributes of ``nas.spec.SourceSection`` (this module reads
them by name and never imports ``nas``):

- ``kind``: ``"files"`` | ``"dataset"`` | ``"generated"``;
- files: ``files`` (paths), ``separator`` (documents are the pieces between separators);
- dataset: ``path`` (a ``datasets.load_dataset`` path: a Hub name, a local folder, a builder
  such as ``json``/``csv``/``parquet``, or one local ``.jsonl``/``.json``/``.parquet``/``.csv``
  file), ``data_files``, ``config`` (configuration name), ``split``, ``text_field`` or ``template`` (a
  ``str.format`` template over the row's fields, e.g. ``"{instruction}\\n{response}"``);
- both: ``documents`` (``[start, stop]``: keep that slice of the documents, in file order,
  so one file can feed calibration and a disjoint evaluation set);
- generated: ``temperature``; sequences sampled from the parent after diverse openings
  (``OPENINGS``), batched with the KV cache, cached on disk by (parent, seed, tokens).

All counts are in tokens; documents get BOS prepended (``encode_document``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from compress.errors import DataError

Progress = Callable[[int, int], None]
DEFAULT_SEPARATOR = "\n<|endoftext|>\n"

# Openings the parent continues when it writes its own calibration text: topics, instructions,
# code, dialogue, lists and plain narrative, so the sampled text covers more than one register.
OPENINGS = (
    "The history of the city begins",
    "In this chapter we explain how",
    "Question: What is the capital of France?\nAnswer:",
    "User: Can you help me write an email to my landlord?\nAssistant:",
    "def fibonacci(n):\n",
    "import numpy as np\n\n",
    "Here is a recipe for a simple bread:\n1.",
    "Dear Sir or Madam,\n\n",
    "The weather today",
    "Scientists have discovered that",
    "Once upon a time",
    "To install the package, run",
    "The main causes of the First World War were",
    "Photosynthesis is the process by which",
    "User: Explain the difference between a list and a tuple.\nAssistant:",
    "Step 1:",
    "The following table shows",
    "In conclusion,",
    "She opened the door and",
    "Abstract: We study",
    "Instructions: Summarise the following paragraph.\n\n",
    "SELECT name, age FROM users WHERE",
    "The theory of evolution states",
    "My favourite book is",
    "How to care for a houseplant:",
    "The quarterly report shows that revenue",
    "Music has always been",
    "Q: Why is the sky blue?\nA:",
    "<html>\n<head>\n",
    "The committee met on Tuesday to discuss",
    "A good night's sleep",
    "Translate to French: I would like a cup of coffee.\n",
)


def encode_document(tokenizer, text: str) -> list[int]:
    """Token ids of one document with BOS prepended (when the tokenizer has one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(ids)


def describe(source) -> str:
    """A short label: ``files:a.txt,b.txt``, ``dataset:json(x.jsonl)[train]``, ``generated``."""
    if source.kind == "files":
        label = "files:" + ",".join(Path(f).name for f in source.files)
    elif source.kind == "dataset":
        files = ",".join(Path(f).name for f in source.data_files)
        label = f"dataset:{Path(source.path).name}" + (f"({files})" if files else "")
        label += f"[{source.split}]"
    else:
        return "generated"
    if source.documents is not None:
        label += (
            f"[{source.documents[0]}:{'' if source.documents[1] is None else source.documents[1]}]"
        )
    return label


def source_documents(source) -> list[str]:
    """The documents of a ``files`` or ``dataset`` source (after its ``documents`` slice).

    Raises ``DataError`` (one line) for a missing or unreadable file, a dataset that
    ``datasets`` cannot open, a missing field, or a source without any text.
    """
    if source.kind == "files":
        docs = read_documents([Path(f) for f in source.files], source.separator)
    elif source.kind == "dataset":
        docs = _dataset_documents(source)
    else:
        raise DataError(f"a {source.kind} source has no documents to read")
    if source.documents is not None:
        start, stop = source.documents
        docs = docs[start:stop]
    if not docs:
        raise DataError(f"source {describe(source)} has no documents")
    return docs


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


_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _dataset_documents(source) -> list[str]:
    import datasets

    path, data_files = source.path, list(source.data_files) or None
    suffix = Path(path).suffix.lower()
    if Path(path).is_file() and suffix in _BUILDERS:  # one local file: its builder
        path, data_files = _BUILDERS[suffix], [source.path]
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(
            path, name=source.config, data_files=data_files, split=source.split
        )
    except Exception as exc:  # datasets raises many types; all mean "cannot open"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load dataset {source.path!r} (split {source.split!r}): {first}"
        ) from None
    columns = set(table.column_names)
    if source.template is None and source.text_field not in columns:
        raise DataError(
            f"dataset {source.path!r} has no field {source.text_field!r}; fields: "
            f"{', '.join(sorted(columns))} (set text_field or template)"
        )
    docs = []
    for row in table:
        if source.template is not None:
            try:
                text = source.template.format(**row)
            except (KeyError, IndexError) as exc:
                raise DataError(
                    f"template of dataset {source.path!r} names a missing field {exc}; "
                    f"fields: {', '.join(sorted(columns))}"
                ) from None
        else:
            text = row[source.text_field]
        if isinstance(text, str) and text.strip():
            docs.append(text.strip())
    return docs


def document_fingerprints(docs: list[str]) -> set[str]:
    """Hashes of whitespace-normalised documents (to find a document shared by two sources)."""
    return {hashlib.sha1(" ".join(d.split()).encode()).hexdigest() for d in docs}


def pack_documents(
    tokenizer, docs: list[str], seq_len: int, eval_tokens: int, train_tokens: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle documents (seeded), deal them to eval first, then train, pack each split.

    Each split's documents are concatenated and cut into ``seq_len`` pieces, rounded down to
    whole sequences: (eval (N_e, S), train (N_t, S)); no document is in both.
    """
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
    return _pack(eval_ids, seq_len, eval_tokens), _pack(train_ids, seq_len, train_tokens)


def _pack(ids: list[int], seq_len: int, max_tokens: int) -> torch.Tensor:
    count = min(len(ids), max_tokens) // seq_len
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


def generation_cache_key(
    parent_key: str, seed: int, sequences: int, seq_len: int, temperature: float, batch_size: int
) -> str:
    """The file stem generated text is cached under: a hash of (parent, seed, tokens, ...)."""
    blob = json.dumps(
        [parent_key, seed, sequences, seq_len, temperature, batch_size, OPENINGS], sort_keys=True
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@torch.no_grad()
def generate_sequences(
    model,
    tokenizer,
    sequences: int,
    seq_len: int,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 8,
    cache_dir: Path | None = None,
    parent_key: str | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """(sequences, seq_len) token ids sampled from the parent (``model``: a ``BlockModel``).

    Row i starts with an opening from ``OPENINGS`` (chosen with ``seed`` and its batch; fed as given, at
    most half the row) and continues with tokens sampled at ``temperature``, the whole batch
    at once with the KV cache. The same parent, seed and sizes give the same tokens. With
    ``cache_dir`` and ``parent_key`` the result is stored there and read back on the next call
    (no sampling); until then each finished batch is kept in ``<key>.parts/``, so an interrupted
    call resumes at the first missing batch. ``progress(done, total)`` is called after each batch.
    """
    from safetensors.torch import load_file, save_file

    from compress.atomic import atomic_write

    path = chunks = None
    if cache_dir is not None and parent_key is not None:
        key = generation_cache_key(parent_key, seed, sequences, seq_len, temperature, batch_size)
        path = Path(cache_dir) / f"{key}.safetensors"
        chunks = Path(cache_dir) / f"{key}.parts"  # one file per finished batch until the end
        if path.exists():
            if progress is not None:
                progress(sequences, sequences)
            return load_file(str(path))["tokens"]
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    rows = []
    for first in range(0, sequences, batch_size):
        count = min(batch_size, sequences - first)
        part = chunks / f"{first:07d}.safetensors" if chunks is not None else None
        if part is not None and part.exists():
            rows.append(load_file(str(part))["tokens"])
        else:
            rng = random.Random(f"{seed}:{first}")  # per batch, so a resumed run continues
            openings = [
                (encode_document(tokenizer, rng.choice(OPENINGS)) or [fallback])[
                    : seq_len // 2 or 1
                ]
                for _ in range(count)
            ]
            generator = torch.Generator().manual_seed(seed * 1_000_003 + first)
            rows.append(_sample_batch(model, openings, seq_len, temperature, generator))
            if part is not None:
                part.parent.mkdir(parents=True, exist_ok=True)
                batch = rows[-1].contiguous()
                atomic_write(part, lambda tmp, b=batch: save_file({"tokens": b}, str(tmp)))
        if progress is not None:
            progress(first + count, sequences)
    tokens = torch.cat(rows) if rows else torch.zeros((0, seq_len), dtype=torch.long)
    if path is not None:
        atomic_write(path, lambda tmp: save_file({"tokens": tokens.contiguous()}, str(tmp)))
        shutil.rmtree(chunks, ignore_errors=True)
    return tokens


def _sample_batch(model, openings: list[list[int]], seq_len: int, temperature: float, generator):
    """One batch: opening tokens are forced where a row still has them, sampled elsewhere."""
    longest = max(len(o) for o in openings)
    forced = torch.full((len(openings), longest), -1, dtype=torch.long)
    for i, ids in enumerate(openings):
        forced[i, : len(ids)] = torch.tensor(ids)
    seq = forced[:, :1].clone()
    logits, past = model.forward_cached(seq)
    while seq.shape[1] < seq_len:
        probs = torch.softmax(logits[:, -1].float() / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator)
        t = seq.shape[1]
        if t < longest:
            given = forced[:, t : t + 1]
            token = torch.where(given >= 0, given, token)
        seq = torch.cat((seq, token), dim=1)
        logits, past = model.forward_cached(token, past)
    return seq


def check_disjoint(calibration: list, eval_sets: dict) -> None:
    """Refuse evaluation sets that share a document with any calibration source.

    ``calibration``: the calibration sources; ``eval_sets``: name -> source. Generated
    sources have no documents (their samples use different seeds). Raises ``DataError``
    naming the set, the number of shared documents and the calibration source.
    """
    texts = [s for s in calibration if s.kind != "generated"]
    if not texts or not eval_sets:
        return
    seen = {describe(s): document_fingerprints(source_documents(s)) for s in texts}
    for name, source in eval_sets.items():
        if source.kind == "generated":
            continue
        mine = document_fingerprints(source_documents(source))
        for label, theirs in seen.items():
            shared = len(mine & theirs)
            if shared:
                raise DataError(
                    f"eval set '{name}' shares {shared} of its {len(mine)} documents with the "
                    f"calibration source {label}; evaluation documents must be disjoint from "
                    "calibration (e.g. split one file with 'documents: [start, stop]')"
                )

"""The ``nas_next_word`` lm-eval task: pick the word that comes next in general English prose.

Each item is a passage of about 40-60 words cut just before a word, and four candidate words:
the true next word and three other words of the same document. ``next_word.jsonl`` (beside this
file) holds the items; ``nas_next_word.yaml`` is the lm-eval task over it (its
``custom_dataset`` is ``load`` below, so lm-eval needs no network and no path).

The items were built by ``python -m nas.eval_tasks.next_word TEXT_FILE`` from documents 200
onwards of ``general_books.txt`` of the project's development data: the documents that no
shipped spec calibrates on (``search_spaces/quality.yaml`` calibrates on documents 0-199 and
holds out 200 onwards; the shipped ``nas/data/books_sample.txt`` is cut from documents 0-24),
keeping only the documents of the two public-domain books there (Project Gutenberg eBooks 17474, H. E. Krehbiel, *How to Listen to
Music*, 1896, and 3261, W. Morris, *News from Nowhere*, 1890); documents of the third book (a
GPL-licensed technical manual) are left out.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITEMS = HERE / "next_word.jsonl"
SEPARATOR = "\n<|endoftext|>\n"
# words that mark the technical manual's documents (left out for their licence)
TECHNICAL = (
    "debian",
    "linux",
    "gnu",
    "program",
    "software",
    "licen",
    "directory",
    "command",
    "kernel",
    "install",
    "disk",
    "file",
)
WORD = re.compile(r"[A-Za-z]+")
# the first document the items may come from: no shipped spec calibrates on 200 onwards
FIRST_DOCUMENT = 200


def load(**_kwargs):
    """The items as a ``datasets.DatasetDict`` with one ``test`` split (lm-eval's
    ``custom_dataset`` hook; it passes the task's metadata, which is not needed)."""
    import datasets

    rows = [json.loads(line) for line in ITEMS.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def public_domain_documents(text: str) -> list[str]:
    """The documents of ``text`` (split on the separator) that are not from the manual."""
    docs = [d.strip() for d in text.split(SEPARATOR) if d.strip()]
    return [d for d in docs if not any(word in d.lower() for word in TECHNICAL)]


def items_of(document: str, rng: random.Random, per_document: int) -> list[dict]:
    """Up to ``per_document`` items from one document: a passage cut before a content word
    (lower case, at least 4 letters, 30 words or more into the document) and 4 choices."""
    words = list(WORD.finditer(document))
    pool = sorted({m.group() for m in words if m.group().islower() and len(m.group()) >= 4})
    positions = [
        i for i, m in enumerate(words) if i >= 30 and m.group().islower() and len(m.group()) >= 4
    ]
    rng.shuffle(positions)
    out, used = [], set()
    for i in positions:
        if len(out) == per_document:
            break
        if any(abs(i - j) < 60 for j in used):
            continue
        answer = words[i].group()
        others = [w for w in pool if w != answer]
        if len(others) < 3:
            break
        start = words[i - rng.randint(40, 60)].start()
        passage = " ".join(document[start : words[i].start()].split())
        choices = [answer, *rng.sample(others, 3)]
        rng.shuffle(choices)
        out.append({"passage": passage, "choices": choices, "label": choices.index(answer)})
        used.add(i)
    return out


def build(
    text_path: str | Path,
    count: int = 300,
    per_document: int = 7,
    seed: int = 0,
    first_document: int = FIRST_DOCUMENT,
):
    """Write ``count`` items (fewer if the text is short) to ``next_word.jsonl``, from the
    documents ``first_document`` onwards of ``text_path``."""
    rng = random.Random(seed)
    text = Path(text_path).read_text(encoding="utf-8")
    held_out = SEPARATOR.join([d for d in text.split(SEPARATOR) if d.strip()][first_document:])
    docs = public_domain_documents(held_out)
    rng.shuffle(docs)
    items: list[dict] = []
    for doc in docs:
        items.extend(items_of(doc, rng, per_document))
        if len(items) >= count:
            break
    lines = [json.dumps(item, ensure_ascii=False) for item in items[:count]]
    ITEMS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


if __name__ == "__main__":
    print(f"wrote {build(sys.argv[1])} items to {ITEMS}")

"""Healing settings side by side on one front point of a finished job: which heals best.

The point is assembled from the job's library (its state before the job's own refit and GKD),
healed once per setting on the job's calibration train split, and measured on each of the
job's eval sets (KL to the parent, perplexity ratio): text no stage of the job trained, scored
or reranked on. A setting is one or more steps joined by ``+``, run in that order:

- ``layers:LR``: GKD on ``--tokens`` tokens training the layers only (``export.gkd``'s default);
- ``all:LR``: GKD that also trains the embeddings, LM head and final norm;
- ``refit:TOKENS`` or ``refit:TOKENS:RIDGE``: the least-squares refit (``export.refit``).

    python bench/gkd_ablation.py --job qmix --point p78d6974401 --tokens 24576 \\
        --settings all:5e-4,layers:5e-4,layers:1.5e-3
    python bench/gkd_ablation.py --job q4 --point ID --tokens 24576 \\
        --settings refit:65536,layers:2e-4,refit:65536+layers:2e-4

Writes results/bench/NAME.csv and .md (``--name``, default gkd_ablation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not an installed package

from bench._report import write_table  # noqa: E402
from nas.layout import JobLayout  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True)
    ap.add_argument("--results", default="results")
    ap.add_argument("--point", required=True, help="a point id of the job's front")
    ap.add_argument("--tokens", type=int, default=24576, help="tokens of each GKD step")
    ap.add_argument("--settings", default="all:5e-4,layers:5e-4")
    ap.add_argument("--name", default="gkd_ablation", help="results/bench/NAME.csv and .md")
    ap.add_argument("--eval-sequences", type=int, default=16, help="sequences per eval set")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from compress.evaluate import ParentLogits, evaluate
    from compress.gkd import GKDSettings, heal_student
    from compress.loading import load_parent
    from compress.refit import RefitSettings, refit_student
    from compress.student import assemble_student, library_loader

    job = JobLayout(Path(args.results) / args.job)
    front = {p["point_id"]: p for p in json.loads(job.front.read_text())}
    if args.point not in front:
        print(f"error: no point {args.point} on the front of {args.job}", file=sys.stderr)
        return 2
    spec = job.spec()
    torch.manual_seed(0)
    parent = load_parent(spec.model.source)
    train = load_file(str(job.splits))["train"]
    sets = {
        s.name: load_file(str(job.eval_set(s.name)))["tokens"][: args.eval_sequences]
        for s in spec.eval.sets
    }
    refs = {name: ParentLogits(parent.adapter, tokens) for name, tokens in sets.items()}
    parent_ppl = {
        name: evaluate(parent.adapter, t, refs[name]).perplexity for name, t in sets.items()
    }

    def measured(student) -> dict:
        out = {}
        for name, tokens in sets.items():
            q = evaluate(student, tokens, refs[name])
            out[f"KL @{name}"] = round(q.kl, 4)
            out[f"ppl ratio @{name}"] = round(q.perplexity / parent_ppl[name], 3)
        return out

    def student():
        loader = library_loader(job.library, parent.adapter)
        return assemble_student(parent.adapter, front[args.point]["choices"], loader)

    rows = [{"setting": "none (as assembled)", "seconds": 0, **measured(student())}]
    for setting in args.settings.split(","):
        healed = student()
        t0 = time.perf_counter()
        for step in setting.split("+"):
            what, *values = step.split(":")
            if what == "refit":
                ridge = {"ridge": float(values[1])} if len(values) > 1 else {}
                refit_student(healed, parent.adapter, train, RefitSettings(int(values[0]), **ridge))
                continue
            settings = GKDSettings(
                tokens=args.tokens,
                batch_size=4,
                lr=float(values[0]),
                train_embeddings=what == "all",
            )
            heal_student(healed, parent.adapter, train, settings)
        seconds = round(time.perf_counter() - t0)
        rows.append({"setting": setting, "seconds": seconds, **measured(healed)})
    write_table(
        args.name,
        rows,
        f"Healing settings on {args.job} point {args.point} (GKD steps: {args.tokens} tokens)",
        notes=(
            f"Eval: the first {args.eval_sequences} sequences of each eval set of the job. "
            f"Command: `python bench/gkd_ablation.py --job {args.job} --point {args.point} "
            f"--tokens {args.tokens} --settings {args.settings}`; {time.strftime('%Y-%m-%d %H:%M')}."
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

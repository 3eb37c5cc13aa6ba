"""The rerank stage: of each budget's MIP solutions, keep the one whose assembled student is
closest to the parent.

The MIP optimises the sum of replace-one-block scores, which ignores how replaced blocks
interact; with ``strategy.solutions_per_budget`` > 1 the selection stage stores several
diverse solutions per budget (``pareto/alternates.json``), all within the budget's predicted
cost. Here each one is assembled from the library and its KL to the parent is measured on
``strategy.rerank_tokens`` tokens taken from the end of the train split (tokens BLD did not
train on; the eval split stays untouched for the students stage). The best solution of each
budget replaces that budget's MIP points on the front; a budget's best that another budget's
best beats on both predicted cost and measured KL is dropped. Points of other strategies stay.

Resumable: each solution's KL is stored in ``rerank/<point id>.json`` when measured.
"""

from __future__ import annotations

import json
import math
import time

from compress.atomic import atomic_write_json
from nas.selection.dominance import non_dominated
from nas.spec import SearchSpec
from nas.stage_io import Prepared, Report, Rerank
from nas.store import JobStore


def stage_rerank(
    spec: SearchSpec, store: JobStore, prepared: Prepared, report: Report = print
) -> Rerank:
    if store.stage_done("rerank"):
        rec = store.read_stage("rerank")
        report(f"[rerank] done before: {rec['changed']} of {rec['budgets']} budgets changed")
        return Rerank(rec["budgets"], rec["measured"], rec["changed"])
    from nas.pareto import read_alternates, read_front

    t0 = time.perf_counter()
    alternates = read_alternates(store.dir)
    if spec.strategy.solutions_per_budget <= 1 or alternates.empty:
        store.write_stage("rerank", {"budgets": 0, "measured": 0, "changed": 0, "wall_s": 0.0})
        return Rerank(0, 0, 0)
    from compress.evaluate import ParentLogits, evaluate
    from compress.progress import track
    from compress.student import assemble_student, library_loader

    parent = prepared.parent.adapter
    tokens = rerank_tokens(prepared.splits, spec.bld.tokens, spec.strategy.rerank_tokens)
    reference = None
    load = library_loader(store.library, parent)
    unique = alternates.drop_duplicates("point_id")
    scores: dict[str, float] = {}
    for i, row in enumerate(track(unique.to_dict("records"), "[rerank] solutions")):
        pid = row["point_id"]
        path = store.rerank(pid)
        if path.exists():
            scores[pid] = json.loads(path.read_text())["kl"]
            continue
        if reference is None:
            reference = ParentLogits(parent, tokens, spec.scoring.batch_size)
        student = assemble_student(parent, [tuple(c) for c in row["choices"]], load).eval()
        scores[pid] = evaluate(student, tokens, reference).kl
        atomic_write_json(path, {"point_id": pid, "kl": scores[pid], "tokens": int(tokens.numel())})
        store.set_progress("rerank", i + 1, len(unique))
    front = read_front(store.dir)
    new_front, changed = reranked_front(front, alternates, scores)
    from nas.pareto import rewrite_front

    rewrite_front(store.dir, new_front, reranked={"tokens": int(tokens.numel()), "scores": scores})
    record = {
        "budgets": int(alternates["target"].nunique()),
        "measured": len(scores),
        "changed": changed,
        "points": len(new_front),
        "tokens": int(tokens.numel()),
        "wall_s": time.perf_counter() - t0,
    }
    store.write_stage("rerank", record)
    report(
        f"[rerank] {record['measured']} solutions of {record['budgets']} budgets measured; "
        f"{changed} budgets kept a solution the predicted front did not have; {len(new_front)} points on the front "
        f"in {record['wall_s']:.1f}s"
    )
    return Rerank(record["budgets"], record["measured"], changed)


def rerank_tokens(splits, bld_tokens: int, wanted: int):
    """The last ``wanted`` tokens (whole sequences, at least one) of the train split; BLD
    trains on its first ``bld_tokens``, so these are unseen while the split is long enough."""
    seq_len = splits.train.shape[1]
    count = max(1, min(splits.train.shape[0], math.ceil(wanted / seq_len)))
    return splits.train[-count:]


def reranked_front(front, alternates, scores: dict[str, float]):
    """The front with each budget's MIP points replaced by its lowest-``scores`` solution
    (pure pandas). Returns (frame sorted like the original, number of budgets whose kept
    solution was not on the predicted front)."""
    import pandas as pd

    kept = front[~front["target"].isin(set(alternates["target"]))].copy()
    predicted = set(front["point_id"])
    best_rows, changed = [], 0
    for _, group in alternates.groupby("target", sort=False):
        best = min(group.to_dict("records"), key=lambda r: (scores[r["point_id"]], r["point_id"]))
        changed += int(best["point_id"] not in predicted)
        best_rows.append(best)
    cost = front.attrs.get("meta", {}).get("primary_column") or "predicted_kl"
    firsts: dict[str, dict] = {}  # a point best for two budgets stays once, as the first
    for row in best_rows:
        firsts.setdefault(row["point_id"], row)
    winners = non_dominated(list(firsts.values()), lambda r: (r[cost], scores[r["point_id"]]))
    out = pd.concat([kept, pd.DataFrame(winners, columns=front.columns)], ignore_index=True)
    out["rerank_kl"] = [scores.get(pid) for pid in out["point_id"]]
    out = out.sort_values([cost, "predicted_kl"], kind="stable", ignore_index=True)
    out.attrs = front.attrs
    return out, changed

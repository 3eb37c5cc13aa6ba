"""Batch size as a searchable option: one front over the decode batches the profiles cover.

A decode profile measured at batch B gives one selection problem (decode step runtime and KV
cache at B). Every target is made absolute on the first (smallest) batch's problem, so that
``decode_throughput_tps >= 6000`` or ``memory_mib <= 80`` mean the same at every batch; each batch's
front is built with it; then, per request (same label at every batch), the student with the lowest
predicted KL over all batches is kept, tagged with its ``batch`` and its
``decode_throughput_tps = B x 1000 / decode step ms``. Points are compared on throughput (higher
is better) instead of step runtime, which is not comparable across batches. Pure Python + pandas.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from nas.front_select import FrontResult
from nas.selection.dominance import non_dominated

THROUGHPUT = "decode_throughput_tps"


def merge_batches(results: Mapping[int, FrontResult]) -> FrontResult:
    """One ``FrontResult`` from per-batch fronts (``{batch: result}``, targets already absolute):
    per target label the lowest-KL point over batches (ties: the higher throughput), points
    without a label from the first batch, then the non-dominated ones on throughput, the other
    target metrics and predicted KL. ``meta`` is the first batch's, with ``batches`` and every
    batch's infeasible requests (prefixed ``batch B:``)."""
    batches = sorted(results)
    frames = []
    for batch in batches:
        frame = results[batch].front.copy()
        frame["batch"] = batch
        frame[THROUGHPUT] = batch * 1000.0 / frame["predicted_decode_latency_ms"]
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    labelled = rows[rows["target"].astype(str) != ""]
    best = (
        labelled.sort_values(["predicted_kl", THROUGHPUT], ascending=[True, False], kind="stable")
        .groupby("target", sort=False)
        .head(1)
    )
    first = rows[(rows["target"].astype(str) == "") & (rows["batch"] == batches[0])]
    meta = dict(results[batches[0]].meta)
    objectives = [c for c in meta["objectives"] if c not in ("predicted_kl",)]
    objectives = [c for c in objectives if c != "predicted_decode_latency_ms"]
    candidates = pd.concat([best, first], ignore_index=True).drop_duplicates("point_id")
    keys = [*objectives, "predicted_kl"]
    kept = non_dominated(
        candidates.to_dict("records"), lambda r: (*(r[k] for k in keys), -r[THROUGHPUT])
    )
    front = pd.DataFrame(kept, columns=candidates.columns)
    front = front.sort_values(
        [THROUGHPUT, "predicted_kl"], ascending=[False, True], ignore_index=True
    )
    infeasible = [f"batch {b}: {m}" for b in batches for m in results[b].meta.get("infeasible", [])]
    meta |= {
        "batches": batches,
        "objectives": [*objectives, THROUGHPUT, "predicted_kl"],
        "infeasible": infeasible,
        "points": len(front),
    }
    return FrontResult(front, results[batches[0]].baselines, meta)

"""The block library of a job as one pandas DataFrame (one row per layer x variant)."""

from __future__ import annotations

import math
import os

import pandas as pd

from compress.library import read_records
from compress.variants import COST_FEATURES
from nas.errors import JobError, NotFound
from nas.layout import JobLayout

COLUMNS = [
    "layer",
    "kind",
    "variant",
    "trainable",
    "trained",
    *COST_FEATURES,
    "nmse_init",
    "nmse_final",
    "tokens",
    "seconds",
    "kl",
    "lm_loss",
    "top1",
]
SCORE_COLUMNS = ("kl", "lm_loss", "top1")


def library_frame(job_dir: str | os.PathLike) -> pd.DataFrame:
    """Every (layer, variant) of the job's space with its cost features and BLD record.

    Columns: ``COLUMNS`` (the cost features, ``COST_FEATURES``, come from each variant's
    family: the cost model reads only those) (BLD fields are NaN for variants not trained yet and for ``parent`` /
    ``noop``, whose ``nmse`` is 0 and 1 by definition but is not measured). Score columns are
    NaN until the scoring stage fills them: it may write ``scores/scores.json``, a list of
    records with ``layer``, ``variant`` and any of ``kl``, ``lm_loss``, ``top1``, merged here.
    Raises ``JobError`` when the job has no finished baseline stage (the model shape comes
    from it).
    """
    layout = JobLayout(job_dir)
    try:
        spec, shape = layout.spec(), layout.parent_shape()
    except NotFound as exc:
        raise JobError(f"{job_dir} is not a job with a finished baseline ({exc})") from None
    from nas.bld_stage import space_variants

    attention, ffn = space_variants(spec, shape)
    records = {(r["layer"], r["variant"]): r for r in read_records(layout.library)}
    scores = _scores(layout)
    rows = []
    for layer in range(shape.num_layers):
        for v in attention + ffn:
            rec = records.get((layer, str(v)), {})
            score = scores.get((layer, str(v)), {})
            rows.append(
                {
                    "layer": layer,
                    "kind": v.kind,
                    "variant": str(v),
                    "trainable": v.trainable,
                    "trained": bool(rec),
                    **v.cost_features(shape),
                    "nmse_init": rec.get("nmse_init", math.nan),
                    "nmse_final": rec.get("nmse_final", math.nan),
                    "tokens": rec.get("tokens", 0),
                    "seconds": rec.get("seconds", math.nan),
                    **{c: score.get(c, math.nan) for c in SCORE_COLUMNS},
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _scores(layout: JobLayout) -> dict:
    rows = layout.read_json(layout.scores_table, "the scores table", default=[])
    return {(r["layer"], r["variant"]): r for r in rows}


def joint_scores(
    job_dir: str | os.PathLike, column: str = "kl"
) -> dict[tuple[int, str, str], float]:
    """``{(layer, attention, ffn): score}`` of every scored joint block of a job
    (``scoring.blocks: joint``), plus the pairs with one parent half, which score as the other
    half alone (from ``scores/scores.json``). Empty when the job scored no joint blocks."""
    from nas.scoring_stage import read_joint_scores

    joint = read_joint_scores(job_dir)
    if not joint:
        return {}
    out = {(r["layer"], r["attention"], r["ffn"]): float(r[column]) for r in joint}
    for (layer, variant), record in _scores(JobLayout(job_dir)).items():
        if variant.endswith(":parent") or record.get(column) is None:
            continue
        pair = (
            (variant, "ffn:parent")
            if record["kind"] == "attention"
            else ("attention:parent", variant)
        )
        out[(layer, *pair)] = float(record[column])
    return out

"""Named evaluation sets on the Pareto table: column names, the front's metadata, the parent row.

Per eval set ``<set>`` (``eval.sets`` of the spec) the front has ``measured_perplexity@<set>``,
``measured_kl@<set>`` and ``measured_lm_loss@<set>``; the unsuffixed ``measured_*`` columns
stay the calibration eval split's. ``pareto/meta.json`` lists the sets (``eval_sets``) and
says where the MIP objective's KL (``predicted_kl``) was measured (``objective_kl_source``);
``meta["parent"]`` holds the parent's measured columns once the students stage ran.
Pure Python + pandas.
"""

from __future__ import annotations

import pandas as pd

SET_METRICS = ("perplexity", "kl", "lm_loss")
MEASURED_COLUMNS = ("measured_latency_ms", "measured_kl", "measured_lm_loss", "measured_perplexity")


def set_columns(name: str) -> list[str]:
    """``measured_perplexity@name``, ``measured_kl@name``, ``measured_lm_loss@name``."""
    return [f"measured_{m}@{name}" for m in SET_METRICS]


def eval_set_columns(names: list[str]) -> list[str]:
    return [c for name in names for c in set_columns(name)]


def measured_columns(meta: dict) -> list[str]:
    """``MEASURED_COLUMNS`` and the per-eval-set columns of the sets the meta lists."""
    return [*MEASURED_COLUMNS, *eval_set_columns(meta.get("eval_sets", []))]


def measured_set_values(name: str, quality: dict) -> dict:
    """A ``compress.evaluate.Quality.to_dict()`` record as the set's columns."""
    return {f"measured_{m}@{name}": float(quality[m]) for m in SET_METRICS}


def front_meta_fields(spec) -> dict:
    """``eval_sets`` and ``objective_kl_source`` of a spec (``nas.spec.SearchSpec``), and
    ``quality_note`` when its parent has random weights (its quality figures mean nothing)."""
    from compress.sources import describe

    mix = ", ".join(
        f"{describe(s)} {s.weight / sum(x.weight for x in spec.data.sources):.0%}"
        for s in spec.data.sources
    )
    from compress.random_parent import RANDOM_LABEL, is_random

    fields = {
        "eval_sets": [s.name for s in spec.eval.sets],
        "objective_kl_source": f"calibration eval split ({mix})",
    }
    if is_random(spec.model.source):  # shown wherever the front's quality figures are
        fields["quality_note"] = f"parent {spec.model.source}: {RANDOM_LABEL}"
    return fields


def with_parent_row(frame: pd.DataFrame) -> pd.DataFrame:
    """The front with a first row ``point_id: parent`` holding the parent's columns from the
    meta (predicted costs and, once measured, ``measured_*``); unchanged when the parent was
    not measured."""
    meta = frame.attrs.get("meta", {})
    parent = meta.get("parent", {})
    if "measured_perplexity" not in parent:
        return frame
    row = {c: None for c in frame.columns} | {
        k: v for k, v in parent.items() if k in frame.columns or k.startswith("measured_")
    }
    row |= {"point_id": "parent", "strategy": "parent", "status": "parent", "target": ""}
    row["choices"] = []
    if "choices" in frame and len(frame):
        row["choices"] = [["attention:parent", "ffn:parent"] for _ in frame["choices"].iloc[0]]
    out = pd.concat([pd.DataFrame([row]), frame], ignore_index=True)
    out.attrs = frame.attrs
    return out

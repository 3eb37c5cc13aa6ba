"""Text forms of a Pareto front for the CLI: JSON, CSV and a compact human table."""

from __future__ import annotations

import json
import math

import pandas as pd

from nas.eval_sets import measured_columns
from nas.pareto import _records


def front_json(frame: pd.DataFrame) -> str:
    """The points as a JSON list of records (``choices`` as lists, empty values as null)."""
    return json.dumps(_records(frame), allow_nan=False)


def front_csv(frame: pd.DataFrame) -> str:
    flat = frame.copy()
    flat["choices"] = [json.dumps(c) for c in flat["choices"]]
    return flat.to_csv(index=False)


def front_table(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a compact human table (choices summarised, measured columns when any;
    per eval set its perplexity and KL as ``ppl@SET`` and ``KL@SET``)."""
    latency = [c for c in frame.columns if c.startswith("predicted_") and c != "predicted_kl"]
    measured = [
        c
        for c in measured_columns(frame.attrs.get("meta", {}))
        if c in frame and frame[c].notna().any() and not c.startswith("measured_lm_loss@")
    ]
    measured += [c for c in frame.columns if c.startswith("eval_") and frame[c].notna().any()]
    short = [c.removeprefix("predicted_").replace("_latency_ms", " ms") for c in latency]
    header = ["point", "strategy", *short, "params M", "mem MiB", "pred. KL"]
    header += [_measured_label(c) for c in measured] + ["changed"]
    rows = []
    for _, r in frame.iterrows():
        changed = sum(1 for a, f in r["choices"] if a != "attention:parent" or f != "ffn:parent")
        params = r["params"] / 1e6 if pd.notna(r["params"]) else None
        rows.append(
            [str(r["point_id"]), str(r["strategy"])]
            + [_short(v) for v in (*[r[c] for c in latency], params, r["memory_mib"])]
            + [_short(r["predicted_kl"])]
            + [_short(r[c]) for c in measured]
            + [f"{changed}/{len(r['choices'])}"]
        )
    return header, rows


def _measured_label(column: str) -> str:
    if column.startswith("eval_"):  # lm-eval accuracies (nas eval)
        return f"lm-eval {column[5:].replace('_', ' ')}"
    name = column.removeprefix("measured_")
    if "@" in name:
        metric, eval_set = name.split("@", 1)
        return {"perplexity": "ppl", "kl": "KL"}.get(metric, metric) + "@" + eval_set
    return "meas. " + name


def _short(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"

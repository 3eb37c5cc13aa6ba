"""Plots of a Pareto front, drawn with matplotlib (Agg, imported lazily): a PNG, or a
self-contained HTML page holding the same figure as inline SVG (text kept as text, no scripts).

Panels, side by side:

1. **predicted vs measured**: x the latency (ms), y the KL to the parent (nats/token). Filled
   circles are the selection's predictions (predicted latency, summed replace-one-block KL),
   hollow squares the measured students (latency of the whole student on the profile's backend,
   KL on the calibration eval split); a dotted line joins the two of each point. The parent is a
   star: filled at its predicted latency, hollow at its measured one. Baselines are crosses.
2. **one panel per quality set**: the measured students' perplexity (or KL / LM loss) on an
   eval set against their measured latency, with the parent's value as a dashed line. The sets
   are the job's ``eval_sets`` (front columns ``measured_perplexity@SET``), or those named by
   ``quality`` (``SET`` or ``SET:kl``); a job without eval sets shows the calibration eval split.

Every point carries its id.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from compress.atomic import atomic_write, atomic_write_text
from nas.layout import JobLayout
from nas.selection.errors import SelectionError

COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
BASELINE_COLOUR = "#ff7f0e"
PARENT_COLOUR = "#d62728"
AXIS_LABELS = {
    "prefill_latency_ms": "prefill latency (ms)",
    "decode_latency_ms": "decode latency per token (ms)",
    "params": "parameters",
    "memory_mib": "weights + KV-cache memory (MiB)",
}
QUALITY_LABELS = {
    "perplexity": "perplexity",
    "kl": "KL to the parent (nats/token)",
    "lm_loss": "LM loss (nats/token)",
    "lm-eval": "accuracy",
}
CALIBRATION = "calibration eval split"


@dataclass(frozen=True)
class Quality:
    """One quality panel: ``metric`` on eval set ``name`` (``None``: the calibration split), or
    (``metric="lm-eval"``) the ``nas eval`` column ``name`` (e.g. ``eval_nas_next_word_acc``)."""

    name: str | None
    metric: str = "perplexity"

    @property
    def column(self) -> str:
        if self.metric == "lm-eval":
            return str(self.name)
        base = f"measured_{self.metric}"
        return base if self.name is None else f"{base}@{self.name}"

    @property
    def label(self) -> str:
        if self.metric == "lm-eval":
            return f"lm-eval {str(self.name).removeprefix('eval_')} (accuracy)"
        return f"{QUALITY_LABELS[self.metric]} on {self.name or CALIBRATION}"


@dataclass
class Figure:
    """What to draw, as plain numbers (built by ``figure_data``)."""

    x_label: str
    title: str
    predicted: dict = field(default_factory=dict)  # strategy -> [(x, y, id)]
    measured: list = field(default_factory=list)  # [(pred x, pred y, meas x, meas KL, id)]
    baselines: dict = field(default_factory=dict)  # label -> [(x, y)]
    parent: dict = field(default_factory=dict)  # predicted x, measured x, and quality columns
    panels: list = field(default_factory=list)  # [(Quality, [(meas x, value, id)])]


def parse_quality(
    names: list[str] | None, meta: dict, columns: list[str] | tuple = ()
) -> list[Quality]:
    """The quality panels: each ``SET`` or ``SET:metric`` (or an ``eval_*`` column of
    ``columns``) of ``names``; else every eval set of the job (the calibration split without
    any) and every ``eval_*_acc`` column. Raises ``SelectionError`` for an unknown name."""
    sets = list(meta.get("eval_sets") or [])
    accuracies = [c for c in columns if c.startswith("eval_")]
    if not names:
        default = [Quality(s) for s in sets] or [Quality(None)]
        return default + [Quality(c, "lm-eval") for c in accuracies if c.endswith("_acc")]
    out = []
    for text in names:
        if text in accuracies:
            out.append(Quality(text, "lm-eval"))
            continue
        name, _, metric = text.partition(":")
        metric = metric or "perplexity"
        if metric not in QUALITY_LABELS:
            raise SelectionError(
                f"unknown quality {metric!r} in {text!r}; use perplexity, kl or lm_loss"
            )
        if name not in sets:
            known = ", ".join(sets) if sets else "none (its quality is on the calibration split)"
            also = f"; lm-eval columns: {', '.join(accuracies)}" if accuracies else ""
            raise SelectionError(f"unknown eval set {name!r}; this job's eval sets: {known}{also}")
        out.append(Quality(name, metric))
    return out


def _value(row, column: str) -> float | None:
    value = row.get(column) if hasattr(row, "get") else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def figure_data(
    frame: pd.DataFrame,
    meta: dict,
    baselines: pd.DataFrame,
    quality: list[str] | None = None,
    measured_on: str = "",
) -> Figure:
    """The plot's numbers from a front, its meta (``parent`` may hold ``measured_*`` columns)
    and baselines. ``measured_on`` names how latency was measured (for the title)."""
    from nas.pareto import latency_column

    x = latency_column(meta) or meta["primary_column"]
    metric = x.removeprefix("predicted_")
    fig = Figure(
        x_label=AXIS_LABELS.get(metric, metric),
        title=(f"{meta['quality_note'].upper()}\n" if meta.get("quality_note") else "")
        + f"{len(frame)} points"
        + (f"; measured: {measured_on}" if measured_on else "")
        + (
            f"; predicted KL from {meta['objective_kl_source']}"
            if meta.get("objective_kl_source")
            else ""
        ),
    )
    for strategy, rows in frame.groupby("strategy", sort=False):
        rows = rows.sort_values(x)
        fig.predicted[str(strategy)] = [
            (float(r[x]), float(r["predicted_kl"]), str(r["point_id"])) for _, r in rows.iterrows()
        ]
    measured_x = "measured_latency_ms"
    for _, r in frame.iterrows():
        mx, mk = _value(r, measured_x), _value(r, "measured_kl")
        if mx is not None and mk is not None:
            fig.measured.append((float(r[x]), float(r["predicted_kl"]), mx, mk, str(r["point_id"])))
    if len(baselines) and x in baselines and "predicted_kl" in baselines:
        label_col = "label" if "label" in baselines else "strategy"
        for label, rows in baselines.groupby(label_col, sort=False):
            rows = rows.dropna(subset=[x, "predicted_kl"]).sort_values(x)
            if len(rows):
                fig.baselines[str(label)] = list(zip(rows[x], rows["predicted_kl"], strict=True))
    parent = dict(meta.get("parent", {}))
    fig.parent = parent | {"x": parent.get(x)}
    for q in parse_quality(quality, meta, list(frame.columns)):
        points = [
            (_value(r, measured_x), _value(r, q.column), str(r["point_id"]))
            for _, r in frame.iterrows()
        ]
        points = [p for p in points if p[0] is not None and p[1] is not None]
        if points or _value(parent, q.column) is not None:
            fig.panels.append((q, points))
    return fig


def plot(
    frame: pd.DataFrame,
    meta: dict,
    baselines: pd.DataFrame,
    path: Path,
    quality: list[str] | None = None,
    measured_on: str = "",
) -> Path:
    """Write ``path`` (``.png`` or ``.html``/``.htm``); raises ``SelectionError`` otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise SelectionError(f"plot file {path} must end in .png or .html")
    data = figure_data(frame, meta, baselines, quality, measured_on)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig = _draw(plt, data)
        try:
            if suffix == ".png":
                atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
                return path
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg")
        finally:
            plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    return atomic_write_text(
        path,
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Pareto front</title></head>\n'
        f"<body>\n{svg}\n</body></html>\n",
    )


def plot_job(job_dir: str | Path, path: Path, quality: list[str] | None = None) -> Path:
    """``plot`` of a job's stored front with its baselines, ``nas eval`` accuracies, the
    parent's measured columns (``students/parent.json`` when the meta has none) and the
    students stage's latency setting."""
    from nas.downstream import join_eval
    from nas.pareto import read_baselines, read_front

    job_dir = Path(job_dir)
    frame = join_eval(job_dir, read_front(job_dir))
    meta = dict(frame.attrs["meta"])
    meta["parent"] = _parent_measured(job_dir) | meta.get("parent", {})
    layout = JobLayout(job_dir)
    measured_on = (
        layout.read_stage("students").get("profile", "") if layout.stage_done("students") else ""
    )
    return plot(frame, meta, read_baselines(job_dir), path, quality, measured_on)


def _parent_measured(job_dir: Path) -> dict:
    """The parent's ``measured_*`` columns from the students stage's ``students/parent.json``."""
    record = JobLayout(job_dir).read_json(
        JobLayout(job_dir).parent_measured, "the parent's measurement", {}
    )
    out = {f"measured_{k}": record[k] for k in ("kl", "lm_loss", "perplexity") if k in record}
    if "median_ms" in record.get("measured_latency", {}):
        out["measured_latency_ms"] = record["measured_latency"]["median_ms"]
    return out


def _draw(plt, data: Figure):
    panels = 1 + len(data.panels)
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 5.0), dpi=110, squeeze=False)
    _predicted_vs_measured(axes[0][0], data)
    for ax, (q, points) in zip(axes[0][1:], data.panels, strict=True):
        _quality_panel(ax, data, q, points)
    fig.suptitle(f"Pareto front: {data.title}", fontsize=10)
    fig.tight_layout()
    return fig


def _labels(ax, points: list[tuple[float, float, str, str]]) -> None:
    """Each point's id to its right, moved down in steps of one text line while it would
    overlap an id already placed (positions compared in pixels, after the axes' limits)."""
    ax.margins(x=0.06, y=0.08)
    ax.autoscale_view()
    placed: list[tuple[float, float]] = []
    for x, y, text, colour in sorted(points, key=lambda p: (-p[1], p[0])):
        px, py = ax.transData.transform((x, y))
        dy = 4.0
        while any(abs(px - qx) < 75 and abs(py + dy - qy) < 10 for qx, qy in placed):
            dy -= 10.0
        placed.append((px, py + dy))
        ax.annotate(
            text, (x, y), xytext=(4, dy), textcoords="offset pixels", fontsize=7, color=colour
        )


def _predicted_vs_measured(ax, data: Figure) -> None:
    colours = iter(COLOURS)
    measured_ids = {m[4] for m in data.measured}
    labels = [(m[2], m[3], m[4], "#333333") for m in data.measured]
    for strategy, points in data.predicted.items():
        colour = next(colours, "#333333")
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "o-", color=colour, ms=5, label=f"predicted (summed block KL): {strategy}")
        labels += [(*p, colour) for p in points if p[2] not in measured_ids]
    if data.measured:
        for px, py, mx, mk, _pid in data.measured:
            ax.plot([px, mx], [py, mk], ":", color="#777777", lw=1)
        ax.plot(
            [m[2] for m in data.measured],
            [m[3] for m in data.measured],
            "s",
            mfc="none",
            color="#333333",
            label=f"measured (KL on {CALIBRATION})",
        )
    for label, points in data.baselines.items():
        ax.plot(
            *zip(*points, strict=True), "x--", color=BASELINE_COLOUR, label=f"baseline: {label}"
        )
    parent = data.parent
    if parent.get("x") is not None:
        ax.plot(parent["x"], 0.0, "*", ms=14, color=PARENT_COLOUR, label="parent (predicted)")
    if parent.get("measured_latency_ms") is not None:
        ax.plot(
            parent["measured_latency_ms"],
            0.0,
            "*",
            ms=14,
            mfc="none",
            color=PARENT_COLOUR,
            label="parent (measured)",
        )
        if parent.get("x") is not None:
            ax.plot([parent["x"], parent["measured_latency_ms"]], [0, 0], ":", color=PARENT_COLOUR)
    ax.set_xlabel(f"{data.x_label}: predicted (filled) or measured (hollow)")
    ax.set_ylabel("KL to the parent (nats/token)")
    ax.set_title("predicted (filled) vs measured (hollow)", fontsize=10)
    _labels(ax, labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _quality_panel(ax, data: Figure, q: Quality, points: list) -> None:
    colour = COLOURS[0]
    if points:
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "s",
            mfc="none",
            color=colour,
            label="students (measured)",
        )

    parent_value = _value(data.parent, q.column)
    if parent_value is not None:
        ax.axhline(
            parent_value, ls="--", color=PARENT_COLOUR, lw=1, label=f"parent: {parent_value:.4g}"
        )
        if data.parent.get("measured_latency_ms") is not None:
            ax.plot(
                data.parent["measured_latency_ms"],
                parent_value,
                "*",
                ms=14,
                mfc="none",
                color=PARENT_COLOUR,
            )
    values = [p[1] for p in points] + ([parent_value] if parent_value is not None else [])
    if q.metric == "perplexity" and values and min(values) > 0 and max(values) / min(values) > 5:
        ax.set_yscale("log")
    ax.set_xlabel(f"measured {data.x_label}")
    ax.set_ylabel(q.label)
    ax.set_title(q.label, fontsize=10)
    _labels(ax, [(*p, "#333333") for p in points])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

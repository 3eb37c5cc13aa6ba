"""Latency-vs-quality plots of a Pareto front: PNG through matplotlib (Agg, imported lazily) or a
self-contained HTML page with an inline SVG (no scripts, no external files)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from compress.atomic import atomic_write, atomic_write_text
from nas.selection.errors import SelectionError

COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
BASELINE_COLOUR = "#ff7f0e"
PARENT_COLOUR = "#d62728"


def _series(frame: pd.DataFrame, meta: dict, baselines: pd.DataFrame):
    """(x column, list of (name, kind, [(x, y, tooltip)]) ) for every series to draw."""
    from nas.pareto import latency_column

    x = latency_column(meta) or meta["primary_column"]
    series = []
    for strategy, rows in frame.groupby("strategy", sort=False):
        rows = rows.sort_values(x)
        points = [
            (float(r[x]), float(r["predicted_kl"]), f"{r['point_id']} {strategy} {r['target']}")
            for _, r in rows.iterrows()
        ]
        series.append((str(strategy), "front", points))
    if "measured_kl" in frame and "measured_latency_ms" in frame:
        measured = frame.dropna(subset=["measured_kl", "measured_latency_ms"])
        if len(measured):
            points = [
                (
                    float(r["measured_latency_ms"]),
                    float(r["measured_kl"]),
                    f"{r['point_id']} measured",
                )
                for _, r in measured.iterrows()
            ]
            series.append(("measured", "measured", points))
    if len(baselines) and x in baselines and "predicted_kl" in baselines:
        label_col = "label" if "label" in baselines else "strategy"
        for label, rows in baselines.groupby(label_col, sort=False):
            rows = rows.dropna(subset=[x, "predicted_kl"]).sort_values(x)
            points = [
                (float(r[x]), float(r["predicted_kl"]), f"baseline {label} {r.get('target', '')}")
                for _, r in rows.iterrows()
            ]
            if points:
                series.append((f"baseline: {label}", "baseline", points))
    parent = meta.get("parent", {})
    if x in parent:
        series.append(("parent", "parent", [(float(parent[x]), 0.0, "parent")]))
    return x, series


def plot(frame: pd.DataFrame, meta: dict, baselines: pd.DataFrame, path: Path) -> Path:
    """Write ``path`` (``.png`` or ``.html``/``.htm``); raises ``SelectionError`` otherwise."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise SelectionError(f"plot file {path} must end in .png or .html")
    x, series = _series(frame, meta, baselines)
    title = f"Pareto front: {x} vs predicted KL ({len(frame)} points)"
    if suffix == ".png":
        return _png(series, x, title, path)
    return atomic_write_text(path, _html(series, x, title))


def _png(series, x: str, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = iter(COLOURS)
    for name, kind, points in series:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if kind == "front":
            ax.plot(xs, ys, "o-", color=next(colours, "#333333"), label=name)
        elif kind == "measured":
            ax.plot(xs, ys, "o", mfc="none", color="#333333", label=name)
        elif kind == "baseline":
            ax.plot(xs, ys, "x--", color=BASELINE_COLOUR, label=name)
        else:
            ax.plot(xs, ys, "*", ms=14, color=PARENT_COLOUR, label=name)
    ax.set_xlabel(x)
    ax.set_ylabel("predicted KL (nats/token, summed)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def _html(series, x: str, title: str) -> str:
    width, height, left, right, top, bottom = 760, 460, 70, 190, 40, 50
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [p[1] for _, _, pts in series for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.05 or 1.0, (y1 - y0) * 0.05 or 1.0
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * plot_w

    def py(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * plot_h

    esc = html.escape
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
    ]
    for t in _ticks(x0, x1):
        svg.append(
            f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + plot_h}" stroke="#eee"/>'
        )
        svg.append(
            f'<text x="{px(t):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{t:.4g}</text>'
        )
    for t in _ticks(y0, y1):
        svg.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" stroke="#eee"/>'
        )
        svg.append(f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>')
    svg.append(
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">{esc(x)}</text>'
    )
    svg.append(
        f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2})">predicted KL (summed)</text>'
    )
    colours = iter(COLOURS)
    for n, (name, kind, points) in enumerate(series):
        colour = {"baseline": BASELINE_COLOUR, "parent": PARENT_COLOUR, "measured": "#333"}.get(
            kind
        ) or next(colours, "#333")
        if kind in ("front", "baseline") and len(points) > 1:
            path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b, _ in points)
            dash = ' stroke-dasharray="5,4"' if kind == "baseline" else ""
            svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}"{dash}/>')
        for a, b, tip in points:
            fill = "none" if kind == "measured" else colour
            r = 7 if kind == "parent" else 4
            svg.append(
                f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="{r}" fill="{fill}" stroke="{colour}">'
                f"<title>{esc(tip)}: {a:.4g}, KL {b:.4g}</title></circle>"
            )
        ly = top + 14 + 18 * n
        svg.append(f'<circle cx="{width - right + 16}" cy="{ly - 4}" r="4" fill="{colour}"/>')
        svg.append(f'<text x="{width - right + 26}" y="{ly}">{esc(name)}</text>')
    svg.append("</svg>")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f'<title>{esc(title)}</title></head>\n<body>\n<h3 style="font-family:sans-serif">'
        f"{esc(title)}</h3>\n" + "\n".join(svg) + "\n</body></html>\n"
    )

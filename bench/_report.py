"""Shared output for bench/ scripts: CSV + Markdown under results/bench/, the table printed last."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "results" / "bench"


def write_table(name: str, rows: list[dict], title: str, notes: str = "") -> pd.DataFrame:
    """Write ``results/bench/<name>.csv`` and ``.md`` and print the Markdown table."""
    OUT.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(OUT / f"{name}.csv", index=False)
    markdown = f"### {title}\n\n{frame.to_markdown(index=False)}\n"
    if notes:
        markdown += f"\n{notes}\n"
    (OUT / f"{name}.md").write_text(markdown)
    print(markdown)
    return frame

"""Block libraries as files: read one (CSV, JSON or Parquet) into a ``SelectionProblem``, write one.

The format (one row per layer and block, or per layer and subblock variant):

- ``layer``: the layer index (0-based), or ``fixed`` for the one optional row of fixed costs
  (embeddings, final norm, head: added once to every student).
- ``attention``, ``ffn``: variant names (any non-empty text; the pipeline writes canonical names
  such as ``attention:kv_heads=2`` or ``ffn:width=768``). A row with both names is a **joint
  block** of its layer (scored as a whole); a row with only one of them is a **subblock** variant.
  A layer with joint blocks is a joint layer (only its listed pairs can be chosen); a layer with
  only subblock rows is additive (every pair, scores and costs summed).
- score columns: ``kl``, ``lm_loss``, ``score`` and any column named ``score_*``. One of them is
  the objective (``score=``, default ``kl``); lower is better, negative values are fine (e.g. an
  LM-loss delta below the parent's).
- every other numeric column is a cost metric, by its name: ``prefill_latency_ms``,
  ``decode_latency_ms``, ``params``, ``memory_mib``, ``kv_cache_mib`` have their documented meaning
  (see ``nas.selection.costs``); any other name (``runtime_ms``, ``energy_j``) is a custom metric
  a bound can name. Every block (or subblock) row carries every cost metric; the ``fixed`` row may
  leave some empty (0).
- the parent: the ``attention:parent`` + ``ffn:parent`` pair if the layer has it, else the layer's
  first row (relative bounds are ratios of the parent's cost).

JSON: a list of such records (or ``{"rows": [...]}``). Parquet: the same columns. This covers a
Puzzle-style library (per layer, per block: attention and FFN configuration, KL and LM-loss scores,
measured runtime, memory and parameters). Pure: Parquet needs pandas + pyarrow, imported lazily.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

from nas.selection.errors import SelectionError
from nas.selection.problem import (
    KINDS,
    Block,
    LayerOptions,
    Option,
    SelectionProblem,
    finite_number,
)

SCORE_NAMES = ("kl", "lm_loss", "score")
NAME_COLUMNS = ("layer", *KINDS)
FORMATS = ("csv", "json", "parquet")


def _is_score(column: str) -> bool:
    return column in SCORE_NAMES or column.startswith("score_")


def _format(path: Path, fmt: str | None) -> str:
    fmt = fmt or path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise SelectionError(f"{path}: unknown library format {fmt!r}; use .csv, .json or .parquet")
    return fmt


def read_rows(path: str | Path, fmt: str | None = None) -> list[dict]:
    """The rows of a library file as dicts (values as read: text from CSV). Raises
    ``SelectionError`` for a missing or unreadable file."""
    path = Path(path)
    fmt = _format(path, fmt)
    if not path.is_file():
        raise SelectionError(f"library file {path} does not exist")
    try:
        if fmt == "csv":
            return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        if fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data.get("rows") if isinstance(data, dict) else data
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise SelectionError(f"{path}: a JSON library is a list of row records")
            return rows
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, ImportError) as exc:
        raise SelectionError(f"cannot read library {path}: {str(exc).splitlines()[0]}") from None


def _blank(value) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _float(value, where: str) -> float:
    return finite_number(value, where, SelectionError)


def problem_from_rows(
    rows: list[Mapping], score: str = "kl", blocks: str = "auto", origin: str = "library"
) -> SelectionProblem:
    """A ``SelectionProblem`` from library rows (see the module docstring).

    ``score``: the score column to minimise. ``blocks``: ``auto`` (joint where a layer lists joint
    blocks), ``subblock`` (use the subblock rows only: the additive model), ``joint`` (every layer
    must list joint blocks). Raises ``SelectionError`` (one line, naming the row) for a missing
    column, a blank score or cost, an unknown layer, or a duplicate block.
    """
    if blocks not in ("auto", "subblock", "joint"):
        raise SelectionError(f"blocks is auto, subblock or joint, got {blocks!r}")
    if not rows:
        raise SelectionError(f"{origin} has no rows")
    columns = list(rows[0])
    missing = [c for c in NAME_COLUMNS if c not in columns]
    if missing:
        raise SelectionError(f"{origin} lacks the column(s) {', '.join(missing)}")
    if score not in columns:
        scores = [c for c in columns if _is_score(c)]
        raise SelectionError(
            f"{origin} has no score column {score!r} (it has: {', '.join(scores) or 'none'})"
        )
    metrics = [c for c in columns if c not in NAME_COLUMNS and not _is_score(c)]
    fixed: dict[str, float] = {}
    layers: dict[int, dict[str, list]] = {}
    for n, row in enumerate(rows, start=2 if origin.endswith(".csv") else 0):
        where = f"{origin} row {n}"
        if str(row["layer"]).strip() == "fixed":
            fixed = {m: _float(row[m], f"{where} {m}") for m in metrics if not _blank(row.get(m))}
            continue
        try:
            layer = int(float(row["layer"]))
        except (TypeError, ValueError):
            raise SelectionError(f"{where}: layer {row['layer']!r} is not an index") from None
        names = [None if _blank(row[k]) else str(row[k]).strip() for k in KINDS]
        if names == [None, None]:
            raise SelectionError(f"{where}: names neither an attention nor an FFN variant")
        costs = {m: _float(row.get(m), f"{where} {m}") for m in metrics}
        value = _float(row.get(score), f"{where} {score}")
        entry = layers.setdefault(layer, {"blocks": [], "attention": [], "ffn": []})
        if None not in names:
            entry["blocks"].append((names[0], names[1], value, costs))
        else:
            kind = "attention" if names[0] is not None else "ffn"
            entry[kind].append(Option(names[0] or names[1], value, costs))
    if sorted(layers) != list(range(len(layers))):
        raise SelectionError(f"{origin}: layers must be 0..{len(layers) - 1}, got {sorted(layers)}")
    out = []
    for i in range(len(layers)):
        entry = layers[i]
        joint = entry["blocks"] and blocks != "subblock"
        if blocks == "joint" and not entry["blocks"]:
            raise SelectionError(f"{origin}: layer {i} lists no joint blocks")
        try:
            if joint:
                out.append(_joint_layer(entry))
            else:
                out.append(LayerOptions(tuple(entry["attention"]), tuple(entry["ffn"])))
        except ValueError as exc:
            raise SelectionError(f"{origin}: layer {i}: {exc}") from None
    try:
        return SelectionProblem(tuple(out), fixed)
    except ValueError as exc:
        raise SelectionError(f"{origin}: {exc}") from None


def _joint_layer(entry: dict) -> LayerOptions:
    """A joint layer; its options are the layer's subblock rows when they name every variant its
    blocks use (so the additive model stays readable from the same file), else bare names."""
    layer = LayerOptions.joint(entry["blocks"])
    options = {k: {o.variant: o for o in entry[k]} for k in KINDS}
    if not all(o.variant in options[k] for k in KINDS for o in layer.options(k)):
        return layer
    index = {k: {name: n for n, name in enumerate(options[k])} for k in KINDS}
    return LayerOptions(
        tuple(options["attention"].values()),
        tuple(options["ffn"].values()),
        tuple(
            Block(index["attention"][a], index["ffn"][f], value, costs)
            for a, f, value, costs in entry["blocks"]
        ),
    )


def read_library(
    path: str | Path, score: str = "kl", blocks: str = "auto", fmt: str | None = None
) -> SelectionProblem:
    """Read a library file (CSV, JSON or Parquet by suffix, or ``fmt``) into a problem."""
    return problem_from_rows(read_rows(path, fmt), score, blocks, origin=str(path))


def library_rows(problem: SelectionProblem, score: str = "kl") -> list[dict]:
    """The rows of a problem in the library format: joint layers as block rows, additive layers
    as subblock rows (joint layers too, when their options carry subblock scores and costs), then
    the ``fixed`` row. ``read_library`` of them gives back the problem."""
    metrics = list(problem.metrics)
    rows = []
    for i, layer in enumerate(problem.layers):
        if layer.is_joint:
            for b in layer.blocks:
                names = (layer.attention[b.attention].variant, layer.ffn[b.ffn].variant)
                rows.append(_record(i, names, b.score, b.costs, metrics, score))
            if not layer.attention[0].costs:  # bare names: no subblock rows to write
                continue
        for kind in KINDS:
            for option in layer.options(kind):
                names = (option.variant, "") if kind == "attention" else ("", option.variant)
                rows.append(_record(i, names, option.score, option.costs, metrics, score))
    rows.append(_record("fixed", ("", ""), None, problem.fixed_costs, metrics, score))
    return rows


def _record(layer, names, value, costs, metrics, score) -> dict:
    return {
        "layer": layer,
        "attention": names[0],
        "ffn": names[1],
        score: value,
        **{m: costs.get(m, 0.0) for m in metrics},
    }


def write_library(
    problem: SelectionProblem, path: str | Path, score: str = "kl", fmt: str | None = None
) -> Path:
    """Write ``problem`` as a library file (format by suffix or ``fmt``); returns the path. The
    file is written whole to a temporary name and renamed."""
    path = Path(path)
    fmt = _format(path, fmt)
    rows = library_rows(problem, score)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {k: "" if v is None else repr(v) if isinstance(v, float) else v for k, v in r.items()}
            for r in rows
        )
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    elif fmt == "json":
        tmp.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    else:
        import pandas as pd

        frame = pd.DataFrame(rows)
        frame["layer"] = frame["layer"].astype(str)
        frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path

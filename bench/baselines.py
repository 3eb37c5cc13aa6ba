"""The MIP front vs. simple baselines on a finished job, every point measured in one run.

    python bench/baselines.py --job JOB [--results DIR] [--eval-tokens 2048] [--group 6]
        [--dp-max-removed 8] [--dp-calib-tokens 512] [--drop 1 2 4 6 ...] [--seed 0]

Points (each a whole student assembled from the job's library, ``compress.student``):

- ``parent``; ``front``: the job's ``pareto/front.json`` points;
- ``uniform-width``: the same FFN width variant in every layer (the library's importance-
  initialised, BLD-trained variants), parent attention;
- ``drop-last``: attention and FFN ``noop`` in the last k layers;
- ``amoeba-dp``: AmoebaLLM's depth DP (``nas.strategies.depth.depth_masks``) on calibration
  tokens of the job's train split, up to ``--dp-max-removed`` layers removed;
- ``greedy``: ``nas.selection.greedy.solve_greedy`` at each of the job's budgets;
- ``random``: as many random per-layer choices of the job's ``SelectionProblem`` as the front
  has points, kept only when their predicted latency lies within the job's budgets (no higher
  than the largest, no lower than the smallest, so that a front point can be compared).

Latency: the job's primary hardware profile's backend and settings over the whole student
(``compress.latency.whole_graph``). Students are sorted by predicted latency and timed in
groups of ``--group`` with the parent in every group (so near-equal students share a group), repeats interleaved round-robin (``compress.latency.time_graphs``);
``speedup`` is the group's parent median over the point's median, and ``latency_ms`` is the
point's speedup applied to the median parent latency over all groups (``raw_ms``: the point's
own median). Quality: KL from the parent and perplexity on the first ``--eval-tokens`` of the
job's eval split (the same tokens for every point).

Checks: (acceptance 2 of issue 8) for each baseline point, the front point of lowest KL among
those no slower (by ``latency_ms``), and its KL ratio (front / baseline; <= 1 means
dominated); (acceptance 3) the front's perplexity ratio to the parent at 1.5x speedup,
interpolated between the front points around it, and the closest front point with speedup
>= 1.4. Writes ``results/bench/baselines.{csv,md}`` and ``results/bench/baselines.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import OUT, write_table  # noqa: E402
from compress.errors import UserError  # noqa: E402
from nas.selection.problem import Choices  # noqa: E402

PARENT = ("attention:parent", "ffn:parent")
NOOP = ("attention:noop", "ffn:noop")


class BenchError(UserError):
    """A job this benchmark cannot use (not finished, no front, no library)."""


# --- point builders (pure: numbers and names in, choices out) ------------------------------------
def _freeze(choices) -> Choices:
    return tuple((str(a), str(f)) for a, f in choices)


def uniform_width_points(problem) -> list[tuple[str, Choices]]:
    """``(label, choices)`` per FFN width variant that every layer offers: that width in every
    layer, parent attention; widest first."""
    from compress.variants import VariantSpec

    common = set.intersection(*({o.variant for o in layer.ffn} for layer in problem.layers))
    widths = [
        (VariantSpec.parse(name).value, name)
        for name in common
        if VariantSpec.parse(name).type == "width"
    ]
    return [
        (f"uniform {name.split(':')[1]}", ((PARENT[0], name),) * problem.num_layers)
        for _, name in sorted(widths, reverse=True)
    ]


def drop_last_points(num_layers: int, counts: Sequence[int] | None = None) -> list:
    """``(label, choices)`` with the last k layers no-op, for k in ``counts`` (default 1, 2, 4,
    6, ... up to half the layers; counts that would drop every layer are left out)."""
    if counts is None:
        counts = [1, *range(2, max(num_layers // 2, 1) + 1, 2)]
    out = []
    for k in sorted(set(int(c) for c in counts)):
        if 1 <= k < num_layers:
            out.append((f"drop last {k}", (PARENT,) * (num_layers - k) + (NOOP,) * k))
    return out


def greedy_points(problem, budgets: Sequence[dict]) -> list[tuple[str, Choices]]:
    """``(label, choices)`` of ``solve_greedy`` at each budget (``meta.json``'s ``budgets``:
    records with ``metric``, ``value``, ``label``); infeasible or stuck budgets are skipped."""
    from nas.selection.costs import Budget
    from nas.selection.errors import SelectionError
    from nas.selection.greedy import solve_greedy

    out = []
    for b in budgets:
        budget = Budget(b["metric"], float(b["value"]), b["metric"], float(b["value"]))
        try:
            result = solve_greedy(problem, [budget])
        except SelectionError:
            continue
        if isinstance(result, tuple) and result:
            out.append((f"greedy {b.get('label', budget.label)}", _freeze(result[0].choices)))
    return out


def random_points(
    problem, count: int, metric: str, low: float, high: float, seed: int = 0, tries: int = 200_000
) -> list[tuple[str, Choices]]:
    """``count`` distinct random students (each layer's attention and FFN option drawn
    uniformly) whose predicted ``metric`` is within ``[low, high]``; fewer if ``tries`` draws
    do not find them."""
    rng = random.Random(seed)
    seen: set = set()
    out = []
    for _ in range(tries):
        if len(out) >= count:
            break
        indices = tuple(
            (rng.randrange(len(layer.attention)), rng.randrange(len(layer.ffn)))
            for layer in problem.layers
        )
        if indices in seen:
            continue
        seen.add(indices)
        if low <= problem.cost(indices, metric) <= high:
            out.append((f"random {len(out) + 1}", _freeze(problem.names(indices))))
    return out


# --- the checks (pure: over the result rows) -----------------------------------------------------
def domination(rows: list[dict], tolerance: float = 0.0) -> list[dict]:
    """Per baseline row (not ``front``/``parent``): the front point of lowest KL among those with
    ``latency_ms`` no higher than the baseline's times ``1 + tolerance``, and ``kl ratio`` = its
    KL / the baseline's KL (None when no front point is as fast; <= 1: dominated)."""
    front = [r for r in rows if r["strategy"] == "front"]
    out = []
    for row in rows:
        if row["strategy"] in ("front", "parent"):
            continue
        limit = row["latency_ms"] * (1.0 + tolerance)
        faster = [f for f in front if f["latency_ms"] <= limit]
        best = min(faster, key=lambda f: f["kl"]) if faster else None
        ratio = None
        if best is not None:
            if row["kl"] > 0:
                ratio = best["kl"] / row["kl"]
            else:
                ratio = 1.0 if best["kl"] == 0 else math.inf
        out.append(
            {
                "baseline": row["label"],
                "strategy": row["strategy"],
                "speedup": row["speedup"],
                "kl": row["kl"],
                "front point": best["label"] if best else "(none as fast)",
                "front speedup": best["speedup"] if best else None,
                "front kl": best["kl"] if best else None,
                "kl ratio": ratio,
                "dominated": None if ratio is None else ratio <= 1.0,
            }
        )
    return out


def at_speedup(rows: list[dict], target: float = 1.5, floor: float = 1.4) -> dict:
    """The front's perplexity ratio at ``target`` speedup: linear interpolation between the
    front points just below and above it (None outside the front's range), and the front point
    with speedup >= ``floor`` closest to ``target``."""
    front = sorted((r for r in rows if r["strategy"] == "front"), key=lambda r: r["speedup"])
    below = [r for r in front if r["speedup"] <= target]
    above = [r for r in front if r["speedup"] >= target]
    interp = None
    if below and above:
        lo, hi = below[-1], min(above, key=lambda r: r["speedup"])
        span = hi["speedup"] - lo["speedup"]
        w = 0.0 if span <= 0 else (target - lo["speedup"]) / span
        interp = lo["ppl_ratio"] + w * (hi["ppl_ratio"] - lo["ppl_ratio"])
    near = [r for r in front if r["speedup"] >= floor]
    pick = min(near, key=lambda r: abs(r["speedup"] - target)) if near else None
    return {
        "target_speedup": target,
        "interpolated_ppl_ratio": interp,
        "closest_point": pick["label"] if pick else None,
        "closest_speedup": pick["speedup"] if pick else None,
        "closest_ppl_ratio": pick["ppl_ratio"] if pick else None,
    }


# --- measuring -----------------------------------------------------------------------------------
def measure(
    points, parent, loader, settings, ids, batch_size: int, group: int, key=None, report=print
):
    """Latency (grouped with the parent, interleaved) and quality of each distinct choice.

    ``key`` (choices -> predicted latency) orders the students before they are cut into groups,
    so that points of about the same latency (the comparisons that matter) share a group and
    its interleaved rounds instead of being compared across groups.

    Returns ``{choices: {raw_ms, parent_ms, speedup, kl, perplexity}}``.
    """
    import gc

    import numpy as np

    from compress.evaluate import ParentLogits, evaluate
    from compress.latency import get_backend, time_graphs, whole_graph
    from compress.student import assemble_student

    def quality(model, reference) -> dict:  # KL(parent || model) and perplexity
        q = evaluate(model, ids, reference, batch_size)
        return {"kl": q.kl, "perplexity": q.perplexity}

    backend = get_backend(settings)
    parent_logits = ParentLogits(parent, ids, batch_size)
    distinct = list(dict.fromkeys(c for _, _, c in points if c != (PARENT,) * len(c)))
    if key is not None:
        distinct.sort(key=key)
    results: dict = {}
    parent_key = (PARENT,) * parent.num_layers
    results[parent_key] = quality(parent, parent)  # one pass, KL exactly 0
    groups = [distinct[i : i + group] for i in range(0, len(distinct), group)] or [[]]
    parent_ms: list[float] = []
    for g, chunk in enumerate(groups):
        t0 = time.perf_counter()
        graphs = {"parent": whole_graph(parent, settings)}
        for k, choices in enumerate(chunk):
            student = assemble_student(parent, [list(c) for c in choices], loader).eval()
            results[choices] = quality(student, parent_logits)  # parent logits cached
            graphs[str(k)] = whole_graph(student, settings)
            del student
        times = time_graphs(backend, graphs, settings)
        p_ms = float(np.median(times["parent"]))
        parent_ms.append(p_ms)
        for k, choices in enumerate(chunk):
            ms = float(np.median(times[str(k)]))
            results[choices].update(raw_ms=ms, parent_ms=p_ms, speedup=p_ms / ms)
        del graphs, times
        gc.collect()
        report(
            f"[baselines] group {g + 1}/{len(groups)}: {len(chunk)} students + parent "
            f"({p_ms:.2f} ms) in {time.perf_counter() - t0:.1f}s"
        )
    ref = float(np.median(parent_ms))
    results[parent_key].update(raw_ms=ref, parent_ms=ref, speedup=1.0)
    for value in results.values():
        value["latency_ms"] = ref / value["speedup"]
    return results


# --- the job -------------------------------------------------------------------------------------
def open_job(results_dir: Path, job: str):
    from nas.store import JobStore

    store = JobStore.open(results_dir, job)
    state = store.manifest().get("state")
    if state != "finished":
        raise BenchError(f"job {job} is {state}, not finished; run or resume it first")
    for needed in (store.front, store.problem, store.front_meta, store.library):
        if not needed.exists():
            raise BenchError(f"job {job} has no {needed.relative_to(store.dir)}")
    return store


def collect_points(store, spec, parent, splits, args, report=print) -> list:
    """``(label, strategy, choices)`` of every point, in table order."""
    from nas.pareto import read_front, read_meta
    from nas.selection.costs import SelectionProblem
    from nas.strategies.depth import depth_masks

    meta = read_meta(store.dir)
    problem = SelectionProblem.from_dict(json.loads(store.problem.read_text()))
    n = problem.num_layers
    points = [("parent", "parent", (PARENT,) * n)]
    front = read_front(store.dir).to_dict("records")
    for p in front:
        label = f"{p['point_id']} {p.get('target') or p['strategy']}".strip()
        points.append((label, "front", _freeze(p["choices"])))
    points += [(lab, "uniform-width", c) for lab, c in uniform_width_points(problem)]
    points += [(lab, "drop-last", c) for lab, c in drop_last_points(n, args.drop)]
    seq = splits.train.shape[1]
    calib = splits.train[: max(1, math.ceil(args.dp_calib_tokens / seq))]
    max_removed = min(args.dp_max_removed, n - 1 - spec.strategy.keep_last_layers)
    args.dp_removed = max_removed
    t0 = time.perf_counter()
    masks = depth_masks(
        parent.adapter, calib, spec.strategy.keep_last_layers, max_removed, args.batch_size
    )
    report(
        f"[baselines] amoeba-dp: {len(masks) - 1} masks (max_removed={max_removed}, "
        f"{calib.numel()} calibration tokens) in {time.perf_counter() - t0:.1f}s"
    )
    for m in masks[1:]:
        dropped = ",".join(str(i) for i in m.dropped_layers)
        points.append(
            (
                f"dp -{m.removed} [{dropped}]",
                "amoeba-dp",
                _freeze([PARENT if keep else NOOP for keep in m.mask]),
            )
        )
    budgets = meta.get("budgets", [])
    points += [(lab, "greedy", c) for lab, c in greedy_points(problem, budgets)]
    metric = meta.get("primary_metric")
    values = [b["value"] for b in budgets if b["metric"] == metric]
    if values:
        chosen = random_points(problem, len(front), metric, min(values), max(values), args.seed)
        points += [(lab, "random", c) for lab, c in chosen]
    return points


def predicted_latency(store):
    """choices -> the job's predicted primary cost (the order students are grouped in)."""
    from nas.pareto import read_meta
    from nas.selection.costs import SelectionProblem

    metric = read_meta(store.dir).get("primary_metric")
    problem = SelectionProblem.from_dict(json.loads(store.problem.read_text()))
    if metric not in problem.metrics:
        return None
    return lambda choices: problem.costs(problem.indices(choices))[metric]


def primary_profile(spec, store, parent):
    """The profile of the front's primary metric, as the students stage measures with."""
    from nas.pareto import read_meta
    from nas.selection_stage import job_profiles, phase_profiles
    from nas.stage_io import Selection

    by_metric = phase_profiles(job_profiles(spec, store, parent, report=lambda m: None))
    return Selection(0, read_meta(store.dir).get("primary_metric"), by_metric).primary_profile


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {
        "front": ("o-", "C0"),
        "uniform-width": ("s", "C1"),
        "drop-last": ("v", "C2"),
        "amoeba-dp": ("^", "C3"),
        "greedy": ("D", "C4"),
        "random": ("x", "C7"),
    }
    for strategy, (marker, color) in styles.items():
        pts = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["latency_ms"])
        if pts:
            ax.plot(
                [r["latency_ms"] for r in pts],
                [max(r["kl"], 1e-4) for r in pts],
                marker,
                color=color,
                label=strategy,
                markersize=6,
                zorder=3 if strategy == "front" else 2,
                alpha=1.0 if strategy == "front" else 0.8,
            )
    parent = next(r for r in rows if r["strategy"] == "parent")
    ax.axvline(parent["latency_ms"], color="k", ls="--", lw=1, label="parent latency")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms, normalised to the parent's median)")
    ax.set_ylabel("KL from the parent (nats/token, log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--group", type=int, default=6, help="students per timing group")
    parser.add_argument("--dp-max-removed", type=int, default=8)
    parser.add_argument("--dp-calib-tokens", type=int, default=512)
    parser.add_argument("--drop", type=int, nargs="+", default=None, help="layers to drop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance", type=float, default=0.03, help="latency slack for the second check"
    )
    parser.add_argument("--name", default="baselines", help="output name under results/bench")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch

    from compress.latency import settings_of
    from compress.student import library_loader
    from nas.baseline_stage import load_job_parent, prepare_data

    t0 = time.perf_counter()
    store = open_job(args.results, args.job)
    spec = store.spec()
    parent = load_job_parent(spec)
    parent.adapter.eval()
    splits = prepare_data(spec, store, parent)
    profile = primary_profile(spec, store, parent)
    settings = settings_of(profile)
    points = collect_points(store, spec, parent, splits, args)
    seq = splits.eval.shape[1]
    ids = splits.eval[: max(1, math.ceil(args.eval_tokens / seq))]
    print(
        f"[baselines] {len(points)} points ({len(set(c for _, _, c in points))} distinct), "
        f"{profile.describe()}, quality on {ids.numel()} eval tokens"
    )
    loader = library_loader(store.library, parent.adapter)
    torch.manual_seed(0)
    measured = measure(
        points,
        parent.adapter,
        loader,
        settings,
        ids,
        args.batch_size,
        args.group,
        key=predicted_latency(store),
    )
    base = measured[(PARENT,) * parent.adapter.num_layers]
    rows = []
    for label, strategy, choices in points:
        m = measured[choices]
        rows.append(
            {
                "label": label,
                "strategy": strategy,
                "latency_ms": m["latency_ms"],
                "raw_ms": m["raw_ms"],
                "speedup": m["speedup"],
                "kl": m["kl"],
                "perplexity": m["perplexity"],
                "ppl_ratio": m["perplexity"] / base["perplexity"],
            }
        )
    wall = time.perf_counter() - t0
    report_all(rows, args, spec, profile, ids.numel(), wall)
    return 0


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def report_all(rows, args, spec, profile, eval_tokens: int, wall: float) -> None:
    dom = domination(rows)
    judged = [d for d in dom if d["kl ratio"] is not None]
    worst = max(judged, key=lambda d: d["kl ratio"]) if judged else None
    outside = [d["baseline"] for d in dom if d["kl ratio"] is None]
    loose = [d for d in domination(rows, args.tolerance) if d["kl ratio"] is not None]
    loose_worst = max(loose, key=lambda d: d["kl ratio"]) if loose else None
    for d, t in zip(dom, domination(rows, args.tolerance), strict=True):
        d[f"kl ratio (+{args.tolerance:.0%} latency)"] = t["kl ratio"]
    acc3 = at_speedup(rows)
    summary = {
        "job": args.job,
        "model": spec.model.source,
        "profile": profile.describe(),
        "eval_tokens": eval_tokens,
        "points": len(rows),
        "baselines_compared": len(judged),
        "baselines_dominated": sum(bool(d["dominated"]) for d in judged),
        "front_dominates_all": bool(judged) and all(d["dominated"] for d in judged),
        "worst_kl_ratio": worst["kl ratio"] if worst else None,
        "worst_baseline": worst["baseline"] if worst else None,
        "faster_than_every_front_point": outside,
        "tolerance": args.tolerance,
        "dominated_within_tolerance": sum(d["kl ratio"] <= 1.0 for d in loose),
        "worst_kl_ratio_within_tolerance": loose_worst["kl ratio"] if loose_worst else None,
        **{f"acc3_{k}": v for k, v in acc3.items()},
        "dp_max_removed": args.dp_removed,
        "dp_calib_tokens": args.dp_calib_tokens,
        "wall_s": wall,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    write_table(
        f"{args.name}_domination",
        [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()} for d in dom],
        f"Front vs. each baseline ({args.job}): lowest-KL front point no slower",
    )
    png = OUT / f"{args.name}.png"
    model = Path(spec.model.source).name
    plot(rows, png, f"{model}: front vs. baselines\n{profile.describe()}")
    notes = [
        f"Job `{args.job}` ({spec.model.source}); latency: {profile.describe()}, whole students, "
        f"timed in groups of {args.group} with the parent in each group (interleaved repeats); "
        "`latency_ms` = parent median over all groups / speedup, `raw_ms` = the point's own "
        f"median; quality on the first {eval_tokens} tokens of the eval split. AmoebaLLM DP: "
        f"max_removed={args.dp_removed}, {args.dp_calib_tokens} calibration tokens. "
        f"Wall time {wall:.0f}s. Plot: `results/bench/{png.name}`. "
        f"Command: `python bench/baselines.py --job {args.job}`.",
        "",
        f"**Acceptance 2** (front dominates every baseline): {summary['baselines_dominated']}/"
        f"{len(judged)} baselines dominated; worst KL ratio (front/baseline) "
        f"{_fmt(summary['worst_kl_ratio'])} ({summary['worst_baseline']}); "
        f"dominates all: {summary['front_dominates_all']}."
        + (
            f" Faster than every front point (not comparable): {', '.join(outside)}."
            if outside
            else ""
        ),
        "",
        f"**Acceptance 3** (perplexity ratio at 1.5x speedup): interpolated "
        f"{_fmt(acc3['interpolated_ppl_ratio'])}; closest front point with speedup >= 1.4: "
        f"{acc3['closest_point']} at {_fmt(acc3['closest_speedup'], 2)}x, perplexity ratio "
        f"{_fmt(acc3['closest_ppl_ratio'])}.",
    ]
    write_table(
        args.name,
        [
            {
                "label": r["label"],
                "strategy": r["strategy"],
                "latency ms": round(r["latency_ms"], 3),
                "raw ms": round(r["raw_ms"], 3),
                "speedup": round(r["speedup"], 3),
                "KL": round(r["kl"], 4),
                "perplexity": round(r["perplexity"], 3),
                "ppl ratio": round(r["ppl_ratio"], 3),
            }
            for r in rows
        ],
        f"Front vs. baselines ({spec.model.source}, job {args.job})",
        "\n".join(notes),
    )


if __name__ == "__main__":
    sys.exit(main())

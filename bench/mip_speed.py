"""MIP speed on a synthetic Puzzle-scale library (acceptance 2 of issue 5).

80 layers x (2 attention x 8 FFN) options of a Llama-70B-like model (nas.selection.synthetic):
roofline costs, scores that grow as a variant gets cheaper, layer-dependent sensitivity. Each
scenario sweeps 20 budgets; every solve is real PuLP + CBC (one solver thread), with the count
formulation ``solve_mip`` uses by default and, for comparison, plain binaries. Also reports the
greedy baseline's summed score relative to the MIP optimum at the same budgets.

    python bench/mip_speed.py [--layers 80] [--budgets 20] [--time-limit 10] [--seed 0]
                              [--formulations counts,binaries]

Writes results/bench/mip_speed.csv (one row per solve) and results/bench/mip_speed.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import pandas as pd

from compress.atomic import atomic_write_text
from nas.selection import Infeasible, solve_greedy, solve_mip
from nas.selection.synthetic import llama_problem

OUT = Path(__file__).resolve().parents[1] / "results" / "bench"


def scenarios(problem, count: int):
    parent = problem.parent_indices()

    def ratio(i: int) -> float:  # 0.95 .. 0.30 of the parent
        return 0.95 - 0.65 * i / max(1, count - 1)

    decode = problem.cost(parent, "decode_latency_ms")
    prefill = problem.cost(parent, "prefill_latency_ms")
    memory = problem.cost(parent, "memory_mib")
    return {
        "decode latency": [{"decode_latency_ms": ratio(i) * decode} for i in range(count)],
        "prefill latency": [{"prefill_latency_ms": ratio(i) * prefill} for i in range(count)],
        "decode latency + memory 0.8x": [
            {"decode_latency_ms": ratio(i) * decode, "memory_mib": 0.8 * memory}
            for i in range(count)
        ],
        "decode latency, 3 diverse (k=4)": [
            {"decode_latency_ms": ratio(i) * decode} for i in range(count)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--budgets", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--formulations",
        default="counts,binaries",
        help="counts: integer option counts for layers with equal costs (default of solve_mip); "
        "binaries: one binary per layer and option only",
    )
    args = parser.parse_args()

    problem = llama_problem(args.layers, seed=args.seed)
    options = sum(len(layer.attention) + len(layer.ffn) for layer in problem.layers)
    print(
        f"library: {problem.num_layers} layers x ({len(problem.layers[0].attention)} attention x "
        f"{len(problem.layers[0].ffn)} FFN options) = {options} binaries; CBC, 1 thread, "
        f"time limit {args.time_limit:g} s; {os.cpu_count()} CPUs visible"
    )
    rows = []
    runs = [
        (formulation, name, requests)
        for formulation in args.formulations.split(",")
        for name, requests in scenarios(problem, args.budgets).items()
        if formulation == "counts" or not name.startswith("decode latency, 3")
    ]
    for formulation, scenario, requests in runs:
        name = f"{scenario} [{formulation}]"
        diverse = scenario.startswith("decode latency, 3")
        t_sweep = time.perf_counter()
        for i, budgets in enumerate(requests):
            t0 = time.perf_counter()
            result = solve_mip(
                problem,
                budgets,
                solutions=3 if diverse else 1,
                diversity_layers=4,
                time_limit_s=args.time_limit,
                aggregate=formulation == "counts",
            )
            wall = time.perf_counter() - t0
            row = {
                "scenario": name,
                "formulation": formulation,
                "budget": i,
                **{f"budget_{k}": v for k, v in budgets.items()},
            }
            if isinstance(result, Infeasible):
                rows.append({**row, "status": "infeasible", "wall_s": wall, "solves": 0})
                continue
            greedy = None if diverse else solve_greedy(problem, budgets)
            greedy_score = (
                greedy[0].score
                if greedy is not None and not isinstance(greedy, Infeasible)
                else None
            )
            rows.append(
                {
                    **row,
                    "status": ",".join(s.status for s in result),
                    "solutions": len(result),
                    "wall_s": wall,
                    "worst_solve_s": max(s.solve_s for s in result),
                    "solves": len(result),
                    "mip_score": result[0].score,
                    "greedy_score": greedy_score,
                }
            )
        sweep = time.perf_counter() - t_sweep
        for row in rows:
            if row["scenario"] == name:
                row["sweep_s"] = sweep
    frame = pd.DataFrame(rows)
    summary = []
    for name, part in frame.groupby("scenario", sort=False):
        solved = part[part["status"] != "infeasible"]
        per_solve = solved["worst_solve_s"].tolist()
        gap = (solved["greedy_score"] / solved["mip_score"]).dropna()
        summary.append(
            {
                "scenario": name,
                "budgets": len(part),
                "infeasible": int((part["status"] == "infeasible").sum()),
                "time-limited": int(solved["status"].str.contains("time_limit").sum()),
                "median per budget (s)": statistics.median(part["wall_s"]),
                "worst per budget (s)": max(part["wall_s"]),
                "worst single solve (s)": max(per_solve) if per_solve else float("nan"),
                "sweep (s)": float(part["sweep_s"].iloc[0]),
                "greedy / MIP score (median)": float(gap.median()) if len(gap) else float("nan"),
                "greedy / MIP score (max)": float(gap.max()) if len(gap) else float("nan"),
            }
        )
    table = pd.DataFrame(summary)
    text = table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "mip_speed.csv", frame.to_csv(index=False))
    header = (
        f"# MIP speed: {problem.num_layers} layers x (2 attention x 8 FFN)\n\n"
        f"`python bench/mip_speed.py --layers {args.layers} --budgets {args.budgets} "
        f"--time-limit {args.time_limit:g} --seed {args.seed}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, CBC 1 thread), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
        "\nTimes are wall seconds including PuLP's model write and the CBC process start; "
        "'per budget' of the diverse scenario covers its 3 solves.\n\n"
    )
    atomic_write_text(OUT / "mip_speed.md", header + _markdown(table) + "\n")
    print(f"wrote {OUT / 'mip_speed.csv'} and {OUT / 'mip_speed.md'}")


def _markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

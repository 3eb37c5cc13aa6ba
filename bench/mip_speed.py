"""MIP speed and exactness on synthetic joint-block libraries, CBC and HiGHS side by side.

Libraries (``tests/synthetic.py``'s ``joint_problem``: roofline costs of a Llama-style layer, joint
scores that are not the sum of the subblock scores):

- ``80x16``: 80 layers x 16 joint blocks (2 attention x 8 FFN), a Llama-70B-like shape;
- ``126x256``: 126 layers x 256 joint blocks (16 attention x 16 FFN), 405B-like.

Each (library, solver, formulation) sweeps ``--budgets`` decode-latency budgets from 0.95x to 0.30x
of the parent and records per budget the CPU seconds of the whole ``solve_mip`` call (this process
plus the CBC subprocess; immune to other load on the machine) and the wall seconds. For every
budget the joint optimum of the solvers must agree within 1e-6 relative; the additive model's
choice (optimal for the summed subblock scores) is scored by the joint scores beside it.

    python bench/mip_speed.py [--budgets 20] [--libraries 80x16,126x256] [--time-limit 60]
                              [--solvers highs,cbc] [--formulations binaries,counts]

Writes results/bench/mip_speed_<libraries>.csv (one row per solve) and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the synthetic libraries are a test fixture

from compress.atomic import atomic_write_text  # noqa: E402
from nas.selection import Infeasible, SolveTimeout, solve_mip  # noqa: E402
from tests.synthetic import joint_problem  # noqa: E402

OUT = ROOT / "results" / "bench"
GOALS = {"median": 0.3, "worst": 1.5, "sweep": 6.0}  # CPU seconds, on 80x16
RTOL = 1e-6


def libraries(names: list[str]) -> dict:
    out = {}
    if "80x16" in names:
        out["80x16"] = joint_problem(80)
    if "126x256" in names:
        out["126x256"] = joint_problem(
            126,
            attention=("parent", *(f"kv_heads={k}" for k in range(1, 14)), "linear", "noop"),
            hidden=16384,
            heads=128,
            kv_heads=16,
            intermediate=53248,
            ffn_ratios=tuple(round(1 - i / 14, 4) for i in range(1, 14)),
        )
    return out


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sweep(problem, budgets, solver: str, aggregate: bool, time_limit: float) -> list[dict]:
    rows = []
    for i, budget in enumerate(budgets):
        cpu, wall = _cpu(), time.perf_counter()
        try:
            result = solve_mip(
                problem, budget, solver=solver, aggregate=aggregate, time_limit_s=time_limit
            )
        except SolveTimeout:
            result = None
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        row = {"budget": i, "cpu_s": cpu, "wall_s": wall}
        if result is None:
            rows.append({**row, "status": "no solution in the time limit"})
        elif isinstance(result, Infeasible):
            rows.append({**row, "status": "infeasible"})
        else:
            rows.append({**row, "status": result[0].status, "score": result[0].score})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, default=20)
    parser.add_argument("--libraries", default="80x16", help="80x16 and/or 126x256")
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--solvers", default="highs,cbc")
    parser.add_argument("--formulations", default="binaries,counts")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs visible; {platform.node()}")
    rows = []
    names = args.libraries.split(",")
    for name, (joint, additive) in libraries(names).items():
        parent = joint.cost(joint.parent_indices(), "decode_latency_ms")
        ratios = [0.95 - 0.65 * i / max(1, args.budgets - 1) for i in range(args.budgets)]
        budgets = [{"decode_latency_ms": r * parent} for r in ratios]
        # the additive model's optimum, scored by the joint scores
        plain = [solve_mip(additive, b, time_limit_s=args.time_limit) for b in budgets]
        for solver in args.solvers.split(","):
            for formulation in args.formulations.split(","):
                t0 = _cpu()
                part = sweep(joint, budgets, solver, formulation == "counts", args.time_limit)
                total = _cpu() - t0
                for row, ratio, alt in zip(part, ratios, plain, strict=True):
                    additive_kl = (
                        None if isinstance(alt, Infeasible) else joint.score(alt[0].indices)
                    )
                    rows.append(
                        {
                            "library": name,
                            "solver": solver,
                            "formulation": formulation,
                            "ratio": ratio,
                            "sweep_cpu_s": total,
                            "additive_choice_joint_kl": additive_kl,
                            **row,
                        }
                    )
                print(f"{name} {solver} {formulation}: sweep {total:.2f} CPU s")
    frame = pd.DataFrame(rows)
    best = frame.groupby(["library", "budget"])["score"].transform("min")
    frame["rel_gap"] = (frame["score"] - best) / best.abs().clip(lower=1.0)
    summary = []
    for (name, solver, formulation), part in frame.groupby(
        ["library", "solver", "formulation"], sort=False
    ):
        solved = part[part["status"].isin(["optimal", "time_limit"])]
        summary.append(
            {
                "library": name,
                "solver": solver,
                "formulation": formulation,
                "median CPU s": statistics.median(part["cpu_s"]),
                "worst CPU s": part["cpu_s"].max(),
                "sweep CPU s": float(part["sweep_cpu_s"].iloc[0]),
                "median wall s": statistics.median(part["wall_s"]),
                "not proven": int((part["status"] != "optimal").sum()),
                "max rel. gap": float(solved["rel_gap"].max()),
                "additive/joint KL (median)": float(
                    (solved["additive_choice_joint_kl"] / solved["score"]).median()
                ),
                "additive/joint KL (max)": float(
                    (solved["additive_choice_joint_kl"] / solved["score"]).max()
                ),
            }
        )
    table = pd.DataFrame(summary)
    text = table.to_string(index=False, float_format=lambda v: f"{v:.3g}")
    print(text)
    ok = frame["rel_gap"].dropna().max() <= RTOL
    print(f"every solver within {RTOL:g} relative of the best at every budget: {ok}")
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "mip_speed_" + "_".join(names)
    atomic_write_text(OUT / f"{stem}.csv", frame.to_csv(index=False))
    header = (
        "# MIP speed on synthetic joint-block libraries\n\n"
        f"`python bench/mip_speed.py --budgets {args.budgets} --libraries {args.libraries} "
        f"--solvers {args.solvers} --formulations {args.formulations} "
        f"--time-limit {args.time_limit:g}` on {platform.node()} ({os.cpu_count()} CPUs), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\nCPU seconds of whole "
        f"`solve_mip` calls (model build + solver, CBC's subprocess included). Goals on 80x16: "
        f"median <= {GOALS['median']} s, worst <= {GOALS['worst']} s, sweep <= {GOALS['sweep']} s."
        f"\nAll solutions within {RTOL:g} relative of the best solver's: {ok}.\n\n"
    )
    atomic_write_text(OUT / f"{stem}.md", header + _markdown(table) + "\n")
    print(f"wrote {OUT / stem}.csv and .md")


def _markdown(table: pd.DataFrame) -> str:
    def cell(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

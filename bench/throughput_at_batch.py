"""Decode throughput at batch B: do the students selected for a throughput target reach it?

Takes a job whose spec names a decode profile measured at batch B (``nas profile --phase decode
--batch B``) and ``decode_throughput_tps`` targets, finished through its selection stage. Times the
parent and every puzzle-mip point of the front as whole decode-step graphs at batch B in the
profile's backend (onnxruntime), interleaved in one run with the profile's entries (so the
sum-of-parts prediction is re-measured under the same load), and prints per point: the target
throughput, the predicted and measured throughput (tokens/s = B x 1000 / step ms), the measured
ratio to the parent, and whether the target is reached within the profile's MAPE.

    python bench/throughput_at_batch.py JOB_DIR --profile hwprofiles/...decode-b8-c128.json

Relative targets (``r`` x the parent's throughput) are checked against the measured ratio to the
parent in the same run; absolute ones against the measured throughput. Writes
results/bench/throughput_at_batch.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compress.atomic import atomic_write_text
from compress.latency import measure_all, settings_of
from compress.loading import load_parent
from compress.profile import load_profile
from compress.variants import VariantSpec
from nas.layout import JobLayout
from nas.pareto import read_front, read_meta

OUT = Path(__file__).resolve().parents[1] / "results" / "bench"


def _target(label: str) -> float | None:
    for part in label.split(" & "):
        if part.split(">=")[0] in ("decode_throughput_tps", "throughput_tps") and ">=" in part:
            return float(part.split(">=")[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path)
    parser.add_argument("--profile", type=Path, required=True, help="the job's decode profile")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    if profile.phase != "decode":
        raise SystemExit(f"{args.profile} is a {profile.phase} profile; give the decode one")
    spec = JobLayout(args.job).manifest()["spec"]
    relative = {t["metric"]: t.get("relative", True) for t in spec["targets"] if t.get("metric")}
    front = read_front(args.job)
    meta = read_meta(args.job)
    points = front[front["strategy"] == "puzzle-mip"].reset_index(drop=True)
    parent = load_parent(spec["model"]["source"])
    model = parent.adapter
    parent_choice = [["attention:parent", "ffn:parent"]] * model.shape.num_layers
    students = [parent_choice] + [list(map(list, c)) for c in points["choices"]]
    variants = [VariantSpec.parse(k) for k in profile.entries]
    t0 = time.perf_counter()
    measured = measure_all(model, variants, settings_of(profile), students)
    batch = profile.batch
    mape = profile.validation.mape if profile.validation else float("nan")

    def tps(ms: float) -> float:
        return batch * 1000.0 / ms

    def predicted_ms(choice) -> float:
        return measured.fixed.median_ms + sum(
            measured.entries[v].median_ms for pair in choice for v in pair
        )

    parent_ms = measured.students[0].median_ms
    rows = [
        "| point | target | predicted tok/s | measured tok/s | measured / parent | reached "
        f"(within MAPE {mape:.1f} %) |",
        "|---|---|---|---|---|---|",
        f"| parent | | {tps(predicted_ms(parent_choice)):.0f} | {tps(parent_ms):.0f} | 1.00 | |",
    ]
    rel = relative.get("decode_throughput_tps", relative.get("throughput_tps", True))
    reached_all = True
    for i, point in points.iterrows():
        target = _target(point["target"])
        ms = measured.students[i + 1].median_ms
        ratio = parent_ms / ms
        if target is None:
            continue
        if rel:  # the target value is r x the parent's profile throughput
            want = target / tps(profile.predict_ms(parent_choice))
            got, shown = ratio, f"{want:.2f}x parent ({target:.0f} tok/s)"
        else:
            want, got, shown = target, tps(ms), f"{target:.0f} tok/s"
        reached = got >= want * (1 - mape / 100)
        reached_all &= reached
        rows.append(
            f"| {point['point_id']} | {shown} | {tps(predicted_ms(point['choices'])):.0f} | "
            f"{tps(ms):.0f} | {ratio:.2f} | {'yes' if reached else 'NO'} |"
        )
    header = (
        f"# Decode throughput at batch {batch}\n\n`python bench/throughput_at_batch.py "
        f"{args.job} --profile {args.profile}` at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f": {profile.describe()}, {measured.rounds} interleaved rounds in "
        f"{time.perf_counter() - t0:.0f} s; job targets {', '.join(meta['targets'])}. Predicted ="
        " the profile's sum of parts re-measured in the same run.\n\n"
    )
    text = header + "\n".join(rows) + f"\n\nevery target reached: {reached_all}\n"
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT / "throughput_at_batch.md", text)


if __name__ == "__main__":
    main()

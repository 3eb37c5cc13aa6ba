"""Predictor error of a hardware profile: sum of measured subblock entries + fixed cost vs whole
random students, measured on the same backend with the same settings (interleaved).

Default: smollm2-135m, onnxruntime-cpu, batch 1, prefill 256 tokens, 8 random students, and the
result is stored in hwprofiles/onnxruntime-cpu__smollm2-135m__prefill-b1-s256.json. With
``--report-only`` it prints the committed profiles' numbers without measuring. Also prints the
committed decode profile's KV-head and noop entries. Writes results/bench/profile_mape.{csv,md}.

    python bench/profile_mape.py [--report-only] [--students 8] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.profile import load_profile  # noqa: E402

PROFILE = ROOT / "hwprofiles" / "onnxruntime-cpu__smollm2-135m__prefill-b1-s256.json"
DECODE = ROOT / "hwprofiles" / "onnxruntime-cpu__smollm2-135m__decode-b1-c512.json"
OUT = ROOT / "results" / "bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report-only", action="store_true", help="print the committed numbers")
    ap.add_argument("--students", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        help="onnxruntime threads (default: the committed profile's, so that regenerating it "
        "keeps the settings the shipped specs were searched with)",
    )
    ap.add_argument("--profile", type=Path, default=PROFILE)
    args = ap.parse_args()

    if not args.report_only:
        from compress.latency_backends import MeasureSettings
        from compress.profile_cli import ProfileRequest, measure_profile_file

        if args.threads is None and args.profile.exists():
            args.threads = load_profile(args.profile).threads

        settings = MeasureSettings(phase="prefill", batch=1, seq=256, threads=args.threads)
        request = ProfileRequest(
            "smollm2-135m", args.profile, settings, students=args.students, seed=args.seed
        )
        measure_profile_file(request)
    prof = load_profile(args.profile)
    val = prof.validation
    rows = []
    print(f"profile {args.profile.name}: {prof.describe()}, {prof.device}, threads {prof.threads}")
    print(f"fixed (embeddings + norm + head) {prof.fixed_ms:.2f} ms; {prof.repeats} rounds")
    print(
        f"{'student':>7} {'attn kinds':>28} {'predicted ms':>13} {'measured ms':>12} {'APE %':>7}"
    )
    for i, s in enumerate(val.students):
        kinds = "/".join(
            f"{sum(1 for a, _ in s.choices if a.endswith(t))}{t[:2]}"
            for t in ("parent", "kv_heads=1", "linear", "noop")
        )
        print(f"{i:>7} {kinds:>28} {s.predicted_ms:>13.2f} {s.measured_ms:>12.2f} {s.ape:>7.2f}")
        rows.append(
            {
                "student": i,
                "predicted_ms": s.predicted_ms,
                "measured_ms": s.measured_ms,
                "ape_pct": s.ape,
            }
        )
    paired = "n/a" if val.paired_mape is None else f"{val.paired_mape:.2f} %"
    print(
        f"MAPE {val.mape:.2f} % (max {val.max_ape:.2f} %) over {len(val.students)} students "
        f"[target <= 10 %, goal 5 %]; same-round paired MAPE {paired}"
    )

    decode_lines = []
    if DECODE.exists():
        dec = load_profile(DECODE)
        parent = dec.cost_ms("attention:parent")
        decode_lines.append(f"decode profile {DECODE.name} (MAPE {dec.validation.mape:.2f} %):")
        for key in sorted(dec.entries):
            t = dec.entries[key]
            rel = t.median_ms / parent if key.startswith("attention") else None
            decode_lines.append(
                f"  {key:<24} {t.median_ms:8.4f} ms  [p10 {t.p10_ms:.4f}, p90 {t.p90_ms:.4f}]"
                + (f"  {rel:.2f}x parent attention" if rel is not None else "")
            )
        print("\n".join(decode_lines))

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "profile_mape.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md = [
        f"# Profile predictor error ({prof.describe()})",
        "",
        f"Device: {prof.device}; {prof.backend_version}; threads {prof.threads}; "
        f"measured {prof.created} on a shared machine (noisy).",
        "",
        "| student | predicted ms | measured ms | APE % |",
        "|---:|---:|---:|---:|",
        *[
            f"| {r['student']} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | "
            f"{r['ape_pct']:.2f} |"
            for r in rows
        ],
        "",
        f"**MAPE {val.mape:.2f} %** (max {val.max_ape:.2f} %); same-round paired MAPE {paired}",
        "",
        "```",
        *decode_lines,
        "```",
        "",
    ]
    (OUT / "profile_mape.md").write_text("\n".join(md))
    return 0 if val.mape <= 10.0 else 1


if __name__ == "__main__":
    sys.exit(main())

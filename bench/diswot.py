"""DisWOT check: does the training-free proxy of untrained FFN variants rank them like BLD + KL?

For each model, every FFN variant (reduced widths and linear) of the chosen layers is
1. scored by the DisWOT proxy untrained (calibration-initialised, swapped into the parent alone),
2. trained with BLD (``compress.bld.train_variant`` on captured parent activations), and
3. scored by replace-one-block KL on the eval split after BLD.
Reported: Kendall tau-b between the proxy score and -KL (1 = same order), pooled over all
variants and the mean within layers; the same for the untrained variant's own KL as a reference
proxy; and the wall time of the proxy vs. BLD for the same variants.

    python bench/diswot.py [--models stories260K smollm2-135m] [--threads 1]

Writes results/bench/diswot.csv (one row per variant) and results/bench/diswot.md.
Timings are wall clock on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.bld import BLDConfig, train_variant  # noqa: E402
from compress.builders import build_variant  # noqa: E402
from compress.capture import Activations, capture  # noqa: E402
from compress.data import text_calibration  # noqa: E402
from compress.diswot import calibration_rows, rank_variants, subblock_init  # noqa: E402
from compress.loading import load_parent  # noqa: E402
from compress.scoring import ActivationCache, score_replacement  # noqa: E402
from compress.variants import parse_space  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TEXT = DATA / "text" / "tinystories_val_1000.txt"
SETUPS = {
    # source, layers (None = all), seq_len, BLD train tokens, eval tokens
    "stories260K": (str(DATA / "models" / "stories260K"), None, 128, 16384, 8192),
    "smollm2-135m": ("smollm2-135m", [1, 10, 20, 28], 128, 8192, 2048),
}
PROXY_POSITIONS = 256  # DisWOT samples (token positions) of the probe batch
INIT_TOKENS = 2048  # tokens that initialise each variant (proxy and BLD alike)
FFN_SPACE = [0.75, 0.5, 0.25, "linear"]


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list handled); NaN for fewer than 2 points."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx * dy > 0:
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else float("nan")


def run_model(name: str, work: Path) -> tuple[list[dict], dict]:
    source, layers, seq_len, bld_tokens, eval_tokens = SETUPS[name]
    t0 = time.perf_counter()
    parent = load_parent(source)
    adapter = parent.adapter
    load_s = time.perf_counter() - t0
    splits = text_calibration(parent.tokenizer, [TEXT], seq_len, bld_tokens, eval_tokens, seed=0)
    layers = list(range(adapter.num_layers)) if layers is None else layers
    _, ffn = parse_space([], FFN_SPACE, adapter.shape)
    variants = [v for v in ffn if v.trainable]
    print(f"[{name}] loaded in {load_s:.1f}s; {len(layers)} layers x {len(variants)} FFN variants")

    # 1. DisWOT proxy, untrained (includes the parent pass over the calibration batch)
    t0 = time.perf_counter()
    probe_rows, init_rows = calibration_rows(
        splits.train.shape[0], seq_len, PROXY_POSITIONS, INIT_TOKENS
    )
    calib = splits.train[: init_rows.stop]
    proxies = rank_variants(
        adapter, variants, calib, layers, max_positions=PROXY_POSITIONS, init_tokens=INIT_TOKENS
    )
    proxy_s = time.perf_counter() - t0
    print(f"[{name}] DisWOT proxy: {proxy_s:.1f}s")

    # 2. BLD (capture of the parent's activations + training of every variant)
    t0 = time.perf_counter()
    n_held = max(1, 2048 // seq_len)
    train_dir, held_dir = work / f"{name}-train", work / f"{name}-held"
    capture(adapter, splits.train, train_dir, batch_size=8)
    capture(adapter, splits.eval[:n_held], held_dir, batch_size=8)
    capture_s = time.perf_counter() - t0
    train, held = Activations(train_dir), Activations(held_dir)
    config = BLDConfig(tokens=bld_tokens, batch_size=8, lr=3e-3, init_tokens=INIT_TOKENS)
    trained, bld_train_s = {}, 0.0
    for layer in layers:
        for spec in variants:
            module, record = train_variant(spec, layer, adapter.ffn(layer), train, held, config)
            trained[(layer, spec)] = (module, record)
            bld_train_s += record["seconds"]
    bld_s = capture_s + bld_train_s
    print(f"[{name}] BLD: capture {capture_s:.1f}s + training {bld_train_s:.1f}s")

    # 3. replace-one-block KL on the eval split, after BLD and (reference) untrained
    cache = ActivationCache.build(adapter, splits.eval, batch_size=8)
    init_cache = ActivationCache.build(adapter, calib, batch_size=8)
    rows = []
    for proxy in proxies:
        layer, spec = proxy.layer, proxy.variant
        module, record = trained[(layer, spec)]
        after = score_replacement(adapter, cache, layer, "ffn", module)
        inputs = init_cache.layer_input(layer, init_rows.start, init_rows.stop)
        init = subblock_init(adapter, layer, "ffn", inputs)
        untrained = build_variant(spec, adapter.ffn(layer), init)
        before = score_replacement(adapter, cache, layer, "ffn", untrained)
        rows.append(
            {
                "model": name,
                "layer": layer,
                "variant": str(spec),
                "diswot": proxy.score,
                "relation": proxy.relation,
                "semantic": proxy.semantic,
                "proxy_s": proxy.seconds,
                "kl_untrained": before.kl,
                "kl_after_bld": after.kl,
                "nmse_init": record["nmse_init"],
                "nmse_final": record["nmse_final"],
                "bld_s": record["seconds"],
            }
        )
    summary = {
        "model": name,
        "layers": len(layers),
        "variants": len(rows),
        "tau_diswot_pooled": kendall_tau_b(
            [r["diswot"] for r in rows], [-r["kl_after_bld"] for r in rows]
        ),
        "tau_diswot_within_layer": _within(rows, "diswot"),
        "tau_untrained_kl_pooled": kendall_tau_b(
            [-r["kl_untrained"] for r in rows], [-r["kl_after_bld"] for r in rows]
        ),
        "tau_untrained_kl_within_layer": _within(rows, "kl_untrained", negate=True),
        "proxy_s": proxy_s,
        "bld_s": bld_s,
        "bld_train_s": bld_train_s,
        "speedup": bld_s / proxy_s,
    }
    return rows, summary


def _within(rows: list[dict], key: str, negate: bool = False) -> float:
    taus = []
    for layer in sorted({r["layer"] for r in rows}):
        sub = [r for r in rows if r["layer"] == layer]
        x = [(-r[key] if negate else r[key]) for r in sub]
        taus.append(kendall_tau_b(x, [-r["kl_after_bld"] for r in sub]))
    return sum(taus) / len(taus)


def _markdown(frame, floatfmt: str) -> str:
    """A GitHub table (no tabulate dependency)."""
    cells = [
        [floatfmt.format(v) if isinstance(v, float) else str(v) for v in row]
        for row in frame.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pandas as pd

    work = Path(tempfile.mkdtemp(prefix="bench-diswot-"))
    all_rows, summaries = [], []
    try:
        for name in args.models:
            rows, summary = run_model(name, work)
            all_rows += rows
            summaries.append(summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(all_rows)
    frame.to_csv(out / "diswot.csv", index=False)
    table = pd.DataFrame(summaries)
    md = [
        "# DisWOT proxy vs. replace-one-block KL after BLD (FFN variants)",
        "",
        f"torch threads: {args.threads}; wall times are noisy (shared machine).",
        "tau: Kendall tau-b between the proxy and -KL after BLD (1 = same ranking).",
        "",
        _markdown(table, "{:.3f}"),
        "",
        "## Per variant",
        "",
        _markdown(frame, "{:.4g}"),
        "",
    ]
    (out / "diswot.md").write_text("\n".join(md))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out / 'diswot.csv'} and {out / 'diswot.md'}")


if __name__ == "__main__":
    main()

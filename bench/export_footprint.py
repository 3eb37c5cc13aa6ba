"""Disk footprint of a job's exports: each ONNX folder's graph bytes against the student's
fp32 weight bytes (issue 13, acceptance 3: at most 1.15x), and the job folder by part.

The fp32 weight bytes come from the student's per-layer choices (``nas_export.json``) and the
parent's shape (``compress.variants.VariantSpec.params``: every distinct tensor once, tied
embeddings once). Graph bytes: ``model.onnx`` plus its external data, if any.

    python bench/export_footprint.py --job JOB [--results results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.layout import JobLayout  # noqa: E402


def weight_bytes(shape, choices) -> int:
    """fp32 bytes of a student with ``choices`` ([attention, ffn] per layer) of ``shape``."""
    from compress.variants import VariantSpec

    params = shape.vocab_size * shape.hidden_size * (1 if shape.tied_embeddings else 2)
    params += shape.hidden_size  # final norm
    for pair in choices:
        params += sum(VariantSpec.parse(text).params(shape) for text in pair)
    return 4 * params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True)
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    from nas.clean import folder_bytes

    job = Path(args.results) / args.job
    shape = _shape_of(job)
    rows = []
    exports = JobLayout(job).exports_of_points("onnx*")
    for marker in (f / "nas_export.json" for f in exports if (f / "nas_export.json").is_file()):
        record = json.loads(marker.read_text())
        layout = json.loads((marker.parent / "export.json").read_text())
        graph = sum(p.stat().st_size for p in marker.parent.glob(f"{layout['decode']}*"))
        weights = weight_bytes(shape, record["choices"]) // (2 if "16" in layout["dtype"] else 1)
        rows.append((marker.parent.relative_to(job), layout["dtype"], graph, weights))
    print("| export | dtype | graph MB | weights MB (in that dtype) | ratio |")
    print("|:--|:--|--:|--:|--:|")
    for folder, dtype, graph, weights in rows:
        print(
            f"| {folder} | {dtype} | {graph / 1e6:.3f} | {weights / 1e6:.3f} | {graph / weights:.3f} |"
        )
    print()
    parts = sorted(
        ((p.name, folder_bytes(p) if p.is_dir() else p.stat().st_size) for p in job.iterdir()),
        key=lambda item: -item[1],
    )
    total = folder_bytes(job)
    print(
        f"job {args.job}: {total / 1e6:.1f} MB; "
        + ", ".join(f"{name} {size / 1e6:.1f}" for name, size in parts if size > 0.01 * total)
    )
    return 0


def _shape_of(job: Path):
    """The parent's shape (loads the job's parent)."""
    from compress.loading import load_parent

    spec = JobLayout(job).spec()
    return load_parent(spec.model.source).shape


if __name__ == "__main__":
    sys.exit(main())

"""Which change of the recipe buys how much general-text quality (issue 12): run one job per
recipe, then time and measure all their students side by side (``bench/general_quality.py``).

The full recipe is a spec file (default ``bench/specs/ablation_tiny.yaml``: calibration mix of
stories, public-domain books and generated text; twice the BLD tokens; GKD on the mix). The
recipes derived from it, each one job ``abl-<recipe>`` (resumed when it exists):

- ``stories``: calibration on the spec's stories source only, base BLD tokens, GKD on stories;
- ``mix``: the spec's calibration mix, base BLD tokens (half the spec's), GKD on the mix;
- ``mix-bld2``: the spec as written (mix, twice the BLD tokens, GKD on the mix).

``--before-gkd`` of ``general_quality.py`` adds each point before its GKD, so the table has
every recipe without and with GKD. Cut from this ablation: separate data for scoring, rerank
and GKD (all stages read the job's one calibration split), and GKD on generated text only.

    python bench/general_ablation.py [--spec bench/specs/ablation_tiny.yaml] [--results results]
        [--seq 256] [--repeats 20] [--only RECIPE ...] [--jobs-only]

Writes the jobs under RESULTS and results/bench/general_ablation.md (+ _best.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # nas.layout when run as a script
RECIPES = ("stories", "mix", "mix-bld2")


def recipe_spec(base: dict, recipe: str) -> dict:
    """The spec of one recipe, derived from the full recipe ``base`` (paths already absolute)."""
    spec = json.loads(json.dumps(base))
    spec["name"] = f"abl-{recipe}"
    if recipe in ("stories", "mix"):
        spec["bld"]["tokens"] = base["bld"]["tokens"] // 2
    if recipe == "stories":
        stories = [s for s in base["data"]["sources"] if "tinystories" in str(s.get("files"))]
        spec["data"]["sources"] = [{**stories[0], "weight": 1.0}]
    return spec


def _absolute(spec: dict, folder: Path) -> dict:
    def fix(path: str) -> str:
        return str((folder / path).resolve()) if not Path(path).is_absolute() else path

    spec["model"]["source"] = fix(spec["model"]["source"])
    for section in (spec["data"]["sources"], spec.get("eval", {}).get("sets", [])):
        for source in section:
            if "files" in source:
                source["files"] = [fix(f) for f in source["files"]]
    spec["hardware"]["profiles"] = [fix(p) for p in spec["hardware"].get("profiles", [])]
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "bench" / "specs" / "ablation_tiny.yaml"))
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--only", nargs="*", choices=RECIPES, default=list(RECIPES))
    ap.add_argument("--jobs-only", action="store_true", help="run the jobs, not the bench")
    args = ap.parse_args(argv)
    spec_path = Path(args.spec)
    base = _absolute(yaml.safe_load(spec_path.read_text()), spec_path.parent)
    folder = Path(args.results) / "ablation-specs"
    folder.mkdir(parents=True, exist_ok=True)
    from nas.layout import JobLayout

    jobs = []
    for recipe in args.only:
        path = folder / f"{recipe}.yaml"
        path.write_text(yaml.safe_dump(recipe_spec(base, recipe), sort_keys=False))
        job = f"abl-{recipe}"
        done = JobLayout(Path(args.results) / job).manifest_path
        if done.exists() and json.loads(done.read_text()).get("state") == "finished":
            print(f"[ablation] {job} finished before", flush=True)
        else:
            verb = ["resume", job] if done.exists() else ["run", str(path), "--job-id", job]
            print(f"[ablation] {' '.join(verb)}", flush=True)
            code = subprocess.call(
                [sys.executable, "-m", "nas.cli", *verb, "--results", args.results], cwd=ROOT
            )
            if code != 0:
                print(f"error: job {job} failed (exit {code})", file=sys.stderr)
                return 1
        jobs += ["--job", f"{recipe}={job}"]
    if args.jobs_only:
        return 0
    return subprocess.call(
        [
            sys.executable,
            str(ROOT / "bench" / "general_quality.py"),
            *jobs,
            "--before-gkd",
            "--results",
            args.results,
            "--seq",
            str(args.seq),
            "--repeats",
            str(args.repeats),
            "--name",
            "general_ablation",
        ],
        cwd=ROOT,
    )


if __name__ == "__main__":
    sys.exit(main())

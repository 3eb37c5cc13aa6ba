"""The built wheel on its own: built from the checkout, installed (not editable) into a fresh
virtual environment, and run from outside the repository on the tiny spec with every strategy.

The fresh environment borrows this interpreter's installed dependencies through a plain path
``.pth`` (``.pth`` files inside those folders are not processed, so an editable install of the
project there stays invisible); the test checks that ``nas`` is not importable before the wheel
is installed, and that afterwards it is imported from the new environment.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

from nas.spec import StrategySection
from tests.conftest import ROOT, STORIES, TINYSTORIES, need_shared_data

STRATEGIES = list(StrategySection.model_fields["names"].annotation.__args__[0].__args__)


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _fresh_env(path: Path) -> Path:
    """A new venv (no pip, no site-packages of its own) that sees this interpreter's
    dependencies as plain paths; returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], path)
    here = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()}
    Path(purelib.strip(), "borrowed_dependencies.pth").write_text(
        "\n".join(sorted(p for p in here if Path(p).is_dir())) + "\n"
    )
    return python


def _tiny_spec(work: Path) -> Path:
    """The shipped tiny spec (as ``nas init`` wrote it) with every strategy, a smaller space,
    fewer tokens, and absolute paths to the shared model and text (the profiles stay ``../hwprofiles/...``)."""
    spec = yaml.safe_load((work / "search_spaces" / "tiny.yaml").read_text())
    spec["name"] = "wheel"
    spec["model"]["source"] = str(STORIES)
    spec["data"].update(files=[str(TINYSTORIES)], train_tokens=4096, eval_tokens=1024)
    spec["space"] = {"attention": ["parent", "kv_heads=1", "noop"], "ffn": ["parent", 0.5, "noop"]}
    spec["bld"]["tokens"] = 2048
    spec["targets"][0]["values"] = [0.8, 0.5]
    spec["strategy"].update(names=STRATEGIES, solutions_per_budget=1, trials=2)
    spec["export"] = {"points": "none"}
    path = work / "search_spaces" / "wheel.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_wheel_installs_and_runs_every_strategy_outside_the_repo(tmp_path):
    need_shared_data()
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT], tmp_path)
    (wheel,) = wheels.glob("nas_llm-*.whl")
    python = _fresh_env(tmp_path / "env")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    missing = subprocess.run([python, "-c", "import nas"], cwd=work, env=env, capture_output=True)
    assert missing.returncode != 0, "the project is importable before its wheel is installed"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    _run([*pip, "--no-index", wheel], work, env)
    where = _run([python, "-c", "import nas; print(nas.__file__)"], work, env)
    assert str(tmp_path / "env") in where, where

    _run([python.parent / "nas", "init", "."], work, env)
    spec = _tiny_spec(work)
    log = _run(
        [python.parent / "nas", "run", spec, "--job-id", "w", "--results", work / "results"],
        work,
        env,
    )
    job = work / "results" / "w"
    assert json.loads((job / "manifest.json").read_text())["state"] == "finished", log[-2000:]
    assert json.loads((job / "stages" / "selection.json").read_text())["strategies"] == STRATEGIES
    front = json.loads((job / "pareto" / "front.json").read_text())
    assert "puzzle-mip" in {p["strategy"] for p in front}
    for name in STRATEGIES[1:]:  # the strategies without budgets proposed their points
        assert f"[selection] {name}: " in log, (name, log[-2000:])


def test_init_writes_the_shipped_files_and_refuses_to_overwrite(tmp_path):
    from nas import api

    written = api.init_folder(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert "search_spaces/tiny.yaml" in names and "search_spaces/quickstart.yaml" in names
    assert any(n.startswith("hwprofiles/") and n.endswith(".json") for n in names)
    again = subprocess.run(
        [sys.executable, "-m", "nas.cli", "init", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert api.init_folder(tmp_path, force=True) == written

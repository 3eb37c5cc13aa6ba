import json
import subprocess
import sys

import pytest

from nas.errors import JobError, SpecError
from nas.layout import JobLayout
from nas.spec import load_spec, parse_spec
from nas.store import JobStore, validate_job_id
from tests.conftest import QUICKSTART_SPEC, ROOT, TINY_SPEC, need_shared_data


def nas(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "nas.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_lists_commands():
    out = nas("--help")
    assert out.returncode == 0
    for command in ("validate", "run", "resume", "jobs"):
        assert command in out.stdout


@pytest.mark.parametrize(
    "spec", [QUICKSTART_SPEC, TINY_SPEC, QUICKSTART_SPEC.with_name("quality.yaml")]
)
def test_shipped_specs_validate(spec):
    need_shared_data()
    out = nas("validate", spec)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "body, needle",
    [
        ("model:\n  source: smollm2-135m\n  colour: red\n", "unknown key 'model.colour'"),
        ("bld:\n  tokens: lots\n", "'bld.tokens'"),
        ("model:\n  source: ./no/such/model\n", "no/such/model does not exist"),
        ("data:\n  source: text\n  files: [missing.txt]\n", "missing.txt does not exist"),
        ("model: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_specs_fail_in_one_line(tmp_path, body, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(body)
    out = nas("validate", path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_missing_spec_file_is_one_line(tmp_path):
    out = nas("validate", tmp_path / "nope.yaml")
    assert out.returncode != 0 and "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_relative_paths_resolve_against_spec_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.txt").write_text("hello")
    spec = parse_spec({"data": {"source": "text", "files": ["t.txt"]}}, base_dir=tmp_path / "sub")
    assert spec.data.sources[0].kind == "files"  # the old keys still work: one files source
    assert spec.data.sources[0].files == [str((tmp_path / "sub" / "t.txt").resolve())]
    with pytest.raises(SpecError, match="unknown key 'space.ffn_widths'"):
        parse_spec({"space": {"ffn_widths": [1]}})


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "a\\b", ".hidden"])
def test_job_ids_with_paths_are_refused(bad):
    with pytest.raises(JobError):
        validate_job_id(bad)


def test_run_tiny_writes_manifest_and_baseline(tmp_path):
    need_shared_data()
    out = nas("run", TINY_SPEC, "--job-id", "base1", "--results", tmp_path, "--until", "baseline")
    assert out.returncode == 0, out.stderr
    manifest = JobLayout(tmp_path / "base1").manifest()
    assert manifest["job_id"] == "base1" and "baseline" in manifest["stages_done"]
    baseline = json.loads((tmp_path / "base1" / "stages" / "baseline.json").read_text())
    assert baseline["tokens"] > 0 and 1.0 < baseline["loss"] < 3.0
    assert baseline["perplexity"] > 1 and baseline["wall_s"] >= 0
    refused = nas("run", TINY_SPEC, "--job-id", "../escape", "--results", tmp_path)
    assert refused.returncode != 0 and "invalid job id" in refused.stderr
    assert not (tmp_path.parent / "escape").exists()
    store = JobStore.open(tmp_path, "base1")
    assert store.stage_done("baseline")
    assert load_spec(TINY_SPEC).name == "tiny"

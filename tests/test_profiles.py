"""Hardware profiles: measurement on a real onnxruntime session, schema round trip, refusals,
and the committed profiles in hwprofiles/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from compress.latency_backends import MeasureSettings
from compress.profile import (
    SCHEMA_VERSION,
    HardwareProfile,
    ProfileCoverageError,
    ProfileError,
    check_covers,
    load_profile,
    save_profile,
)
from compress.profile_cli import ProfileRequest
from compress.shape import ModelShape
from tests.conftest import ROOT, STORIES, TINY_SPEC, need_shared_data

HWPROFILES = ROOT / "hwprofiles"
FAST = dict(repeats=3, students=2, stack=2)
VARIANTS = ["attention:kv_heads=1", "attention:noop", "ffn:width=86", "ffn:noop"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """`nas profile` (its library function) on stories260K, prefill, written to a file."""
    need_shared_data()
    from nas import api

    out = tmp_path_factory.mktemp("prof") / "p.json"
    settings = MeasureSettings(
        phase="prefill",
        batch=1,
        seq=16,
        threads=1,
        stack=FAST["stack"],
        repeats=FAST["repeats"],
        min_block_ms=2.0,
    )
    request = ProfileRequest(
        str(STORIES), out, settings, tuple(VARIANTS), students=FAST["students"]
    )
    prof = api.profile(request, report=lambda m: None)
    return prof, out


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_profile_written_reads_back_equal(measured):
    prof, out = measured
    assert load_profile(out) == prof
    assert set(prof.entries) == {"attention:parent", "ffn:parent", *VARIANTS}
    assert prof.backend == "onnxruntime-cpu" and prof.threads == 1 and prof.seq == 16
    assert prof.fixed_ms > 0 and prof.entries["attention:parent"].median_ms > 0
    assert len(prof.validation.students) == 2 and prof.validation.mape >= 0
    # prediction is the sum of the chosen entries plus the fixed cost
    choice = [["attention:parent", "ffn:noop"]] * prof.shape.num_layers
    expect = prof.fixed_ms + prof.shape.num_layers * (
        prof.cost_ms("attention:parent") + prof.cost_ms("ffn:noop")
    )
    assert prof.predict_ms(choice) == pytest.approx(expect)
    assert HardwareProfile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof


def test_missing_variant_refused_in_one_line(measured):
    prof, _ = measured
    check_covers(prof, prof.shape, VARIANTS)
    with pytest.raises(ProfileCoverageError) as err:
        check_covers(prof, prof.shape, [*VARIANTS, "attention:linear"])
    assert "attention:linear" in _one_line(err.value)


def test_other_model_shape_refused(measured):
    prof, _ = measured
    other = ModelShape.from_dict({**prof.shape.to_dict(), "num_layers": 30})
    with pytest.raises(ProfileCoverageError) as err:
        check_covers(prof, other, VARIANTS)
    assert prof.shape.key in _one_line(err.value) and other.key in str(err.value)


def test_wrong_version_and_corrupt_files_refused(measured, tmp_path):
    prof, _ = measured
    data = prof.to_dict()
    (tmp_path / "v.json").write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ProfileError, match="schema_version") as err:
        load_profile(tmp_path / "v.json")
    _one_line(err.value)
    (tmp_path / "c.json").write_text(json.dumps(data)[:-20])
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(tmp_path / "c.json")
    del data["fixed"]
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="fixed"):
        load_profile(tmp_path / "m.json")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "absent.json")


def test_ensure_profile_measures_only_missing(measured, stories_parent, tmp_path):
    from compress.latency import ensure_profile, settings_of
    from compress.variants import VariantSpec

    prof, _ = measured
    path = save_profile(prof, tmp_path / "p.json")
    wanted = [VariantSpec.parse(v) for v in [*VARIANTS, "ffn:linear"]]
    s = settings_of(prof, repeats=3, min_block_ms=2.0)
    done = ensure_profile(path, stories_parent.adapter, wanted, s, report=lambda m: None)
    assert "ffn:linear" in done.entries and done.entries["ffn:linear"].median_ms >= 0
    assert {k: v for k, v in done.entries.items() if k != "ffn:linear"} == prof.entries
    assert load_profile(path) == done


def test_cli_profile_and_refusals(measured, tmp_path):
    prof, out = measured
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**prof.to_dict(), "schema_version": 0}))
    proc = subprocess.run(
        [sys.executable, "-m", "nas.cli", "profile", "--validate", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "schema_version" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_tensorrt_backend_says_so_in_one_line(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is importable here")
    except Exception:
        pass
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas.cli",
            "profile",
            "--model",
            str(STORIES),
            "--backend",
            "tensorrt",
            "--out",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tensorrt" in lines[0].lower()


def test_torch_cpu_backend_measures(stories_parent):
    from compress.latency import MeasureSettings, measure_profile
    from compress.variants import VariantSpec

    s = MeasureSettings(
        backend="torch-cpu",
        phase="decode",
        context=32,
        threads=1,
        repeats=3,
        stack=2,
        min_block_ms=2.0,
    )
    specs = [
        VariantSpec.parse(v) for v in ["attention:parent", "attention:kv_heads=1", "ffn:parent"]
    ]
    prof = measure_profile(stories_parent.adapter, specs, s, students=2, report=lambda m: None)
    assert prof.backend == "torch-cpu" and prof.phase == "decode" and prof.context == 32
    assert prof.entries["attention:parent"].median_ms > 0


@pytest.mark.gpu
def test_torch_cuda_backend_measures(stories_parent):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from compress.latency import MeasureSettings, measure_profile
    from compress.variants import VariantSpec

    s = MeasureSettings(backend="torch-cuda", phase="prefill", seq=32, repeats=5, stack=4)
    specs = [VariantSpec.parse(v) for v in ["attention:parent", "ffn:parent", "ffn:noop"]]
    prof = measure_profile(stories_parent.adapter, specs, s, students=2, report=lambda m: None)
    assert prof.entries["ffn:parent"].median_ms > prof.entries["ffn:noop"].median_ms


@pytest.mark.gpu
def test_tensorrt_backend_measures(stories_parent):
    pytest.importorskip("tensorrt", reason="TensorRT is not importable")
    from compress.latency import MeasureSettings, measure_profile
    from compress.variants import VariantSpec

    s = MeasureSettings(backend="tensorrt", phase="prefill", seq=32, repeats=5, stack=4)
    specs = [VariantSpec.parse(v) for v in ["attention:parent", "ffn:parent"]]
    prof = measure_profile(stories_parent.adapter, specs, s, students=2, report=lambda m: None)
    assert prof.fixed_ms > 0


# --- the committed profiles ---------------------------------------------------------------------
def _committed(pattern: str) -> list[Path]:
    files = sorted(HWPROFILES.glob(pattern))
    if not files:
        pytest.skip(f"no committed profile {pattern}")
    return files


def test_committed_profiles_load_and_cover_spaces():
    from compress.variants import parse_space
    from nas.spec import load_spec

    for path in _committed("*.json"):
        prof = load_profile(path)
        assert prof.validation is not None and len(prof.validation.students) >= 8, path
        name = "tiny" if prof.shape.num_layers == 5 else "quickstart"
        spec_path = TINY_SPEC if name == "tiny" else TINY_SPEC.with_name("quickstart.yaml")
        if name == "tiny" and not os.path.exists(STORIES):
            continue
        space = load_spec(spec_path).space
        attention, ffn = parse_space(space.attention, space.ffn, prof.shape)
        check_covers(prof, prof.shape, attention + ffn, where=path.name)


def test_committed_decode_profile_kv_heads_and_noop():
    for path in _committed("onnxruntime-cpu__smollm2-135m__decode-*.json"):
        prof = load_profile(path)
        parent = prof.cost_ms("attention:parent")
        assert prof.cost_ms("attention:kv_heads=1") < parent
        assert prof.cost_ms("attention:noop") < 0.1 * parent
        assert prof.cost_ms("ffn:noop") < 0.1 * prof.cost_ms("ffn:parent")


def test_committed_prefill_256_mape_within_10_percent():
    path = _committed("onnxruntime-cpu__smollm2-135m__prefill-b1-s256.json")[0]
    prof = load_profile(path)
    assert prof.validation.mape <= 10.0
    assert replace(prof, validation=None).validation is None


def test_resolve_profiles_completes_named_files(measured, stories_parent, tmp_path):
    from compress.latency import resolve_profiles
    from compress.variants import VariantSpec

    prof, out = measured
    wanted = [VariantSpec.parse(v) for v in [*VARIANTS, "attention:linear"]]
    adapter, silent = stories_parent.adapter, lambda m: None
    with pytest.raises(ProfileCoverageError, match="attention:linear") as exc:
        resolve_profiles([out], [], adapter, wanted, tmp_path, report=silent)
    assert "hardware" not in str(exc.value)  # compress never names the spec's keys
    (got,) = resolve_profiles(
        [out], [], adapter, wanted, tmp_path, measure_missing=True, report=silent
    )
    assert "attention:linear" in got.entries
    assert load_profile(tmp_path / out.name) == got and load_profile(out) == prof

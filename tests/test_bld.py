"""Activation capture, BLD and the Ray BLD stage with resume, on stories260K (tiny.yaml)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from compress.bld import BLDConfig, heldout_nmse, init_data, train_variant
from compress.builders import build_variant, ffn_channel_importance, shrink_ffn
from compress.capture import Activations, CaptureError, capture, read_meta
from compress.evaluate import lm_loss
from compress.library import load_variant, read_records, variant_paths
from compress.variants import VariantSpec
from nas.layout import JobLayout
from tests.conftest import TINY_SPEC, need_shared_data

HALF = VariantSpec("ffn", "width", 86)  # 50 % of stories260K's 172


@pytest.fixture(scope="module")
def acts(tmp_path_factory, stories_parent, tiny_splits):
    """Train (first 32 sequences) and held-out (first 8 eval sequences) captures."""
    root = tmp_path_factory.mktemp("acts")
    capture(stories_parent.adapter, tiny_splits.train[:32], root / "train")
    capture(stories_parent.adapter, tiny_splits.eval[:8], root / "heldout")
    return Activations(root / "train"), Activations(root / "heldout")


# --- capture --------------------------------------------------------------------------------
def test_capture_records_what_the_parent_computes(acts, stories_parent, tiny_splits):
    train, _ = acts
    adapter = stories_parent.adapter
    assert (train.num_sequences, train.seq_len, train.num_tokens) == (32, 128, 32 * 128)
    ids = tiny_splits.train[3:5]
    with torch.no_grad():
        x = adapter.embed(ids)
        for layer in range(adapter.num_layers):
            a_in, a_out = train.sequences(layer, "attention", [3, 4])
            f_in, f_out = train.sequences(layer, "ffn", slice(3, 5))
            assert torch.equal(a_in, x)
            assert torch.equal(a_out, adapter.attention(layer)(x))
            x = x + a_out
            assert torch.equal(f_in, x)
            assert torch.equal(f_out, adapter.ffn(layer)(x))
            x = x + f_out
        assert torch.allclose(adapter.head(x), adapter(ids), atol=1e-5)
    # the parent subblock itself has nMSE 0 on its own recording
    assert heldout_nmse(adapter.ffn(2), acts[1], 2, "ffn") < 1e-12


def test_capture_is_reused_for_the_same_tokens_and_replaced_otherwise(tmp_path, stories_parent):
    adapter = stories_parent.adapter
    ids = torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(0))
    folder = tmp_path / "cap"
    capture(adapter, ids, folder)
    x_file = folder / "L000.x.npy"
    stamp = x_file.stat().st_mtime_ns
    capture(adapter, ids, folder)
    assert x_file.stat().st_mtime_ns == stamp
    meta = capture(adapter, ids[:2], folder)
    assert meta.num_sequences == 2 == read_meta(folder).num_sequences
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]  # no temporary folders left
    half = capture(adapter, ids, tmp_path / "half", dtype="float16")
    assert half.dtype == "float16"
    assert Activations(tmp_path / "half").array(1, "ffn").dtype.name == "float16"
    with pytest.raises(CaptureError, match="no finished activation capture"):
        Activations(tmp_path / "missing")


# --- BLD on one variant ------------------------------------------------------------------------
def test_importance_beats_random_channels_at_half_width(acts, stories_parent):
    """Acceptance 2: mean over layers of nMSE at initialisation, FFN at 50 % width."""
    train, heldout = acts
    adapter = stories_parent.adapter
    generator = torch.Generator().manual_seed(0)
    by_importance, at_random = [], []
    for layer in range(adapter.num_layers):
        parent = adapter.ffn(layer)
        built = build_variant(HALF, parent, init_data(train, layer, "ffn", 2048))
        by_importance.append(heldout_nmse(built, heldout, layer, "ffn"))
        scores = ffn_channel_importance(parent, init_data(train, layer, "ffn", 2048).inputs)
        assert torch.equal(
            built.gate_proj.weight, shrink_ffn(parent, scores.topk(86).indices).gate_proj.weight
        )
        random_nmse = [
            heldout_nmse(
                shrink_ffn(parent, torch.randperm(172, generator=generator)[:86]),
                heldout,
                layer,
                "ffn",
            )
            for _ in range(3)
        ]
        at_random.append(sum(random_nmse) / len(random_nmse))
    mean_imp = sum(by_importance) / len(by_importance)
    mean_rand = sum(at_random) / len(at_random)
    assert mean_imp < mean_rand, (by_importance, at_random)


def test_train_variant_record_and_determinism(acts, stories_parent):
    train, heldout = acts
    config = BLDConfig(tokens=4096, batch_size=8, lr=3e-3, init_tokens=1024)
    parent = stories_parent.adapter.attention(1)
    spec = VariantSpec("attention", "kv_heads", 1)
    module, record = train_variant(spec, 1, parent, train, heldout, config)
    assert record["variant"] == "attention:kv_heads=1" and record["layer"] == 1
    assert record["params"] == spec.params(stories_parent.shape)
    assert record["tokens"] == 4096 and record["steps"] == 4
    assert record["heldout_tokens"] == 8 * 128
    assert record["nmse_final"] == pytest.approx(heldout_nmse(module, heldout, 1, "attention"))
    again, record2 = train_variant(spec, 1, parent, train, heldout, config)
    assert torch.equal(again.k_proj.weight, module.k_proj.weight)  # seeded
    with pytest.raises(ValueError, match="nothing to train"):
        train_variant(
            VariantSpec("ffn", "noop"), 1, stories_parent.adapter.ffn(1), train, heldout, config
        )


# --- the Ray stage, interrupted and resumed -------------------------------------------------------
@pytest.fixture(scope="module")
def bld_job(tmp_path_factory, stories_parent):
    """tiny.yaml (trimmed) as a job: baseline, capture, BLD stopped after 9 variants, resumed.

    Returns (store, prepared, result of the resumed run, {file name: (bytes, mtime_ns)} of the
    files that existed after the interruption).
    """
    need_shared_data()
    from nas.baseline_stage import stage_baseline
    from nas.bld_stage import stage_bld, stage_capture
    from nas.spec import load_spec
    from nas.store import JobStore

    spec = load_spec(TINY_SPEC)
    # tiny.yaml with half the BLD tokens and eval data (same number of steps), to stay fast
    spec = spec.model_copy(
        update={
            "bld": spec.bld.model_copy(update={"tokens": 8192, "batch_size": 8}),
            "data": spec.data.model_copy(update={"train_tokens": 16384, "eval_tokens": 4096}),
        }
    )
    store = JobStore.create(
        tmp_path_factory.mktemp("results"), "tiny-bld", spec.model_dump(mode="json"), None
    )
    silent = lambda message: None  # noqa: E731
    prepared = stage_baseline(spec, store, silent)
    captured = stage_capture(spec, store, prepared, silent)
    first = stage_bld(spec, store, prepared, captured, silent, limit=9)
    assert not first.complete and first.trained == 9 and first.total == 35
    assert not store.stage_done("bld")
    library = store.library
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in library.iterdir()}
    resumed = stage_bld(spec, store, prepared, captured, silent)
    return store, prepared, resumed, before


def test_resume_trains_only_the_missing_variants(bld_job):
    """Acceptance 5."""
    store, _, resumed, before = bld_job
    assert len(before) == 2 * 9  # 9 finished variants, weights + record each, no temporaries
    assert resumed.complete and resumed.skipped == 9 and resumed.trained == 35 - 9
    library = store.library
    for name, (data, mtime) in before.items():
        path = library / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, name
    names = sorted(p.name for p in library.iterdir())
    assert len(names) == 2 * 35 and not [n for n in names if n.startswith(".")]
    assert store.stage_done("bld") and store.read_stage("bld")["variants"] == 35
    pids = {r["worker_pid"] for r in read_records(library)}
    assert os.getpid() not in pids  # trained in Ray workers, not in this process


def test_every_trained_variant_improves_on_its_initialisation(bld_job):
    """Acceptance 1."""
    store, *_ = bld_job
    records = read_records(store.library)
    assert len(records) == 35
    worse = [
        (r["layer"], r["variant"], r["nmse_init"], r["nmse_final"])
        for r in records
        if not r["nmse_final"] < r["nmse_init"]
    ]
    assert not worse


def test_trained_half_ffn_beats_untrained_end_to_end(bld_job):
    """Acceptance 4: swapping a trained FFN-50 % into the parent, in every layer, on the eval split."""
    store, prepared, _, _ = bld_job
    adapter, splits = prepared.parent.adapter, prepared.splits
    train = Activations(store.activations_train)
    library = store.library
    for layer in range(adapter.num_layers):
        untrained = build_variant(HALF, adapter.ffn(layer), init_data(train, layer, "ffn", 2048))
        trained = load_variant(library, layer, HALF, adapter)
        losses = []
        for module in (untrained, trained):
            old = adapter.replace(layer, "ffn", module)
            try:
                losses.append(lm_loss(adapter, splits.eval, batch_size=32)["loss"])
            finally:
                adapter.replace(layer, "ffn", old)
        assert losses[1] < losses[0], (layer, losses)


def test_library_frame_has_one_row_per_layer_and_variant(bld_job):
    from nas.library import COLUMNS, library_frame

    store, prepared, _, _ = bld_job
    frame = library_frame(store.dir)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 5 * (5 + 6)
    trainable = frame[frame.trainable]
    assert trainable.trained.all() and (trainable.nmse_final < trainable.nmse_init).all()
    parent_rows = frame[frame.variant == "ffn:parent"]
    assert (parent_rows.params == 3 * 64 * 172 + 64).all() and not parent_rows.trained.any()
    assert (frame[frame.variant == "attention:noop"].params == 0).all()
    assert frame[["kl", "lm_loss", "top1"]].isna().all().all()  # filled by the scoring stage
    weights, _ = variant_paths(store.library, 0, HALF)
    assert weights.is_file()


def test_killed_run_resumes_from_the_cli(tmp_path):
    """A real interruption: ``nas run`` is killed (SIGKILL, whole process group) during BLD,
    then ``nas resume`` finishes the library without touching the variants already written."""
    import signal
    import subprocess
    import sys
    import time

    need_shared_data()
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    nas = [sys.executable, "-m", "nas.cli"]
    run = subprocess.Popen(
        [*nas, "run", str(TINY_SPEC), "--job-id", "killed", "--results", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    library = tmp_path / "killed" / "library"
    deadline = time.monotonic() + 240
    try:
        while len(list(library.glob("L*.json"))) < 5:
            assert run.poll() is None, "nas run ended before BLD was interrupted"
            assert time.monotonic() < deadline, "BLD did not start in time"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    time.sleep(1.0)  # let Ray's own processes notice their driver is gone
    # the manifest still says "running", but the driver is gone: status and jobs say so
    manifest = JobLayout(tmp_path / "killed").manifest()
    assert manifest["state"] == "running"
    earlier_times = manifest["stage_seconds"]
    assert {"baseline", "capture"} <= set(earlier_times), earlier_times
    for command in (["status", "killed"], ["jobs"]):
        shown = subprocess.run(
            [*nas, *command, "--results", str(tmp_path)], capture_output=True, text=True, env=env
        )
        assert shown.returncode == 0 and "interrupted" in shown.stdout, shown.stdout + shown.stderr
    before = {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in library.glob("L*.json")
        if p.with_suffix(".safetensors").is_file()
    }
    assert 5 <= len(before) < 35
    resumed = subprocess.run(
        [*nas, "resume", "killed", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "in the library already" in resumed.stdout + resumed.stderr
    for name, (data, mtime) in before.items():
        path = library / name
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, name
    names = [p.name for p in library.iterdir()]
    assert len(names) == 2 * 35 and not [n for n in names if n.startswith(".")]
    # the rest of the pipeline ran too: tiny.yaml asks for 3 MIP solutions per budget, and the
    # rerank stage kept the one with the lowest measured KL for each budget
    from nas.pareto import read_alternates, read_front

    job = tmp_path / "killed"
    manifest = JobLayout(job).manifest()
    assert manifest["state"] == "finished" and "rerank" in manifest["stage_seconds"]
    for stage, seconds in earlier_times.items():  # times of stages done before are kept
        assert manifest["stage_seconds"][stage] == seconds, (stage, manifest["stage_seconds"])
    assert manifest["stage_seconds"]["bld"] > 0
    again = subprocess.run(  # resuming a finished job changes none of its files
        [*nas, "resume", "killed", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    assert JobLayout(job).manifest() == manifest
    layout = JobLayout(job)
    assert layout.measured_points()
    for pid in layout.measured_points():  # tiny.yaml asks for a refit of every front point
        refit = json.loads(layout.measured(pid).read_text())["healing"]["refit"]
        assert refit["tokens"] == 8192 and refit["subblocks_refit"] > 0, refit
        if refit["kept"]:
            assert refit["eval_kl_after"] <= refit["eval_kl_before"], refit
    alternates = read_alternates(job)
    measured = {p.stem: json.loads(p.read_text())["kl"] for p in (job / "rerank").glob("*.json")}
    assert set(measured) == set(alternates["point_id"])
    front = read_front(job)
    for target, group in front[front["strategy"] == "puzzle-mip"].groupby("target"):
        best = min(measured[p] for p in alternates[alternates["target"] == target]["point_id"])
        assert group["rerank_kl"].tolist() == [best]

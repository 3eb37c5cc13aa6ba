"""The pipeline of a job, in order, on one screen.

Each stage is a function with typed inputs and outputs (``nas.stage_io``). A stage whose record already exists in
the job's store is not run again (its outputs are read back), so ``resume`` is ``run`` on an
existing job.
"""

from __future__ import annotations

import contextlib
import time

from nas.baseline_stage import stage_baseline
from nas.bld_stage import stage_bld, stage_capture
from nas.driver import driver_lease
from nas.errors import JobError
from nas.ray_runtime import stop_local_ray
from nas.rerank_stage import stage_rerank
from nas.scoring_stage import stage_scoring
from nas.selection_stage import stage_selection
from nas.spec import SearchSpec
from nas.stage_io import Report
from nas.store import JobStore
from nas.students_stage import stage_students

STAGES = ("baseline", "capture", "bld", "scoring", "selection", "rerank", "students")


def run_job(
    spec: SearchSpec, store: JobStore, report: Report = print, until: str | None = None
) -> dict:
    """Run (or resume) the job's stages in order, stopping after ``until`` if given.

    Returns the manifest at the end. The job's state is ``finished`` only when every stage ran.
    The process holds the job's driver lease throughout (``JobBusy`` if another live process
    runs it); a job whose stages are all done is left as it is.
    """
    if until is not None and until not in STAGES:
        raise JobError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    manifest = store.manifest()
    if manifest.get("state") == "finished" and set(STAGES) <= set(manifest.get("stages_done", [])):
        report(f"job {store.job_id}: every stage is done already; nothing to run")
        return manifest  # a finished job's files are left exactly as they are
    with driver_lease(store.dir, store.job_id):
        return _run_stages(spec, store, report, until)


def _run_stages(spec: SearchSpec, store: JobStore, report: Report, until: str | None) -> dict:
    store.update_manifest(state="running")
    timer = _StageTimer(store, until)
    try:
        with timer("baseline"):
            prepared = stage_baseline(spec, store, report)
            timer.parent = prepared.parent
        with timer("capture"):
            captured = stage_capture(spec, store, prepared, report)
        with timer("bld"):
            library = stage_bld(spec, store, prepared, captured, report)
        with timer("scoring"):
            stage_scoring(spec, store, prepared, library, report)
        stop_local_ray()  # the stages after scoring run in this process
        with timer("selection"):
            selection = stage_selection(spec, store, prepared, report)
        with timer("rerank"):
            stage_rerank(spec, store, prepared, report)
        with timer("students"):
            stage_students(spec, store, prepared, selection, report)
    except _StoppedAfter as stop:
        return timer.stop(stop.stage)
    except BaseException:
        store.push()  # object storage: keep the items finished so far
        store.update_manifest(state="failed")
        raise
    return store.update_manifest(state="finished")


class _StoppedAfter(Exception):
    """The stage ``until`` named is done: the job stops here."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


class _StageTimer:
    """Records the current stage and each stage's wall seconds in the manifest, and stops the
    run (``_StoppedAfter``) once the stage ``until`` names is done.

    Seconds accumulate over runs (an interrupted stage's time, then its resumed time); a stage
    done before this run only reads its outputs back and adds nothing.
    """

    def __init__(self, store: JobStore, until: str | None = None):
        self.store = store
        self.until = until
        self.seconds = dict(store.manifest().get("stage_seconds", {}))
        self.parent = None  # set once loaded: its mapped weights are released after each stage

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.store.update_manifest(current_stage=stage)
        done_before = self.store.stage_done(stage)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.parent is not None:
                self.parent.release()  # the next stage reads the layers it runs again
            if not done_before:
                spent = time.perf_counter() - t0
                self.seconds[stage] = round(float(self.seconds.get(stage, 0.0)) + spent, 2)
                self.store.update_manifest(stage_seconds=self.seconds)
        if stage == self.until and stage != STAGES[-1]:  # after the last one the job is finished
            raise _StoppedAfter(stage)

    def stop(self, stage: str) -> dict:
        return self.store.update_manifest(state="stopped", stopped_after=stage)

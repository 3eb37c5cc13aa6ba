"""Where everything lives inside one job folder, and the readers of its records.

``JobLayout(job_dir)`` is the only place that knows the sub-paths of a job (``manifest.json``,
``stages/<stage>.json``, ``library/``, ``pareto/front.json``, ``students/<id>/...``) and the
only reader of the records other modules need whole (the manifest, the job's ``SearchSpec``,
the parent's shape, the Pareto points). Stages, the CLI, the service and the bench scripts
ask it for paths instead of joining literal names. It is pure paths and JSON: no torch, no
writes (``nas.store.JobStore`` adds creation, atomic writes and object-storage sync).
"""

from __future__ import annotations

import json
from pathlib import Path

from nas.errors import JobError, NotFound, RecordCorrupt

MANIFEST = "manifest.json"
CREATED_MARKER = ".created"  # made with O_EXCL: exactly one creator of a job id succeeds
# folders whose files are derivable from the rest and removed by ``nas clean``
INTERMEDIATES = (("activations",), ("scoring", "cache"), ("bld", "parent"))


def read_json_record(path: Path, what: str) -> object:
    """The JSON in ``path``; ``RecordCorrupt`` (one line naming ``what``) when it is unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
        raise RecordCorrupt(
            f"{what} ({path}) is truncated or corrupt: {reason}; restore it or remove the job"
        ) from None


class JobLayout:
    """The paths of one job folder (``dir``) and the readers of its records."""

    def __init__(self, job_dir: str | Path, job_id: str | None = None):
        self.dir = Path(job_dir)
        self.job_id = job_id or self.dir.name

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    # --- bookkeeping -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    @property
    def created_marker(self) -> Path:
        return self.dir / CREATED_MARKER

    @property
    def driver_record(self) -> Path:
        return self.dir / "driver.json"

    @property
    def driver_lock(self) -> Path:
        return self.dir / "driver.lock"

    def stage_path(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    # --- baseline and capture --------------------------------------------------------------
    @property
    def splits(self) -> Path:
        return self.dir / "data" / "splits.safetensors"

    def eval_set(self, name: str) -> Path:
        return self.dir / "data" / f"eval__{name}.safetensors"

    @property
    def activations_train(self) -> Path:
        return self.dir / "activations" / "train"

    @property
    def activations_heldout(self) -> Path:
        return self.dir / "activations" / "heldout"

    # --- BLD and scoring -------------------------------------------------------------------
    @property
    def bld_parent(self) -> Path:
        """Parent subblocks saved for the BLD tasks (removed when BLD is complete)."""
        return self.dir / "bld" / "parent"

    @property
    def prefilter(self) -> Path:
        return self.dir / "bld" / "prefilter.json"

    @property
    def library(self) -> Path:
        return self.dir / "library"

    @property
    def scores(self) -> Path:
        return self.dir / "scores"

    @property
    def scores_table(self) -> Path:
        return self.scores / "scores.json"

    @property
    def joint_scores(self) -> Path:
        return self.scores / "joint"

    @property
    def scoring_cache(self) -> Path:
        return self.dir / "scoring" / "cache"

    # --- selection and rerank --------------------------------------------------------------
    @property
    def hwprofiles(self) -> Path:
        return self.dir / "hwprofiles"

    @property
    def pareto(self) -> Path:
        return self.dir / "pareto"

    def pareto_file(self, name: str) -> Path:
        """``pareto/<name>``: front.json/.csv, meta.json, problem.json, alternates, baselines,
        block-library files and plots."""
        return self.pareto / name

    @property
    def front(self) -> Path:
        return self.pareto / "front.json"

    @property
    def front_meta(self) -> Path:
        return self.pareto / "meta.json"

    @property
    def problem(self) -> Path:
        return self.pareto / "problem.json"

    def rerank(self, point_id: str) -> Path:
        return self.dir / "rerank" / f"{point_id}.json"

    # --- students, exports, eval -----------------------------------------------------------
    def student(self, point_id: str) -> Path:
        return self.dir / "students" / str(point_id)

    def measured(self, point_id: str) -> Path:
        """The students stage's marker of a finished point."""
        return self.student(point_id) / "measured.json"

    @property
    def parent_measured(self) -> Path:
        return self.dir / "students" / "parent.json"

    def export(self, point_id: str, folder: str) -> Path:
        """``students/<id>/<folder>``: an export (``onnx``, ``hf``, ``onnx-fp16``...)."""
        return self.student(point_id) / folder

    def measured_points(self) -> list[str]:
        """Ids of the points the students stage finished (sorted)."""
        return sorted(p.parent.name for p in (self.dir / "students").glob("*/measured.json"))

    def exports_of_points(self, folder: str = "onnx*") -> list[Path]:
        """Every point's export folders matching ``folder`` (a glob: ``onnx``, ``onnx*``...)."""
        return sorted(p for p in (self.dir / "students").glob(f"*/{folder}") if p.is_dir())

    def onnx_graphs(self) -> list[Path]:
        """The points' exported ONNX graphs: ``onnx/model.onnx`` (the decoder layout), else the
        ``onnx/prefill.onnx`` of jobs exported before it."""
        folders = self.exports_of_points("onnx")
        graphs = [f / "model.onnx" for f in folders if (f / "model.onnx").is_file()]
        return graphs or [f / "prefill.onnx" for f in folders if (f / "prefill.onnx").is_file()]

    def service_export(self, point_id: str, fmt: str) -> Path:
        """Where ``nas serve`` writes an export it was asked for (``exports/<id>/<format>``,
        with ``<format>.status.json`` beside it)."""
        return self.dir / "exports" / str(point_id) / fmt

    @property
    def service_log(self) -> Path:
        return self.dir / "service.log"

    @property
    def eval(self) -> Path:
        return self.dir / "eval"

    def eval_record(self, point_id: str) -> Path:
        return self.eval / f"{point_id}.json"

    # --- record readers --------------------------------------------------------------------
    def manifest(self) -> dict:
        """The manifest; ``NotFound`` without one, ``RecordCorrupt`` when it is not a manifest."""
        path = self.manifest_path
        try:
            manifest = read_json_record(path, f"the manifest of job {self.job_id}")
        except FileNotFoundError:
            raise NotFound(f"no job {self.job_id} in {self.dir.parent}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages_done", []), list):
            raise RecordCorrupt(
                f"the manifest of job {self.job_id} ({path}) is not a job manifest; "
                "restore it or remove the job"
            )
        return manifest

    def spec(self):
        """The job's resolved ``SearchSpec``; ``RecordCorrupt`` when the manifest's is invalid."""
        from pydantic import ValidationError

        from nas.spec import SearchSpec

        try:
            return SearchSpec.model_validate(self.manifest()["spec"])
        except (KeyError, ValidationError) as exc:
            first = str(exc).splitlines()[0][:200]
            raise RecordCorrupt(
                f"the manifest of job {self.job_id} has no valid spec ({first}); "
                "restore it or remove the job"
            ) from None

    def stage_done(self, stage: str) -> bool:
        return self.stage_path(stage).exists()

    def read_stage(self, stage: str) -> dict:
        """A finished stage's record; ``JobError`` when the stage has not finished."""
        path = self.stage_path(stage)
        try:
            record = read_json_record(path, f"the {stage} record of job {self.job_id}")
        except FileNotFoundError:
            raise JobError(f"job {self.job_id} has no finished stage {stage!r}") from None
        if not isinstance(record, dict):
            raise RecordCorrupt(
                f"the {stage} record of job {self.job_id} ({path}) is not a mapping"
            )
        return record

    def parent_shape(self):
        """The parent's ``ModelShape`` from the baseline record (``JobError`` before it)."""
        from compress.shape import ModelShape

        return ModelShape.from_dict(self.read_stage("baseline")["shape"])

    def read_json(self, path: Path, what: str, default=None):
        """The JSON record at ``path`` (inside this job), ``default`` when it does not exist."""
        try:
            return read_json_record(path, f"{what} of job {self.job_id}")
        except FileNotFoundError:
            return default

    def front_records(self) -> list[dict]:
        """The Pareto points of ``pareto/front.json`` as stored (``FrontMissing`` before the
        selection stage; ``RecordCorrupt`` when it is not a list of records)."""
        from nas.selection.errors import FrontMissing

        data = self.read_json(self.front, "the Pareto front")
        if data is None:
            raise FrontMissing(
                f"job {self.job_id} has no Pareto front yet ({self.front}); run the job "
                "through its selection stage first"
            )
        if isinstance(data, dict) and isinstance(data.get("points"), list):
            data = data["points"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise RecordCorrupt(
                f"{self.front} is not a list of records; rerun the job's selection stage"
            )
        return data

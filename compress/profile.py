"""Hardware latency profiles: plain, torch-free, versioned data (``hwprofiles/*.json``).

A profile holds, for one model shape measured on one backend at one phase (prefill: batch x seq
tokens; decode: batch x 1 token over a KV cache of ``context`` tokens) and precision, the
latency of every measured subblock variant (``entries``, keyed by the variant's canonical
string, milliseconds per subblock) and the ``fixed`` cost of embeddings + final norm + LM head
(logits for all positions of the phase; session overhead included once). The latency of a
student is predicted as ``sum(profile.cost_ms(v) for every chosen subblock) + profile.fixed_ms``.
Entries are per model shape (every layer of a shape has the same subblock shapes), so
``entry(layer, variant)`` ignores the layer.

``validation`` stores how well that prediction matched whole-student measurements (MAPE, %).
``load_profile`` is the one loader; every failure is a ``ProfileError`` with a one-line message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from compress.atomic import atomic_write_json
from compress.errors import UserError, read_user_file
from compress.shape import ModelShape

SCHEMA_VERSION = 1
PHASES = ("prefill", "decode")


class ProfileError(UserError):
    """A profile file is missing, corrupt, of another schema version or malformed."""


class ProfileCoverageError(ProfileError):
    """A profile does not cover the model shape, phase or variants a search needs."""


@dataclass(frozen=True)
class Timing:
    """Milliseconds: median and the 10th / 90th percentiles over repeats."""

    median_ms: float
    p10_ms: float
    p90_ms: float

    def __post_init__(self) -> None:
        for name in ("median_ms", "p10_ms", "p90_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> Timing:
        return cls(float(data["median_ms"]), float(data["p10_ms"]), float(data["p90_ms"]))


@dataclass(frozen=True)
class StudentCheck:
    """One validation student: per-layer [attention, ffn] choices, predicted vs measured."""

    choices: list[list[str]]
    predicted_ms: float
    measured_ms: float
    paired_ape: float | None = None  # |median over rounds of measured / same-round sum - 1|, %

    @property
    def ape(self) -> float:
        """Absolute percentage error of the prediction, in %."""
        return abs(self.predicted_ms - self.measured_ms) / self.measured_ms * 100.0


@dataclass(frozen=True)
class Validation:
    """Whole-student check of the predictor: mean absolute percentage error in %."""

    seed: int
    students: list[StudentCheck]
    mape: float
    max_ape: float
    created: str
    paired_mape: float | None = None

    @classmethod
    def from_checks(cls, seed: int, students: list[StudentCheck], created: str) -> Validation:
        """``mape``: profile prediction vs each student's median. ``paired_mape``: per round,
        the student vs the sum of the same round's entries (cancels machine-speed drift)."""
        apes = [s.ape for s in students]
        paired = [s.paired_ape for s in students if s.paired_ape is not None]
        paired_mape = sum(paired) / len(paired) if len(paired) == len(students) else None
        return cls(seed, students, sum(apes) / len(apes), max(apes), created, paired_mape)

    @classmethod
    def from_dict(cls, data: dict) -> Validation:
        students = [
            StudentCheck(
                [list(c) for c in s["choices"]],
                float(s["predicted_ms"]),
                float(s["measured_ms"]),
                None if s.get("paired_ape") is None else float(s["paired_ape"]),
            )
            for s in data["students"]
        ]
        paired = data.get("paired_mape")
        return cls(
            int(data["seed"]),
            students,
            float(data["mape"]),
            float(data["max_ape"]),
            data["created"],
            None if paired is None else float(paired),
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        for rec, s in zip(out["students"], self.students, strict=True):
            rec["ape"] = s.ape
        return out


@dataclass(frozen=True)
class HardwareProfile:
    """One measured profile; see the module docstring for the contract."""

    device: str
    backend: str
    backend_version: str
    threads: int | None
    precision: str
    phase: str
    batch: int
    seq: int
    context: int
    shape: ModelShape
    entries: dict[str, Timing]
    fixed: Timing
    model_source: str = ""
    stack: int = 8
    repeats: int = 0
    warmup: int = 0
    validation: Validation | None = None
    created: str = ""
    notes: str = ""
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        for name in ("batch", "seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.phase == "decode" and self.seq != 1:
            raise ValueError("a decode profile has seq 1 (one new token)")

    # --- lookups ------------------------------------------------------------------------------
    @property
    def fixed_ms(self) -> float:
        return self.fixed.median_ms

    @property
    def shape_key(self) -> str:
        return self.shape.key

    def cost_ms(self, variant: str | object) -> float:
        """Median ms of one subblock of ``variant`` (canonical string or VariantSpec)."""
        key = str(variant)
        try:
            return self.entries[key].median_ms
        except KeyError:
            raise ProfileCoverageError(
                f"profile ({self.describe()}) has no entry for variant {key}"
            ) from None

    def entry(self, layer: int | None, variant: str | object) -> float:
        """Per-layer lookup; all layers of one shape share their entries, so ``layer`` is unused."""
        return self.cost_ms(variant)

    def predict_ms(self, choices: Iterable[Iterable[str | object]]) -> float:
        """Predicted latency of a student: per-layer (attention, ffn) choices -> ms."""
        return self.fixed_ms + sum(self.cost_ms(v) for layer in choices for v in layer)

    def describe(self) -> str:
        where = f"s{self.seq}" if self.phase == "prefill" else f"c{self.context}"
        return (
            f"{self.backend} {self.phase} b{self.batch} {where} {self.precision} {self.shape_key}"
        )

    # --- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "device": self.device,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "threads": self.threads,
            "precision": self.precision,
            "phase": self.phase,
            "batch": self.batch,
            "seq": self.seq,
            "context": self.context,
            "model_source": self.model_source,
            "shape_key": self.shape.key,
            "shape": self.shape.to_dict(),
            "stack": self.stack,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "entries": {k: asdict(v) for k, v in sorted(self.entries.items())},
            "fixed": asdict(self.fixed),
            "validation": None if self.validation is None else self.validation.to_dict(),
            "created": self.created,
            "notes": self.notes,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict) -> HardwareProfile:
        """Build from a loaded mapping; raises ``ProfileError`` naming the first problem."""
        if not isinstance(data, dict):
            raise ProfileError(f"a profile must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ProfileError(
                f"profile schema_version {version!r} is not supported (this version reads "
                f"{SCHEMA_VERSION}); re-measure it with `nas profile`"
            )
        try:
            shape = ModelShape.from_dict(data["shape"])
            if data.get("shape_key", shape.key) != shape.key:
                raise ValueError(f"shape_key {data['shape_key']!r} does not match the shape")
            validation = data.get("validation")
            return cls(
                device=str(data["device"]),
                backend=str(data["backend"]),
                backend_version=str(data["backend_version"]),
                threads=None if data["threads"] is None else int(data["threads"]),
                precision=str(data["precision"]),
                phase=str(data["phase"]),
                batch=int(data["batch"]),
                seq=int(data["seq"]),
                context=int(data["context"]),
                shape=shape,
                entries={str(k): Timing.from_dict(v) for k, v in data["entries"].items()},
                fixed=Timing.from_dict(data["fixed"]),
                model_source=str(data.get("model_source", "")),
                stack=int(data.get("stack", 8)),
                repeats=int(data.get("repeats", 0)),
                warmup=int(data.get("warmup", 0)),
                validation=None if validation is None else Validation.from_dict(validation),
                created=str(data.get("created", "")),
                notes=str(data.get("notes", "")),
                extra=dict(data.get("extra") or {}),
            )
        except KeyError as exc:
            raise ProfileError(f"profile is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"profile is malformed: {exc}") from None

    def with_entries(self, entries: dict[str, Timing]) -> HardwareProfile:
        return replace(self, entries={**self.entries, **entries})


def save_profile(profile: HardwareProfile, path: str | Path) -> Path:
    """Write atomically as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, profile.to_dict())
    return path


def load_profile(path: str | Path) -> HardwareProfile:
    """Read and validate one profile file; raises ``ProfileError`` (one line, names the file)."""
    path = Path(path)
    text = read_user_file(path, "profile", ProfileError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"profile {path} is not valid JSON (line {exc.lineno}: {exc.msg})"
        ) from None
    try:
        return HardwareProfile.from_dict(data)
    except ProfileError as exc:
        raise type(exc)(f"{path}: {exc}") from None


def missing_variants(profile: HardwareProfile, variants: Iterable[str | object]) -> list[str]:
    """Canonical variants the profile has no entry for (in the given order)."""
    return [str(v) for v in variants if str(v) not in profile.entries]


def check_covers(
    profile: HardwareProfile,
    shape: ModelShape,
    variants: Iterable[str | object],
    phase: str | None = None,
    where: str = "",
) -> None:
    """Raise ``ProfileCoverageError`` unless ``profile`` is for ``shape`` (and ``phase``) and has
    an entry for every variant; the message names what is missing."""
    prefix = f"{where}: " if where else ""
    if profile.shape != shape:
        raise ProfileCoverageError(
            f"{prefix}profile is for model shape {profile.shape_key}, not {shape.key}; "
            "measure one for this model with `nas profile`"
        )
    if phase is not None and profile.phase != phase:
        raise ProfileCoverageError(f"{prefix}profile is for phase {profile.phase}, not {phase}")
    missing = missing_variants(profile, variants)
    if missing:
        raise ProfileCoverageError(
            f"{prefix}profile ({profile.describe()}) has no entry for variant(s) "
            f"{', '.join(missing)}; re-measure it with these variants"
        )


def default_profile_name(profile: HardwareProfile, model_name: str) -> str:
    """``BACKEND__MODEL__prefill-bB-sS.json`` or ``BACKEND__MODEL__decode-bB-cC.json``."""
    return profile_file_name(
        profile.backend, profile.phase, profile.batch, profile.seq, profile.context, model_name
    )


def profile_file_name(
    backend: str, phase: str, batch: int, seq: int, context: int, model_name: str
) -> str:
    """The default file name of a profile with these settings (``default_profile_name``)."""
    where = f"s{seq}" if phase == "prefill" else f"c{context}"
    return f"{backend}__{model_name}__{phase}-b{batch}-{where}.json"

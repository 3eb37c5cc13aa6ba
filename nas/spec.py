"""The search spec: the YAML a user writes (search_spaces/*.yaml), one schema, one loader.

Every section is a pydantic model with ``extra="forbid"`` (an unknown key is an error naming
its dotted path); relative paths resolve against the spec file's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compress import random_parent
from compress.errors import read_user_file
from compress.shape import DEFAULT_MODELS
from nas.errors import SpecError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    source: str = Field("smollm2-135m", description="HF folder, .gguf file, or a named default")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class _SourceFields(_Section):
    """One text source (``compress.sources`` reads these fields by name)."""

    kind: Literal["files", "dataset", "generated"]
    files: list[str] = Field(default_factory=list, description="files: text files")
    separator: str = Field("\n<|endoftext|>\n", description="files: document separator")
    path: str | None = Field(
        None, description="dataset: Hub name, local folder, builder (json/csv/parquet) or file"
    )
    data_files: list[str] = Field(default_factory=list, description="dataset: its data files")
    config: str | None = Field(None, description="dataset: configuration name")
    split: str = Field("train", description="dataset: split")
    text_field: str = Field("text", description="dataset: the field holding the text")
    template: str | None = Field(
        None, description='dataset: str.format template over fields, e.g. "{question}\\n{answer}"'
    )
    documents: tuple[int, int | None] | None = Field(
        None,
        description="files/dataset: [start, stop] slice of the documents (stop null: to the end)",
    )
    temperature: float = Field(1.0, gt=0, description="generated: sampling temperature")

    @model_validator(mode="after")
    def _fields_of_kind(self):
        if self.kind == "files" and not self.files:
            raise ValueError("a files source needs at least one path in 'files'")
        if self.kind == "dataset" and not self.path:
            raise ValueError("a dataset source needs 'path' (a Hub name, folder, builder or file)")
        foreign = {
            "files": ("path", "data_files", "config", "template"),
            "dataset": ("files",),
            "generated": ("files", "path", "data_files", "config", "template", "documents"),
        }[self.kind]
        given = [k for k in foreign if getattr(self, k)]  # every default is empty
        if given:
            raise ValueError(f"'{given[0]}' does not apply to a {self.kind} source")
        return self


class SourceSection(_SourceFields):
    weight: float = Field(1.0, gt=0, description="share of the calibration tokens (normalised)")


class EvalSetSection(_SourceFields):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$", description="the set's column suffix")
    tokens: int = Field(8192, gt=0, description="tokens measured (whole sequences of data.seq_len)")


class DataSection(_Section):
    sources: list[SourceSection] = Field(
        default_factory=lambda: [SourceSection(kind="generated")],
        min_length=1,
        description="weighted calibration sources",
    )
    seq_len: int = Field(256, ge=8)
    train_tokens: int = Field(65536, gt=0)
    eval_tokens: int = Field(16384, gt=0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, raw):
        """``source: text|generated`` + ``files`` + ``separator`` still work (one source)."""
        if not isinstance(raw, dict) or not ({"source", "files", "separator"} & set(raw)):
            return raw
        if "sources" in raw:
            raise ValueError(
                "give either data.sources or the old data.source/files, not both "
                "(data.sources: [{kind: files, files: [...]}])"
            )
        raw = dict(raw)
        kind = raw.pop("source", "text")
        files, separator = raw.pop("files", []), raw.pop("separator", None)
        if kind == "generated":
            raw["sources"] = [{"kind": "generated"}]
        elif kind == "text":
            if not files:
                raise ValueError("source 'text' needs at least one file in data.files")
            source = {"kind": "files", "files": files}
            if separator is not None:
                source["separator"] = separator
            raw["sources"] = [source]
        else:
            raise ValueError(
                f"data.source {kind!r} is replaced by data.sources: [{{kind: files|dataset|generated, ...}}]"
            )
        return raw


class EvalSection(_Section):
    sets: list[EvalSetSection] = Field(
        default_factory=list, description="named eval sets: never trained, scored or reranked on"
    )

    @field_validator("sets")
    @classmethod
    def _unique(cls, sets):
        names = [s.name for s in sets]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"eval set name {dup!r} is used twice")
        return sets


class PrefilterSection(_Section):
    keep_per_layer: int = Field(..., ge=1, description="variants of each kind kept per layer")


class SpaceSection(_Section):
    """Variants to build per layer. FFN widths: integers, or ratios (0, 1) of the parent's."""

    attention: list[str | int] = Field(default_factory=lambda: ["parent", "noop"])
    ffn: list[str | int | float] = Field(default_factory=lambda: ["parent", 0.5, "noop"])
    prefilter: PrefilterSection | None = None
    layers: list[int] | None = Field(None, min_length=1, description="layers with variants (all)")


class BLDSection(_Section):
    tokens: int = Field(32768, gt=0, description="training tokens per variant")
    batch_size: int = Field(8, ge=1, description="sequences per step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    seed: int = 0
    init_tokens: int = Field(2048, gt=0, description="train tokens used to initialise variants")
    eval_tokens: int = Field(2048, gt=0, description="eval-split tokens nMSE is measured on")
    # dtype of the captured activations on disk (default: model.dtype)
    activation_dtype: Literal["float32", "bfloat16", "float16"] | None = None


class ScoringSection(_Section):
    metric: Literal["kl", "lm_loss"] = "kl"
    blocks: Literal["subblock", "joint"] = Field(
        "subblock",
        description="subblock: score attention and FFN variants one at a time (|A|+|F| per layer, "
        "summed by the MIP); joint: also score every (attention, FFN) pair of a layer together "
        "(|A|x|F| per layer) and choose whole blocks by their joint scores",
    )
    eval_tokens: int | None = Field(None, gt=0, description="tokens of the eval split to score on")
    batch_size: int = Field(8, ge=1)


class MeasureSection(_Section):
    backend: Literal["onnxruntime-cpu", "torch-cpu", "torch-cuda", "tensorrt"] = "onnxruntime-cpu"
    threads: int | None = Field(None, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    repeats: int = Field(20, ge=3)
    warmup: int = Field(3, ge=0)


class PhaseSection(_Section):
    phase: Literal["prefill", "decode"]
    batch: int = Field(1, ge=1)
    seq: int | None = Field(None, ge=1, description="prefill tokens")
    context: int | None = Field(None, ge=1, description="decode: KV-cache tokens")


class HardwareSection(_Section):
    profiles: list[str] = Field(
        default_factory=list, description="profile files (hwprofiles/*.json)"
    )
    measure: MeasureSection | None = None
    phases: list[PhaseSection] = Field(default_factory=list, description="phases to measure")
    weight_precision: Literal["fp32", "fp16", "bf16", "int8", "fp8"] | None = Field(
        None, description="precision of the exported weights for memory_mib (default: model.dtype)"
    )


def _known_metric(metric: str | None) -> str | None:
    """The pipeline's cost model provides these; custom metrics come from library files
    (``nas select``)."""
    from nas.selection.costs import TARGET_METRICS

    if metric is not None and metric not in TARGET_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(TARGET_METRICS)}")
    return metric


def _metric_names(schema: dict) -> None:
    """JSON schema of a metric field: the names ``_known_metric`` accepts (and null where the
    field is optional)."""
    from nas.selection.costs import TARGET_METRICS

    optional = "anyOf" in schema
    schema.clear()
    schema["enum"] = [*TARGET_METRICS, *([None] if optional else [])]


class BoundSection(_Section):
    """A bound held in every solve of a target: ``min`` and/or ``max`` of one metric."""

    # the schema says what the validators check, so a schema-valid spec is a valid one
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"properties": {"min": {"type": "number"}}, "required": ["min"]},
                {"properties": {"max": {"type": "number"}}, "required": ["max"]},
            ]
        }
    )

    metric: str = Field(
        ...,
        min_length=1,
        description="a cost metric or human target, by name",
        json_schema_extra=_metric_names,
    )
    min: float | None = None
    max: float | None = None
    relative: bool | None = Field(None, description="default: the target's relative")

    _metric = field_validator("metric")(_known_metric)

    @model_validator(mode="after")
    def _one_side(self):
        if self.min is None and self.max is None:
            raise ValueError(f"bound on {self.metric} needs min or max")
        return self


class TargetSection(_Section):
    """A sweep of one bound (``metric`` over ``values``) with ``bounds`` held in every solve; or,
    without ``metric``, one solve of ``bounds``. Values are absolute or, with ``relative: true``,
    ratios of the parent. Metrics: prefill_latency_ms, decode_latency_ms, params, memory_mib,
    kv_cache_mib, decode_throughput_tps (alias throughput_tps), prefill_throughput_tps, ttft_ms, or
    any custom cost metric by name."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {"metric": {"type": "string"}, "values": {"type": "array"}},
                    "required": ["metric", "values"],
                },
                {
                    "properties": {
                        "metric": {"type": "null"},
                        "values": {"type": "null"},
                        "bounds": {"minItems": 1},
                    },
                    "required": ["bounds"],
                },
            ]
        }
    )

    metric: str | None = Field(None, json_schema_extra=_metric_names)
    values: list[float] | None = Field(None, min_length=1)
    relative: bool = True
    bound: Literal["max", "min"] | None = Field(
        None, description="the swept bound: max (<=; default) or min (>=; default for throughputs)"
    )
    bounds: list[BoundSection] = Field(default_factory=list)

    _metric = field_validator("metric")(_known_metric)

    @model_validator(mode="after")
    def _something(self):
        if self.metric is None and (self.values or not self.bounds):
            raise ValueError("a target needs metric and values, or bounds, or both")
        if self.metric is not None and not self.values:
            raise ValueError(f"target {self.metric} needs values")
        return self


class StrategySection(_Section):
    names: list[Literal["puzzle-mip", "amoeba-dp", "diswot-evolution"]] = Field(
        default_factory=lambda: ["puzzle-mip"]
    )
    solutions_per_budget: int = Field(1, ge=1)
    diversity_layers: int = Field(1, ge=1)
    rerank_tokens: int = Field(
        1024,
        gt=0,
        description="with solutions_per_budget > 1: train-split tokens BLD did not see on which "
        "each budget's solutions are assembled and compared by measured KL (best one kept)",
    )
    time_limit_s: float = Field(10.0, gt=0)
    solver: Literal["highs", "cbc"] = Field(
        "highs", description="MIP solver (HiGHS in process; measured faster in bench/mip_speed.py)"
    )
    fix: dict[int, list[str]] = Field(
        default_factory=dict,
        description="layer -> variants it must use, e.g. {0: [ffn:parent]}",
        # JSON object keys are strings: the schema says they are layer numbers
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]{1,6}$"}},
    )
    forbid: list[str] = Field(
        default_factory=list,
        description="variants never chosen: 'ffn:noop' (every layer) or '3/ffn:noop' (layer 3)",
    )
    keep_last_layers: int = Field(0, ge=0)
    trials: int = Field(32, ge=1, description="diswot-evolution trials")

    @field_validator("fix", mode="before")
    @classmethod
    def _layer_keys(cls, value):
        """JSON keys are strings: ``{"3": [...]}`` names layer 3 as ``{3: [...]}`` does."""
        if isinstance(value, dict):
            return {
                int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()
            }
        return value


class GKDSection(_Section):
    tokens: int = Field(16384, gt=0)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-4, gt=0)
    hidden_weight: float = Field(1.0, ge=0)
    train_embeddings: bool = False  # else the layers only (compress.gkd.GKDSettings)


class RefitSection(_Section):  # compress.refit.RefitSettings: least squares before GKD
    tokens: int = Field(32768, gt=0)
    ridge: float = Field(1e-4, ge=0, description="relative to each Gram matrix's mean diagonal")
    batch_size: int = Field(8, ge=1)


class ExportSection(_Section):
    formats: list[Literal["onnx", "tensorrt", "hf"]] = Field(default_factory=lambda: ["onnx"])
    points: Literal["front", "none"] = "front"
    measure: bool = True
    precision: Literal["fp32", "fp16", "bf16"] | None = None  # else measure's precision or fp32
    refit: RefitSection | None = None
    gkd: GKDSection | None = None
    eval_tokens: int | None = Field(
        None, gt=0, description="eval-split tokens for measured quality (default: all)"
    )
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo", description="torch.onnx exporter; torchscript exports several times faster"
    )


class RaySection(_Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    num_cpus: int | None = Field(None, ge=1)
    storage: str | None = Field(
        None,
        description="results root shared by the cluster: a URI (s3://bucket/prefix, gs://...) "
        "or a shared folder",
    )
    latency_resource: str | None = Field(
        None,
        description='custom resource of the target-hardware nodes that measure latency, e.g. "hw:h100"',
    )
    gpus_per_task: float = Field(
        0, ge=0, le=64, description="GPUs per BLD task (fractions share a GPU; 0: CPU only)"
    )


class SearchSpec(_Section):
    name: str = "job"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    space: SpaceSection = Field(default_factory=SpaceSection)
    bld: BLDSection = Field(default_factory=BLDSection)
    scoring: ScoringSection = Field(default_factory=ScoringSection)
    hardware: HardwareSection = Field(default_factory=HardwareSection)
    targets: list[TargetSection] = Field(default_factory=list)
    strategy: StrategySection = Field(default_factory=StrategySection)
    export: ExportSection = Field(default_factory=ExportSection)
    ray: RaySection = Field(default_factory=RaySection)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value.startswith("."):
            raise ValueError("name must be a plain word (no path separators)")
        return value


def load_spec(path: str | Path) -> SearchSpec:
    """Read, validate and resolve a spec file. Raises ``SpecError`` with a one-line message."""
    path = Path(path)
    text = read_user_file(path, "spec file", SpecError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the spec must be a mapping of sections, got {type(raw).__name__}")
    return parse_spec(raw, base_dir=path.parent, origin=str(path))


def parse_spec(raw: dict, base_dir: Path | str = ".", origin: str = "spec") -> SearchSpec:
    """Validate a spec given as a mapping; relative paths resolve against ``base_dir``."""
    try:
        spec = SearchSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{origin}: {_describe(exc)}") from None
    return _resolve_paths(spec, Path(base_dir), origin)


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    if err["type"] == "extra_forbidden":
        return f"unknown key '{loc}'"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"'{loc or '<root>'}': {msg}{more}"


BUILTIN_DATA = Path(__file__).resolve().parent / "data"
BUILTIN_PREFIX = "builtin:"


def _resolve(base: Path, value: str) -> str:
    """A path relative to ``base``; ``builtin:NAME`` names a text shipped in ``nas/data``."""
    if value.startswith(BUILTIN_PREFIX):
        return str(BUILTIN_DATA / value.removeprefix(BUILTIN_PREFIX))
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _resolve_source(source, base: Path, where: str, origin: str):
    """The source with its files resolved (and checked); a dataset ``path`` is resolved only
    when it names something on disk (else it is a Hub name or a builder such as ``json``)."""
    files = [_resolve(base, f) for f in source.files]
    data_files = [_resolve(base, f) for f in source.data_files]
    for key, paths in (("files", files), ("data_files", data_files)):
        for f in paths:
            if not Path(f).is_file():
                raise SpecError(f"{origin}: '{where}.{key}': {f} does not exist")
    path = source.path
    if path is not None and Path(_resolve(base, path)).exists():
        path = _resolve(base, path)
    return source.model_copy(update={"files": files, "data_files": data_files, "path": path})


def _resolve_paths(spec: SearchSpec, base: Path, origin: str) -> SearchSpec:
    model_source = spec.model.source
    if model_source.startswith(random_parent.PREFIX):  # a shipped config's name, else a config file
        name = model_source.removeprefix(random_parent.PREFIX)
        if name not in random_parent.shipped_configs():
            model_source = random_parent.PREFIX + _resolve(base, name)
    elif model_source not in DEFAULT_MODELS:
        model_source = _resolve(base, model_source)
        if not Path(model_source).exists():
            raise SpecError(
                f"{origin}: 'model.source': {model_source} does not exist "
                f"(a HF folder, a .gguf file, or one of {', '.join(DEFAULT_MODELS)})"
            )
    sources = [
        _resolve_source(s, base, f"data.sources.{i}", origin)
        for i, s in enumerate(spec.data.sources)
    ]
    sets = [
        _resolve_source(s, base, f"eval.sets.{i}", origin) for i, s in enumerate(spec.eval.sets)
    ]
    profiles = [_resolve(base, f) for f in spec.hardware.profiles]
    for f in profiles:
        if not Path(f).is_file():
            raise SpecError(f"{origin}: 'hardware.profiles': {f} does not exist")
    storage = spec.ray.storage
    if storage is not None and "://" not in storage:
        storage = _resolve(base, storage)
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"source": model_source}),
            "data": spec.data.model_copy(update={"sources": sources}),
            "eval": spec.eval.model_copy(update={"sets": sets}),
            "hardware": spec.hardware.model_copy(update={"profiles": profiles}),
            "ray": spec.ray.model_copy(update={"storage": storage}),
        }
    )

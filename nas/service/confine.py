"""What a remote client's spec may do: its shape, its size, and the server paths it may name.

A spec sent over HTTP is JSON (YAML is parsed by the client, so no YAML alias or tag ever
reaches the server), validated strictly against ``RemoteSearchSpec`` (the ``SearchSpec``
schema without ``ray.address``/``ray.storage``, so a client cannot point the job at a cluster
of its choosing or move its results), at most ``MAX_BODY_BYTES`` and ``MAX_DEPTH`` levels
deep, and every path it names (``model.source`` unless a named default,
``data.sources``/``eval.sets`` files, ``hardware.profiles``) must lie under one of the server's allowed roots: the
``--data-root`` folders and the job's own folder. The check is lexical before any file is
touched, then again on the real path (so a symlink cannot lead out); an outside path and a
missing one get the same ``PathRefused`` message, so a client learns nothing about the rest of
the server's disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.errors import UserError
from compress.shape import DEFAULT_MODELS
from nas.errors import SpecError
from nas.spec import (
    BUILTIN_DATA,
    BUILTIN_PREFIX,
    DataSection,
    EvalSection,
    RaySection,
    SearchSpec,
    _Section,
)
from nas.store import JOB_ID_MAX, JOB_ID_PATTERN

MAX_BODY_BYTES = 256 * 1024  # a real spec is a few KiB
MAX_DEPTH = 16  # a spec is at most 4 levels deep
SPEC_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class PathRefused(UserError):
    """A remote spec names a path this server does not let clients use (403)."""


class BodyTooLarge(UserError):
    """A request body or spec text over the server's limit (413)."""


class RemoteRaySection(_Section):
    """``ray`` as a remote client may set it: the job always runs on the server's own Ray."""

    num_cpus: int | None = Field(None, ge=1, le=os.cpu_count() or 1)
    latency_resource: str | None = Field(None, max_length=128)


class _RemoteFiles(_Section):
    """A ``files`` source as a remote client may give it (files under the data roots, or
    ``builtin:NAME`` texts shipped with the project)."""

    kind: Literal["files"]
    files: list[str] = Field(..., min_length=1, max_length=64)
    separator: str = Field("\n<|endoftext|>\n", min_length=1, max_length=256)
    documents: tuple[int, int | None] | None = None

    @field_validator("documents", mode="before")
    @classmethod
    def _json_array(cls, value):
        """JSON has arrays, not tuples: the strict validation takes ``[start, stop]``."""
        return tuple(value) if isinstance(value, list) else value


class _RemoteGenerated(_Section):
    """A ``generated`` source: text sampled from the parent itself."""

    kind: Literal["generated"]
    temperature: float = Field(1.0, gt=0)


class _Weighted(_Section):
    weight: float = Field(1.0, gt=0)


class _Named(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    tokens: int = Field(8192, gt=0)


class RemoteFilesSource(_RemoteFiles, _Weighted):
    pass


class RemoteGeneratedSource(_RemoteGenerated, _Weighted):
    pass


class RemoteFilesSet(_RemoteFiles, _Named):
    pass


class RemoteGeneratedSet(_RemoteGenerated, _Named):
    pass


class RemoteDataSection(DataSection):
    """``data`` over HTTP: ``files`` and ``generated`` sources only (a ``dataset`` source could
    reach the Hub or run a loading script on the server)."""

    sources: list[
        Annotated[RemoteFilesSource | RemoteGeneratedSource, Field(discriminator="kind")]
    ] = Field(
        default_factory=lambda: [RemoteGeneratedSource(kind="generated")],
        min_length=1,
        max_length=16,
    )


class RemoteEvalSection(EvalSection):
    sets: list[Annotated[RemoteFilesSet | RemoteGeneratedSet, Field(discriminator="kind")]] = Field(
        default_factory=list, max_length=1
    )


class RemoteSearchSpec(SearchSpec):
    """The spec schema of ``POST /jobs`` (see the module doc)."""

    name: str = Field("job", pattern=SPEC_NAME_PATTERN)
    data: RemoteDataSection = Field(default_factory=RemoteDataSection)
    eval: RemoteEvalSection = Field(default_factory=RemoteEvalSection)
    ray: RemoteRaySection = Field(default_factory=RemoteRaySection)


class JobRequest(BaseModel):
    """Body of ``POST /jobs``: a spec (a mapping; YAML is parsed by the client) and an
    optional job id."""

    model_config = ConfigDict(extra="forbid")
    spec: RemoteSearchSpec = Field(..., description="search spec (see search_spaces/*.yaml)")
    job_id: str | None = Field(
        None, pattern=JOB_ID_PATTERN, max_length=JOB_ID_MAX, description="default: NAME-TIME-XXXX"
    )


class ExportRequest(BaseModel):
    """Body of ``POST /jobs/{job_id}/exports`` (``point``: a front point's id or ``parent``)."""

    model_config = ConfigDict(extra="forbid")
    point: str = Field(..., pattern=JOB_ID_PATTERN, max_length=JOB_ID_MAX)
    format: Literal["onnx", "tensorrt", "hf"] = "onnx"


def parse_body(body: bytes, model: type[BaseModel]) -> BaseModel:
    """A JSON body as ``model`` (strict types); ``SpecError`` (422) or ``BodyTooLarge`` (413)."""
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"request body over {MAX_BODY_BYTES // 1024} KiB")
    try:
        data = json.loads(body, parse_float=_json_number)
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"body: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    check_depth(data, "body")
    if not isinstance(data, dict):
        raise SpecError("body: must be a JSON object")
    spec = data.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("ray"), dict):
        refuse_cluster_keys(spec["ray"])
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise SpecError(_describe_body(exc)) from None


def _describe_body(exc: ValidationError) -> str:
    """``nas.spec``'s one-line description without the union tags pydantic puts in a location
    (``spec.data.sources.0.files.files`` -> ``spec.data.sources.0.files``)."""
    errors = exc.errors()
    err = errors[0]
    parts = [p for p in err["loc"] if not str(p).startswith("function-")]
    loc = ".".join(
        str(p)
        for i, p in enumerate(parts)
        if not (i and isinstance(parts[i - 1], int) and p in ("files", "generated"))
    )
    where, _, loc = loc.partition(".") if loc.startswith("spec.") else ("body", "", loc)
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key '{loc}'"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: '{loc or '<root>'}': {err['msg'].removeprefix('Value error, ')}{more}"


def refuse_cluster_keys(ray: dict) -> None:
    for key in ("address", "storage"):
        if ray.get(key) is not None:
            raise SpecError(
                f"spec: 'ray.{key}' cannot be set over HTTP: jobs run on the server's own Ray "
                "and store their results in its results folder"
            )


def _json_number(text: str) -> float | int:
    """JSON has one number type: ``570.0`` is the integer 570 (as JSON Schema sees it), so an
    integral value is an ``int`` for the strict validation of integer fields."""
    value = float(text)
    return int(value) if value.is_integer() else value


def check_depth(data: object, what: str) -> None:
    """``SpecError`` when ``data`` nests deeper than ``MAX_DEPTH`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise SpecError(f"{what}: nested deeper than {MAX_DEPTH} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


class Confinement:
    """The server's allowed roots (real paths) and the check of a remote spec against them."""

    def __init__(self, data_roots: list[Path]):
        self.data_roots = [Path(os.path.realpath(r)) for r in data_roots]

    def describe(self) -> str:
        return ", ".join(map(str, self.data_roots)) or "none (start nas serve with --data-root)"

    def spec(self, raw: RemoteSearchSpec, job_dir: Path) -> SearchSpec:
        """The ``SearchSpec`` of a request, every path resolved and confined (see module doc)."""
        roots = [*self.data_roots, Path(os.path.realpath(job_dir))]
        source = raw.model.source
        if source not in DEFAULT_MODELS:
            source = self._path(source, roots, "model.source", folder_ok=True)
        profiles = [self._path(f, roots, "hardware.profiles") for f in raw.hardware.profiles]
        data = raw.model_dump(mode="json")
        data["model"]["source"] = source
        for where, items in (
            ("data.sources", data["data"]["sources"]),
            ("eval.sets", data["eval"]["sets"]),
        ):
            for i, item in enumerate(items):
                if item["kind"] == "files":
                    item["files"] = [
                        self._file(f, roots, f"{where}.{i}.files") for f in item["files"]
                    ]
        data["hardware"]["profiles"] = profiles
        data["ray"] = RaySection(**data["ray"]).model_dump(mode="json")
        return SearchSpec.model_validate(data)

    def _file(self, value: str, roots: list[Path], field: str) -> str:
        """A text file: under the roots, or ``builtin:NAME`` (a text shipped in ``nas/data``)."""
        if value.startswith(BUILTIN_PREFIX):
            builtin = str(BUILTIN_DATA / value.removeprefix(BUILTIN_PREFIX))
            return self._path(builtin, [BUILTIN_DATA], field)
        return self._path(value, roots, field)

    def _path(self, value: str, roots: list[Path], field: str, folder_ok: bool = False) -> str:
        refused = PathRefused(
            f"spec: '{field}': {value[:200]!r} is not a file this server lets clients use "
            f"(allowed: existing files under {self.describe()} or the job's folder)"
        )
        if not value or "\0" in value:
            raise refused
        path = Path(value)
        if not path.is_absolute():
            if not self.data_roots:
                raise refused
            path = self.data_roots[0] / path
        lexical = Path(os.path.normpath(path))
        if not _inside(lexical, roots):  # refused before anything on disk is looked at
            raise refused
        try:
            real = Path(os.path.realpath(lexical))
            usable = real.is_file() or (folder_ok and real.is_dir())
        except (OSError, ValueError):
            raise refused from None
        if not _inside(real, roots) or not usable:
            raise refused
        return str(real)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)

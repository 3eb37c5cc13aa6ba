"""TensorRT engines from the exported ONNX graphs, through the official TensorRT Python API.

``build_engine`` parses an ONNX file (``trt.OnnxParser``), adds one optimisation profile for
the shapes a deployment needs (min / opt / max of batch, sequence and past length), and
serialises the engine (``builder.build_serialized_network``). Precision lives in the graph:
TensorRT 11 builds strongly typed networks only (the FP16/BF16 builder flags are gone), so a
reduced-precision engine is built from an ONNX graph exported in that dtype; on TensorRT
versions without strong typing the matching builder flag is set instead.

``tensorrt`` is imported lazily; without it every entry point raises ``TensorRTUnavailable``
with one line saying so.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from compress.atomic import atomic_write_bytes, atomic_write_json
from compress.errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16")


class TensorRTUnavailable(UserError):
    """The ``tensorrt`` Python package cannot be imported on this machine."""


class EngineBuildError(UserError):
    """TensorRT could not parse the ONNX graph or build the engine."""


@dataclass(frozen=True)
class EngineShapes:
    """The optimisation profile: ``opt`` values are the spec's; ``max`` bounds what runs."""

    batch: int = 1
    seq: int = 256
    context: int = 256
    max_batch: int | None = None
    max_seq: int | None = None
    max_context: int | None = None

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        """name -> (min, opt, max) for the axes batch, seq, past."""
        return {
            "batch": (1, self.batch, max(self.batch, self.max_batch or self.batch)),
            "seq": (1, self.seq, max(self.seq, self.max_seq or self.seq)),
            "past": (1, self.context, max(self.context, self.max_context or self.context)),
        }


def import_tensorrt():
    """The ``tensorrt`` module, or ``TensorRTUnavailable`` (one line) when it is missing."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install raising OSError/RuntimeError
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TensorRTUnavailable(
            f"TensorRT is not installed here ({reason}): install the 'tensorrt' package on a "
            "machine with an NVIDIA GPU (pip install 'nas-llm[tensorrt]'), or export with "
            "--format onnx"
        ) from None
    return trt


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    shapes: EngineShapes,
    precision: str = "fp32",
    decode: bool = False,
    workspace_mib: int | None = None,
) -> dict:
    """Build and write one engine; returns a record (TensorRT version, profile, precision).

    Profile: ``input_ids`` (batch, seq), optimised for ``shapes.seq`` tokens, or for one
    token with ``decode=True``; caches (batch, kv_heads, past, head_dim) optimised for
    ``shapes.context``. Raises ``TensorRTUnavailable``, or ``EngineBuildError`` naming the
    first parser error.
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation = trt.NetworkDefinitionCreationFlag
    strongly_typed = hasattr(creation, "STRONGLY_TYPED")
    flags = 0
    if strongly_typed:
        flags |= 1 << int(creation.STRONGLY_TYPED)
    elif hasattr(creation, "EXPLICIT_BATCH"):  # TensorRT 8.x
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {first}")
    config = builder.create_builder_config()
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if not strongly_typed and precision != "fp32":
        config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
    ranges = shapes.ranges()
    seq_range = (1, 1, ranges["seq"][2]) if decode else ranges["seq"]
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = tuple(tensor.shape)
        if tensor.name == "input_ids":
            triple = [(b, s) for b, s in zip(ranges["batch"], seq_range, strict=True)]
        else:  # a past cache: (batch, kv_heads, past, head_dim)
            triple = [
                (b, dims[1], p, dims[3])
                for b, p in zip(ranges["batch"], ranges["past"], strict=True)
            ]
        profile.set_shape(tensor.name, *triple)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path}")
    atomic_write_bytes(engine_path, bytes(serialized))
    return {
        "engine": str(engine_path),
        "onnx": str(onnx_path),
        "tensorrt": trt.__version__,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": {k: list(v) for k, v in ranges.items()},
        "decode": decode,
    }


INT8_REFUSAL = (
    "int8 subblocks are onnxruntime's dynamic quantization, which TensorRT does not run: "
    "export this student as onnx, or search without int8 variants for TensorRT"
)


def export_tensorrt(
    model,
    out_dir: str | os.PathLike,
    shapes: EngineShapes = EngineShapes(),
    precision: str = "fp32",
    prompt_ids=None,
) -> dict:
    """ONNX export (``compress.export_onnx``, pair layout) then one engine per graph, in ``out_dir``.

    TensorRT is checked first, so a machine without it fails in one line before exporting.
    For fp16/bf16 the ONNX graphs are exported from a copy of ``model`` in that dtype and
    the onnxruntime parity check is skipped (the CPU runtime lacks those kernels).
    """
    import copy

    import torch

    from compress.export.nas_llm_layers import is_int8
    from compress.export_onnx import DECODE_FILE, PREFILL_FILE, export_onnx

    if is_int8(model):
        raise EngineBuildError(INT8_REFUSAL)
    import_tensorrt()
    if precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    out = Path(out_dir)
    if precision != "fp32":
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = copy.deepcopy(model).to(dtype)
    export_onnx(model, out, parity=precision == "fp32", prompt_ids=prompt_ids, layout="pair")
    records = [
        build_engine(out / PREFILL_FILE, out / "prefill.engine", shapes, precision),
        build_engine(out / DECODE_FILE, out / "decode.engine", shapes, precision, decode=True),
    ]
    record = {"shapes": asdict(shapes), "precision": precision, "engines": records}
    atomic_write_json(out / "tensorrt.json", record)
    return record

"""TensorRT timing through the official Python API: ONNX parser -> builder -> engine -> context.

``tensorrt`` is imported lazily; where it (or a CUDA torch) is not importable, ``TensorRTBackend()``
raises ``BackendUnavailable`` with one line that says so. Device buffers are torch CUDA tensors;
time is measured with CUDA events around ``execute_async_v3`` on the current stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compress.errors import UserError


class BackendUnavailable(UserError):
    """The requested latency backend cannot run on this machine (library or device missing)."""


def _import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install raising OSError
        raise BackendUnavailable(
            f"backend 'tensorrt' needs the TensorRT Python package and an NVIDIA GPU "
            f"(pip install 'nas-llm[tensorrt]'); import failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return trt


class TensorRTBackend:
    """Builds one engine per ONNX graph at fixed shapes and times it on an execution context."""

    name = "tensorrt"
    _PRECISIONS = ("fp32", "fp16", "bf16")

    def __init__(self, precision: str = "fp32", workspace_mib: int = 4096):
        self.trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'tensorrt' needs a CUDA GPU; torch sees none")
        if precision not in self._PRECISIONS:
            raise BackendUnavailable(
                f"backend 'tensorrt' supports precisions {self._PRECISIONS}, not {precision!r}"
            )
        self.torch = torch
        self.precision = precision
        self.workspace_mib = workspace_mib
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)

    def version(self) -> str:
        return str(self.trt.__version__)

    def device(self) -> str:
        return self.torch.cuda.get_device_name(0)

    def build_engine(self, onnx_path: Path, input_shapes: dict[str, tuple[int, ...]]):
        """Parse the ONNX file, set precision flags and a fixed-shape optimisation profile."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT could not parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mib << 20)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        profile = builder.create_optimization_profile()
        for name, shape in input_shapes.items():
            profile.set_shape(name, shape, shape, shape)  # min = opt = max: the phase's shapes
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailable(f"TensorRT failed to build an engine for {onnx_path.name}")
        return self.runtime.deserialize_cuda_engine(serialized)

    def prepare(self, onnx_path: Path, inputs: dict) -> Callable[[], float]:
        """Engine + context with bound buffers; returns a function running once -> ms."""
        torch, trt = self.torch, self.trt
        shapes = {name: tuple(t.shape) for name, t in inputs.items()}
        engine = self.build_engine(onnx_path, shapes)
        context = engine.create_execution_context()
        buffers = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                buf = inputs[name].to("cuda").contiguous()
                context.set_input_shape(name, tuple(buf.shape))
            else:
                shape = tuple(context.get_tensor_shape(name))
                dtype = _torch_dtype(torch, trt, engine.get_tensor_dtype(name))
                buf = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, buf.data_ptr())
            buffers[name] = buf
        stream = torch.cuda.current_stream()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run_ms() -> float:
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        run_ms.keepalive = (engine, context, buffers)  # type: ignore[attr-defined]
        return run_ms


def _torch_dtype(torch, trt, dtype):
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]

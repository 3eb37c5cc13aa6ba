"""Latency backends and the graphs they time (used by ``compress.latency``).

Graphs have static shapes. Prefill: B x S tokens. Decode: B x 1 token; every attention subblock
that keeps a KV cache takes ``past_key_i``/``past_value_i`` (B, kv_heads, C, head_dim) and
returns the concatenated cache. A backend's ``prepare(graph, workdir)`` returns a function that
runs the graph once and returns milliseconds.
"""

from __future__ import annotations

import copy
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError
from compress.model import BlockModel
from compress.quantize_onnx import int8_linears, quantize_int8_matmuls
from compress.tensorrt_backend import BackendUnavailable, TensorRTBackend

BACKENDS = ("onnxruntime-cpu", "torch-cpu", "torch-cuda", "tensorrt")
Report = Callable[[str], None]


@dataclass(frozen=True)
class MeasureSettings:
    """How to measure. ``repeats=None``: as many rounds as fit ``budget_s`` per graph (within
    ``min_repeats``..``max_repeats``). ``threads=None``: all cores (CPU backends)."""

    backend: str = "onnxruntime-cpu"
    phase: str = "prefill"
    batch: int = 1
    seq: int = 128
    context: int = 512
    precision: str = "fp32"
    threads: int | None = None
    stack: int = 8
    warmup: int = 3
    repeats: int | None = None
    budget_s: float = 1.5
    min_block_ms: float = 50.0  # one timing sample: back-to-back runs lasting this long
    min_repeats: int = 10
    max_repeats: int = 200
    compile: bool = False  # torch-cuda: torch.compile the graphs

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if self.phase not in ("prefill", "decode"):
            raise UserError(f"phase must be prefill or decode, got {self.phase!r}")
        if min(self.batch, self.seq, self.context, self.stack) < 1:
            raise UserError("batch, seq, context and stack must be >= 1")

    @property
    def tokens(self) -> int:
        """New tokens per sequence in one run: S for prefill, 1 for decode."""
        return self.seq if self.phase == "prefill" else 1


@dataclass
class Graph:
    """A module to time with named example inputs (fixed shapes) and named outputs."""

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]


# --- graphs ---------------------------------------------------------------------------------
class _Stack(nn.Module):
    """Subblocks applied in sequence to the residual stream; decode attention keeps its cache.

    forward(x, *pasts) with one (key, value) pair per cached subblock -> (x, *new pasts).
    """

    def __init__(self, subblocks: list[nn.Module], decode: bool):
        super().__init__()
        self.subblocks = nn.ModuleList(subblocks)
        self.decode = decode

    def forward(self, x: torch.Tensor, *pasts: torch.Tensor):
        out, i = [], 0
        for sub in self.subblocks:
            if self.decode and getattr(sub, "has_kv_cache", False):
                delta, k, v = sub.forward_cached(x, pasts[i], pasts[i + 1])
                out += [k, v]
                i += 2
            else:
                delta = sub(x)
            x = x + delta
        return (x, *out) if out else x


class _Fixed(nn.Module):
    """Embeddings -> final norm -> LM head: (B, T) ids -> (B, T, vocab) logits."""

    def __init__(self, model: BlockModel):
        super().__init__()
        self.embed_tokens, self.norm, self.lm_head = model.embed_tokens, model.norm, model.lm_head

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.embed_tokens(ids)))


class _Whole(nn.Module):
    """A whole student: prefill ids -> logits; decode (ids, *pasts) -> (logits, *new pasts)."""

    def __init__(self, model: BlockModel, decode: bool):
        super().__init__()
        self.model, self.decode = model, decode
        self.cached = [getattr(layer.attention, "has_kv_cache", False) for layer in model.layers]

    def forward(self, ids: torch.Tensor, *pasts: torch.Tensor):
        if not self.decode:
            return self.model(ids)
        past, i = [], 0
        for has in self.cached:
            past.append((pasts[i], pasts[i + 1]) if has else None)
            i += 2 if has else 0
        logits, new = self.model.forward_cached(ids, past)
        return (logits, *[t for kv in new if kv is not None for t in kv])


def _kv_inputs(subblocks, s: MeasureSettings, head_dim: int, dtype) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, sub in enumerate(subblocks):
        if s.phase == "decode" and getattr(sub, "has_kv_cache", False):
            shape = (s.batch, sub.num_kv_heads, sub.cache_tokens(s.context), head_dim)
            out[f"past_key_{i}"] = torch.randn(shape, generator=gen).to(dtype)
            out[f"past_value_{i}"] = torch.randn(shape, generator=gen).to(dtype)
    return out


# a subblock this large cannot stay cached from one copy of a stack to the next on today's
# hardware (an EPYC L3 slice is 32 MB, an H100's L2 50 MB): its stack repeats one copy
UNCACHEABLE_BYTES = 64 * 2**20


def stack_graph(subblock: nn.Module | None, s: MeasureSettings, shape, dtype) -> Graph:
    """``stack`` deep copies of ``subblock`` with slightly different weights (None: the empty
    stack, the run overhead); one copy repeated when it is ``UNCACHEABLE_BYTES`` or larger."""
    if subblock is None:
        subs = []
    elif sum(p.numel() * p.element_size() for p in subblock.parameters()) >= UNCACHEABLE_BYTES:
        subs = [subblock] * s.stack  # a real model's big block: no 8x copy of its weights
    else:
        subs = [copy.deepcopy(subblock) for _ in range(s.stack)]
        with torch.no_grad():  # distinct values per copy: exporters merge identical initialisers,
            for i, sub in enumerate(subs):  # and shared weights would stay in cache across copies
                for param in sub.parameters():
                    param.mul_(1.0 + 1e-3 * (i + 1))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch, s.tokens, shape.hidden_size, generator=gen).to(dtype)
    pasts = _kv_inputs(subs, s, shape.head_dim, dtype)
    module = _Stack(subs, s.phase == "decode").eval()
    outputs = ["x_out"] + [n.replace("past_", "present_") for n in pasts]
    return Graph(module, {"x": x, **pasts}, outputs)


def fixed_graph(model: BlockModel, s: MeasureSettings) -> Graph:
    ids = torch.randint(0, model.shape.vocab_size, (s.batch, s.tokens), generator=_gen(1))
    return Graph(_Fixed(model).eval(), {"ids": ids}, ["logits"])


def whole_graph(model: BlockModel, s: MeasureSettings) -> Graph:
    dtype = model.norm.weight.dtype
    ids = torch.randint(0, model.shape.vocab_size, (s.batch, s.tokens), generator=_gen(1))
    attns = [layer.attention for layer in model.layers]
    pasts = _kv_inputs(attns, s, model.shape.head_dim, dtype)
    outputs = ["logits"] + [n.replace("past_", "present_") for n in pasts]
    return Graph(_Whole(model, s.phase == "decode").eval(), {"ids": ids, **pasts}, outputs)


def in_float32(graph: Graph) -> Graph:
    """``graph`` itself when its module is float32, else a float32 copy (module and inputs)."""
    if all(p.dtype == torch.float32 for p in graph.module.parameters()):
        return graph
    inputs = {k: v.float() if v.is_floating_point() else v for k, v in graph.inputs.items()}
    return Graph(copy.deepcopy(graph.module).float(), inputs, graph.outputs)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def export_onnx(graph: Graph, path: Path) -> Path:
    """TorchScript-based exporter (``dynamo=False``): exports these static-shape graphs with
    explicit past-KV inputs quickly on torch 2.x and gives onnxruntime a lean graph; the dynamo
    exporter is the fallback."""
    args = tuple(graph.inputs.values())
    names = dict(input_names=list(graph.inputs), output_names=graph.outputs)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph.module, args, str(path), dynamo=False, opset_version=18, **names
            )
        except Exception:
            torch.onnx.export(graph.module, args, str(path), dynamo=True, **names)
    return path


# --- backends -------------------------------------------------------------------------------
def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


class OnnxRuntimeCPU:
    """onnxruntime CPUExecutionProvider, fixed intra-op threads, sequential execution, no
    spinning (the measuring machine may be shared), all graph optimisations."""

    name = "onnxruntime-cpu"

    def __init__(self, s: MeasureSettings):
        import onnxruntime as ort

        if s.precision != "fp32":
            raise UserError("backend onnxruntime-cpu measures fp32 only; use --precision fp32")
        self.ort, self.threads = ort, s.threads or os.cpu_count() or 1

    def version(self) -> str:
        return f"onnxruntime {self.ort.__version__}"

    def device(self) -> str:
        return cpu_name()

    def prepare(self, graph: Graph, workdir: Path) -> Callable[[], float]:
        graph = in_float32(graph)  # a bfloat16/float16 run's model is timed at the profile's fp32
        path = export_onnx(graph, workdir / f"g{len(list(workdir.iterdir()))}.onnx")
        quantize_int8_matmuls(path, graph.module)  # int8 subblocks time as deployed
        so = self.ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = self.threads, 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = self.ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        path.unlink(missing_ok=True)  # the session holds the weights
        feeds = {k: v.numpy() for k, v in graph.inputs.items()}

        def run_ms() -> float:
            t0 = time.perf_counter()
            session.run(None, feeds)
            return (time.perf_counter() - t0) * 1e3

        return run_ms


_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    """Eager torch (optionally torch.compile on CUDA); CPU wall clock or CUDA events."""

    def __init__(self, s: MeasureSettings, cuda: bool):
        if cuda and not torch.cuda.is_available():
            raise BackendUnavailable("backend 'torch-cuda' needs a CUDA GPU; torch sees none")
        if not cuda and s.precision == "fp16":
            raise UserError("backend torch-cpu measures fp32 or bf16, not fp16")
        self.name = "torch-cuda" if cuda else "torch-cpu"
        self.cuda, self.dtype, self.compile = cuda, _TORCH_DTYPES[s.precision], s.compile
        self.threads = None if cuda else (s.threads or os.cpu_count())
        if self.threads:
            torch.set_num_threads(self.threads)

    def version(self) -> str:
        return f"torch {torch.__version__}"

    def device(self) -> str:
        return torch.cuda.get_device_name(0) if self.cuda else cpu_name()

    def prepare(self, graph: Graph, workdir: Path) -> Callable[[], float]:
        dev = "cuda" if self.cuda else "cpu"
        params = list(graph.module.parameters())
        if all(p.device.type == dev and p.dtype == self.dtype for p in params):
            module = graph.module.eval()  # already as timed: no copy of a whole student
        else:
            module = copy.deepcopy(graph.module).to(dev, self.dtype).eval()
        inputs = [
            t.to(dev, self.dtype) if t.is_floating_point() else t.to(dev)
            for t in graph.inputs.values()
        ]
        fn = torch.compile(module) if self.compile else module
        if not self.cuda:

            def run_ms() -> float:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    fn(*inputs)
                    return (time.perf_counter() - t0) * 1e3

            return run_ms
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run_cuda_ms() -> float:
            with torch.inference_mode():
                torch.cuda.synchronize()
                start.record()
                fn(*inputs)
                end.record()
                end.synchronize()
                return float(start.elapsed_time(end))

        return run_cuda_ms


class TensorRT:
    """ONNX export (as for onnxruntime) + ``compress.tensorrt_backend`` engine timing."""

    name = "tensorrt"

    def __init__(self, s: MeasureSettings):
        self.trt, self.threads = TensorRTBackend(s.precision), None

    def version(self) -> str:
        return f"tensorrt {self.trt.version()}"

    def device(self) -> str:
        return self.trt.device()

    def prepare(self, graph: Graph, workdir: Path) -> Callable[[], float]:
        graph = in_float32(graph)  # a bfloat16/float16 run's model is timed at the profile's fp32
        if int8_linears(graph.module):
            from compress.export_tensorrt import INT8_REFUSAL

            raise UserError(INT8_REFUSAL)
        path = export_onnx(graph, workdir / f"g{len(list(workdir.iterdir()))}.onnx")
        return self.trt.prepare(path, graph.inputs)


def get_backend(s: MeasureSettings):
    """The backend object for ``s.backend``; raises ``BackendUnavailable`` in one line."""
    if s.backend == "onnxruntime-cpu":
        return OnnxRuntimeCPU(s)
    if s.backend in ("torch-cpu", "torch-cuda"):
        return TorchBackend(s, cuda=s.backend == "torch-cuda")
    return TensorRT(s)

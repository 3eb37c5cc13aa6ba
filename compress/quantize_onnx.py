"""Quantize an exported graph's MatMuls where the module computes in int8.

``int8`` subblocks (``compress.families.int8``) compute their linear layers as onnxruntime's
dynamic quantization does (``compress.export.nas_llm_layers.DynamicInt8Linear``) but export as
plain float MatMuls. ``quantize_int8_matmuls`` finds those MatMuls in the graph by their
constant weight (any exporter, any node names) and has onnxruntime's quantizer rewrite exactly
them: uint8 inputs per tensor, int8 weights per output channel, as the torch module computes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from compress.errors import UserError
from compress.export.nas_llm_layers import DynamicInt8Linear


class QuantizeError(UserError):
    """The graph of a module with int8 layers could not be quantized to match it."""


def int8_linears(module: nn.Module) -> list[DynamicInt8Linear]:
    return [m for m in module.modules() if isinstance(m, DynamicInt8Linear)]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def quantize_int8_matmuls(path: str | os.PathLike, module: nn.Module) -> int:
    """Rewrite the graph at ``path`` (in place) so that the MatMuls of ``module``'s int8 linear
    layers run in int8; returns how many. A module without int8 layers leaves the file as is.
    Raises ``QuantizeError`` when some of those layers have no MatMul in the graph."""
    linears = int8_linears(module)
    if not linears:
        return 0
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    wanted = {_digest(m.weight.detach().float().T.numpy()) for m in linears}
    graph = onnx.load(str(path), load_external_data=False)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.graph.initializer):
        raise QuantizeError(
            f"{path.name}: int8 subblocks in a graph with external weights (over 2 GB) are not "
            "supported yet; search this parent without int8 variants"
        )
    weights = {init.name: init for init in graph.graph.initializer}
    nodes, found = [], set()
    for i, node in enumerate(graph.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        digest = _digest(numpy_helper.to_array(weights[node.input[1]]))
        if digest in wanted:
            node.name = node.name or f"int8_matmul_{i}"
            nodes.append(node.name)
            found.add(digest)
    if found != wanted:
        raise QuantizeError(
            f"{path.name}: {len(wanted - found)} of {len(wanted)} int8 linear layers have no "
            "MatMul with their weight in the exported graph"
        )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process
    try:
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            named = Path(tmp) / "named.onnx"
            onnx.save(graph, str(named))
            out = Path(tmp) / "quantized.onnx"
            quantize_dynamic(
                named,
                out,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                extra_options={"MatMulConstBOnly": True},
            )
            os.replace(out, path)
    finally:
        logging.getLogger().setLevel(level)
    return len(nodes)

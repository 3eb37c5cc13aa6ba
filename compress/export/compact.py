"""Shrink an exported ONNX graph to (about) its weights: each weight stored once, no
exporter annotations.

- Tied weights: the TorchScript exporter folds ``lm_head`` into a transposed copy of the
  embedding matrix; ``compact_onnx`` replaces any 2-D initializer that equals the transpose
  of another by a ``Transpose`` node reading that one (onnxruntime folds it back in memory
  at load time, so the file holds the matrix once and the speed is unchanged).
- The dynamo exporter stores per-node metadata (stack traces, module names) and shape
  annotations (``value_info``) that are larger than the weights of a tiny model; both are
  optional in ONNX and dropped.

Initializers kept in an external data file stay where they are (their offsets are reused).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def compact_onnx(path: str | os.PathLike) -> dict:
    """Rewrite the graph at ``path`` in place; returns bytes before/after and tied pairs."""
    import onnx
    from onnx import helper, numpy_helper

    path = Path(path)
    before = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del graph.value_info[:]
    inline = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.data_location != onnx.TensorProto.EXTERNAL and len(init.dims) == 2
    }
    tied: list[tuple[str, str]] = []  # (kept, replaced by its transpose)
    used: set[str] = set()
    by_shape: dict[tuple, list[str]] = {}
    for name, array in inline.items():
        by_shape.setdefault(array.shape, []).append(name)
    for name, array in inline.items():
        if name in used:
            continue
        for other in by_shape.get(array.shape[::-1], []):
            if other != name and other not in used and np.array_equal(array.T, inline[other]):
                tied.append((name, other))
                used.update((name, other))
                break
    if tied:
        drop = {other for _, other in tied}
        kept = [init for init in graph.initializer if init.name not in drop]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for keep, other in tied:
            graph.node.insert(0, helper.make_node("Transpose", [keep], [other], perm=[1, 0]))
    onnx.save_model(model, str(path))
    return {"bytes_before": before, "bytes_after": path.stat().st_size, "tied": tied}

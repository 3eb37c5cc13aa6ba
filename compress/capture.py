"""Activation capture: the parent's per-layer subblock inputs and outputs, streamed to disk.

One pass of a ``BlockModel`` over token sequences (N, S) records, for every layer ``l``:

- ``L{l:03d}.x.npy``    the residual stream before the attention subblock (its input),
- ``L{l:03d}.attn.npy`` the attention subblock's output (its delta),
- ``L{l:03d}.ffn.npy``  the FFN subblock's output (its delta); the FFN's input is ``x + attn``,

each an (N * S, hidden) ``.npy`` array at the run dtype (float32, float16, or bfloat16 kept
as its raw 16-bit words, ``<u2``, since numpy has no bfloat16), rows in
sequence order (row ``n * S + s`` is token ``s`` of sequence ``n``). Arrays are written with
plain sequential file writes (nothing but one batch is held in RAM) into a temporary folder
that is renamed into place after ``meta.json``, so a folder that exists is complete; a resumed
job whose tokens hash to the same value reuses it. ``Activations`` reads them memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress.errors import UserError

ARRAYS = ("x", "attn", "ffn")
_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
META = "meta.json"


class CaptureError(UserError):
    """A capture folder is missing, incomplete or does not match what was asked for."""


@dataclass(frozen=True)
class CaptureMeta:
    num_sequences: int
    seq_len: int
    hidden: int
    num_layers: int
    dtype: str
    tokens_sha256: str

    @property
    def num_tokens(self) -> int:
        return self.num_sequences * self.seq_len


def tokens_digest(ids: torch.Tensor) -> str:
    """sha256 of the int64 token ids (identifies which tokens a capture holds)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def array_path(folder: Path, layer: int, name: str) -> Path:
    return Path(folder) / f"L{layer:03d}.{name}.npy"


def layer_files(layer: int) -> list[str]:
    """The file names of one layer's arrays (what a task training that layer reads)."""
    return [array_path(Path(), layer, name).name for name in ARRAYS]


def read_meta(folder: str | os.PathLike) -> CaptureMeta | None:
    """The folder's metadata, or None when the folder is absent or unfinished."""
    path = Path(folder) / META
    if not path.is_file():
        return None
    return CaptureMeta(**json.loads(path.read_text()))


@torch.no_grad()
def capture(
    adapter,
    ids: torch.Tensor,
    folder: str | os.PathLike,
    batch_size: int = 8,
    dtype: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> CaptureMeta:
    """Run ``adapter`` (a ``BlockModel``) over ``ids`` (N, S) and write the arrays to ``folder``.

    Returns the folder's metadata. A complete folder holding the same tokens (same hash, same
    dtype) is reused as it is; a stale or unfinished one is replaced. ``progress(done, total)``
    is called after each batch of sequences.
    """
    folder = Path(folder)
    if dtype not in _DTYPES:
        raise CaptureError(f"capture dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if ids.dim() != 2 or ids.shape[0] == 0:
        raise CaptureError(f"capture needs token ids of shape (N>0, S), got {tuple(ids.shape)}")
    digest = tokens_digest(ids)
    existing = read_meta(folder)
    if existing is not None and existing.tokens_sha256 == digest and existing.dtype == dtype:
        return existing
    n, s = ids.shape
    hidden = adapter.shape.hidden_size
    meta = CaptureMeta(n, s, hidden, adapter.num_layers, dtype, digest)
    np_dtype = np.dtype(_DTYPES[dtype])
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    handles = {}
    try:
        for layer in range(adapter.num_layers):
            for name in ARRAYS:
                fh = open(array_path(tmp, layer, name), "wb")  # closed below
                header = {"descr": np.lib.format.dtype_to_descr(np_dtype), "fortran_order": False}
                np.lib.format.write_array_header_1_0(fh, {**header, "shape": (n * s, hidden)})
                handles[layer, name] = fh

        def write(layer: int, name: str, t: torch.Tensor) -> None:
            handles[layer, name].write(memoryview(to_numpy(t.reshape(-1, hidden), dtype)))

        for start in range(0, n, batch_size):
            x = adapter.embed(ids[start : start + batch_size])  # (B, S, hidden)
            for layer in range(adapter.num_layers):
                attn = adapter.attention(layer)(x)
                write(layer, "x", x)
                write(layer, "attn", attn)
                x = x + attn
                ffn = adapter.ffn(layer)(x)
                write(layer, "ffn", ffn)
                x = x + ffn
            if progress is not None:
                progress(min(start + batch_size, n), n)
        for fh in handles.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        (tmp / META).write_text(json.dumps(meta.__dict__, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        for fh in handles.values():
            fh.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    """``t`` as a C-contiguous numpy array stored at ``dtype`` (bfloat16 as raw ``uint16``)."""
    if dtype == "bfloat16":
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return t.detach().to(getattr(torch, dtype)).contiguous().numpy()


def to_float32(array: np.ndarray, dtype: str) -> torch.Tensor:
    """A float32 tensor (a copy) of rows read from an array stored by ``to_numpy``."""
    if dtype == "bfloat16":
        words = torch.from_numpy(np.array(array, dtype=np.uint16).view(np.int16))
        return words.view(torch.bfloat16).float()
    return torch.from_numpy(np.array(array, dtype=np.float32))


class Activations:
    """Memory-mapped reader of one capture folder (see the module docstring for the layout)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        if meta is None:
            raise CaptureError(
                f"no finished activation capture in {self.folder}; run the capture stage again"
            )
        self.meta = meta
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    @property
    def num_sequences(self) -> int:
        return self.meta.num_sequences

    @property
    def seq_len(self) -> int:
        return self.meta.seq_len

    @property
    def num_tokens(self) -> int:
        return self.meta.num_tokens

    def array(self, layer: int, name: str) -> np.ndarray:
        """The raw (N * S, hidden) memmap of ``name`` in ``ARRAYS`` for ``layer``."""
        if name not in ARRAYS:
            raise ValueError(f"array name must be one of {ARRAYS}, got {name!r}")
        if not 0 <= layer < self.meta.num_layers:
            raise ValueError(f"layer {layer} outside 0..{self.meta.num_layers - 1}")
        key = (layer, name)
        if key not in self._maps:
            self._maps[key] = np.load(array_path(self.folder, layer, name), mmap_mode="r")
        return self._maps[key]

    def tokens(
        self, layer: int, kind: str, start: int = 0, stop: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the ``kind`` subblock for token rows [start, stop), float32 (n, hidden).

        Only those rows are read. Attention: (x, attn). FFN: (x + attn, ffn), summed in float32
        exactly as the model's residual stream is.
        """
        rows, dtype = slice(start, stop), self.meta.dtype
        x = to_float32(self.array(layer, "x")[rows], dtype)
        attn = to_float32(self.array(layer, "attn")[rows], dtype)
        if kind == "attention":
            return x, attn
        if kind == "ffn":
            return x + attn, to_float32(self.array(layer, "ffn")[rows], dtype)
        raise ValueError(f"subblock kind must be 'attention' or 'ffn', got {kind!r}")

    def sequences(
        self, layer: int, kind: str, index: torch.Tensor | list[int] | slice
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, S, hidden) float32, of the sequences picked by ``index``."""
        s = self.seq_len
        if isinstance(index, slice):
            first, last, _ = index.indices(self.num_sequences)
            inputs, targets = self.tokens(layer, kind, first * s, last * s)
            return inputs.view(-1, s, inputs.shape[-1]), targets.view(-1, s, targets.shape[-1])
        pairs = [self.tokens(layer, kind, int(i) * s, (int(i) + 1) * s) for i in index]
        inputs = torch.stack([p[0] for p in pairs])
        targets = torch.stack([p[1] for p in pairs])
        return inputs, targets

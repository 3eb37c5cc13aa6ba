"""The variant family contract and its registry (type name -> family).

Every hook a family needs raises until the family defines it, and ``register`` refuses a family
that leaves one out, so a forgotten hook is an error at import time, never a silent default.
Specs reach the hooks as ``compress.variants.VariantSpec`` (``kind``, ``type``, ``value``,
``option(name)``); modules follow the subblock contract of ``compress.blocks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from compress.shape import ModelShape
    from compress.variants import VariantSpec

# hooks every family must define (the rest have a documented meaning for "absent")
REQUIRED = ("params", "build", "empty", "recognise", "hf_block")


class Family:
    """One variant type. Class attributes describe its syntax, methods its behaviour.

    - ``type``: the name after ``kind:`` (``kv_heads`` in ``attention:kv_heads=2``);
    - ``kinds``: the subblock kinds it applies to;
    - ``takes_value``: the type carries a positive integer (``type=N``);
    - ``options``: further named positive integers allowed after the value, in canonical
      order (``attention:window=128,kv_heads=1``);
    - ``trainable``: BLD trains it (and the library stores it); ``homogeneous``: a candidate
      for the homogeneous students of ``diswot-evolution``;
    - ``bare_number``: the kind for which a bare number in a spec's ``space`` means this type.
    """

    type: str = ""
    kinds: tuple[str, ...] = ("attention", "ffn")
    takes_value: bool = False
    options: tuple[str, ...] = ()
    trainable: bool = True
    homogeneous: bool = False
    bare_number: str | None = None

    # --- syntax and validity ----------------------------------------------------------------
    def space_value(self, text: str, shape: ModelShape) -> int:
        """The integer value of a ``space`` entry ``type=text`` (ratios are the width family's)."""
        return int(text)

    def check(self, spec: VariantSpec, shape: ModelShape) -> None:
        """Raise ``ValueError`` when ``spec`` cannot be built for a parent of ``shape``."""

    # --- costs --------------------------------------------------------------------------------
    def params(self, spec: VariantSpec, shape: ModelShape) -> int:
        """Parameter count of the subblock (its norm included)."""
        raise self._missing("params")

    def kv_heads(self, spec: VariantSpec, shape: ModelShape) -> int:
        """KV heads the subblock keeps in its cache (0: no cache)."""
        return 0

    def kv_window(self, spec: VariantSpec) -> int:
        """Most tokens the subblock's KV cache holds (0: the whole context)."""
        return 0

    # --- modules ------------------------------------------------------------------------------
    def build(self, spec: VariantSpec, parent: nn.Module, init) -> nn.Module:
        """A fresh module initialised from the parent subblock (``init``: calibration data of
        that subblock, ``compress.builders.InitData``, or None for a data-free build)."""
        raise self._missing("build")

    def empty(self, spec: VariantSpec, arch) -> nn.Module:
        """A module of the right shapes for ``spec``, weights to be loaded (``arch``:
        ``compress.student.Architecture``)."""
        raise self._missing("empty")

    def recognise(self, kind: str, module: nn.Module, shape: ModelShape) -> VariantSpec | None:
        """The spec of ``module`` when this family built it, else None."""
        raise self._missing("recognise")

    def hf_block(self, spec: VariantSpec, shape: ModelShape) -> dict:
        """The subblock's entry in ``block_configs`` of the HF export (``modeling_nas_llm``)."""
        raise self._missing("hf_block")

    def _missing(self, hook: str) -> NotImplementedError:
        return NotImplementedError(f"variant family {self.type!r} does not define {hook}")


_REGISTRY: dict[str, Family] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: register one instance of ``cls`` under ``cls.type``."""
    if not cls.type or cls.type in _REGISTRY:
        raise ValueError(f"variant family type {cls.type!r} is empty or registered twice")
    left_out = [h for h in REQUIRED if getattr(cls, h) is getattr(Family, h)]
    if left_out:
        raise TypeError(f"variant family {cls.type!r} does not define {', '.join(left_out)}")
    _REGISTRY[cls.type] = cls()
    return cls


def family(vtype: str) -> Family:
    """The family registered for ``vtype``; ``ValueError`` naming the known types otherwise."""
    try:
        return _REGISTRY[vtype]
    except KeyError:
        raise ValueError(f"unknown variant type {vtype!r}; known: {sorted(_REGISTRY)}") from None


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_REGISTRY.values())


def recognise(kind: str, module: nn.Module, shape: ModelShape) -> VariantSpec:
    """The spec of a student's subblock: the first family that recognises the module."""
    for fam in _REGISTRY.values():
        if kind in fam.kinds:
            spec = fam.recognise(kind, module, shape)
            if spec is not None:
                return spec
    raise ValueError(f"no variant family recognises a {type(module).__name__} {kind} subblock")

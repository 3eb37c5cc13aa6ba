"""Variant specs: which replacement a subblock gets, as frozen, torch-free records.

Each spec has one canonical string, e.g. ``attention:parent``, ``attention:kv_heads=1``,
``attention:linear``, ``attention:noop``, ``ffn:parent``, ``ffn:width=768``, ``ffn:linear``,
``ffn:noop``. ``parse_space`` turns the entries of a spec's ``space`` section (FFN widths may be
ratios of the parent's width) into canonical specs for one model shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compress.shape import ModelShape

Kind = Literal["attention", "ffn"]
KINDS: tuple[str, ...] = ("attention", "ffn")
# variant type -> the kinds it applies to, and whether it takes an integer value
_TYPES = {
    "parent": (("attention", "ffn"), False),
    "noop": (("attention", "ffn"), False),
    "linear": (("attention", "ffn"), False),
    "kv_heads": (("attention",), True),
    "width": (("ffn",), True),
}


@dataclass(frozen=True, order=True)
class VariantSpec:
    kind: str
    type: str
    value: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"variant kind must be one of {KINDS}, got {self.kind!r}")
        if self.type not in _TYPES:
            raise ValueError(f"unknown variant type {self.type!r}; known: {sorted(_TYPES)}")
        kinds, takes_value = _TYPES[self.type]
        if self.kind not in kinds:
            raise ValueError(f"variant type {self.type!r} does not apply to {self.kind}")
        if takes_value and (
            not isinstance(self.value, int) or isinstance(self.value, bool) or self.value < 1
        ):
            raise ValueError(
                f"{self.kind}:{self.type} needs a positive integer value, got {self.value!r}"
            )
        if not takes_value and self.value is not None:
            raise ValueError(f"{self.kind}:{self.type} takes no value")

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.kind}:{self.type}"
        return f"{self.kind}:{self.type}={self.value}"

    @property
    def is_parent(self) -> bool:
        return self.type == "parent"

    @property
    def trainable(self) -> bool:
        """Variants BLD trains: everything but the parent itself and no-ops."""
        return self.type not in ("parent", "noop")

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        """Inverse of ``str``; raises ``ValueError`` with the offending text."""
        try:
            kind, rest = text.strip().split(":", 1)
            if "=" in rest:
                vtype, value = rest.split("=", 1)
                return cls(kind, vtype, int(value))
            return cls(kind, rest)
        except ValueError as exc:
            raise ValueError(f"bad variant {text!r}: {exc}") from None

    def check(self, shape: ModelShape) -> None:
        """Raise ``ValueError`` if this variant cannot be built for ``shape``."""
        if self.type == "kv_heads":
            if self.value > shape.num_kv_heads or shape.num_heads % self.value:
                raise ValueError(
                    f"{self}: KV heads must divide the {shape.num_heads} query heads and be at most "
                    f"the parent's {shape.num_kv_heads}"
                )
        if self.type == "width" and self.value > shape.intermediate_size:
            raise ValueError(f"{self}: width exceeds the parent's {shape.intermediate_size}")

    def params(self, shape: ModelShape) -> int:
        """Parameter count of this subblock (norm weights included) for ``shape``."""
        h, hd = shape.hidden_size, shape.head_dim
        if self.type == "noop":
            return 0
        if self.type == "linear":
            return h * h + h
        if self.kind == "attention":
            kv = shape.num_kv_heads if self.type == "parent" else self.value
            q = shape.num_heads * hd
            bias = (q + 2 * kv * hd) if shape.attention_bias else 0
            return h * q + 2 * h * kv * hd + q * h + bias + h
        width = shape.intermediate_size if self.type == "parent" else self.value
        return 3 * h * width + h

    def kv_heads(self, shape: ModelShape) -> int:
        """KV heads this subblock keeps in its cache (0 for no-op and linear attention)."""
        if self.kind != "attention" or self.type in ("noop", "linear"):
            return 0
        return shape.num_kv_heads if self.type == "parent" else self.value


def parent_variant(kind: str) -> VariantSpec:
    return VariantSpec(kind, "parent")


def _entry(kind: str, entry, shape: ModelShape) -> VariantSpec:
    if isinstance(entry, bool):
        raise ValueError(f"bad {kind} variant {entry!r}")
    if isinstance(entry, int):
        return VariantSpec(kind, "kv_heads" if kind == "attention" else "width", entry)
    if isinstance(entry, float):
        if kind != "ffn" or not 0 < entry < 1:
            raise ValueError(f"bad {kind} variant {entry!r}: a ratio is an FFN width in (0, 1)")
        return VariantSpec("ffn", "width", max(1, round(entry * shape.intermediate_size)))
    text = str(entry).strip()
    if ":" in text:
        return VariantSpec.parse(text)
    if "=" in text:
        vtype, value = text.split("=", 1)
        value = value.strip()
        if kind == "ffn" and vtype.strip() == "width" and "." in value:
            return _entry(kind, float(value), shape)
        return VariantSpec(kind, vtype.strip(), int(value))
    try:
        return _entry(kind, float(text) if "." in text else int(text), shape)
    except ValueError:
        return VariantSpec(kind, text)


def parse_space(
    attention: list, ffn: list, shape: ModelShape
) -> tuple[list[VariantSpec], list[VariantSpec]]:
    """Canonical, checked, de-duplicated variants of each kind; ``parent`` always included."""
    out = []
    for kind, entries in (("attention", attention), ("ffn", ffn)):
        specs: list[VariantSpec] = [parent_variant(kind)]
        for entry in entries:
            try:
                spec = _entry(kind, entry, shape)
            except ValueError as exc:
                raise ValueError(f"space.{kind}: {exc}") from None
            if spec.kind != kind:
                raise ValueError(f"space.{kind}: {spec} is not an {kind} variant")
            try:
                spec.check(shape)
            except ValueError as exc:
                raise ValueError(f"space.{kind}: {exc}") from None
            if spec not in specs:
                specs.append(spec)
        out.append(specs)
    return out[0], out[1]

"""Variant specs: which replacement a subblock gets, as frozen, torch-free records.

Each spec has one canonical string, e.g. ``attention:parent``, ``attention:kv_heads=1``,
``attention:linear``, ``attention:noop``, ``attention:int8``, ``ffn:parent``, ``ffn:width=768``,
``ffn:linear``, ``ffn:noop``, ``ffn:int8``. ``parse_space`` turns the entries of a spec's ``space`` section (FFN widths may be
ratios of the parent's width) into canonical specs for one model shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compress.shape import ModelShape

Kind = Literal["attention", "ffn"]
KINDS: tuple[str, ...] = ("attention", "ffn")


def _family(vtype: str):
    """The family of a variant type (``compress.families``; imported here on first use)."""
    from compress.families import family

    return family(vtype)


def _positive(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, order=True)
class VariantSpec:
    """``kind:type``, ``kind:type=value`` or ``kind:type=value,option=N,...``: what the type
    accepts is its family's (``compress.families``), which every method here delegates to."""

    kind: str
    type: str
    value: int | None = None
    options: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"variant kind must be one of {KINDS}, got {self.kind!r}")
        fam = _family(self.type)
        if self.kind not in fam.kinds:
            raise ValueError(f"variant type {self.type!r} does not apply to {self.kind}")
        if fam.takes_value and not _positive(self.value):
            raise ValueError(
                f"{self.kind}:{self.type} needs a positive integer value, got {self.value!r}"
            )
        if not fam.takes_value and (self.value is not None or self.options):
            raise ValueError(f"{self.kind}:{self.type} takes no value")
        names = [name for name, _ in self.options]
        if any(n not in fam.options for n in names) or len(set(names)) < len(names):
            raise ValueError(
                f"{self.kind}:{self.type} takes the options {list(fam.options)}, got {names}"
            )
        if any(not _positive(v) for _, v in self.options):
            raise ValueError(f"{self.kind}:{self.type}: options need positive integers")
        # canonical order: the family's
        object.__setattr__(
            self, "options", tuple(sorted(self.options, key=lambda o: fam.options.index(o[0])))
        )

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.kind}:{self.type}"
        extra = "".join(f",{name}={v}" for name, v in self.options)
        return f"{self.kind}:{self.type}={self.value}{extra}"

    def option(self, name: str) -> int | None:
        return dict(self.options).get(name)

    @property
    def family(self):
        return _family(self.type)

    @property
    def is_parent(self) -> bool:
        return self.type == "parent"

    @property
    def trainable(self) -> bool:
        """Variants BLD trains: everything but the parent itself and no-ops."""
        return self.family.trainable

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        """Inverse of ``str``; raises ``ValueError`` with the offending text."""
        try:
            kind, rest = text.strip().split(":", 1)
            if "=" not in rest:
                return cls(kind, rest)
            vtype, values = rest.split("=", 1)
            value, *extra = values.split(",")
            options = tuple((n, int(v)) for n, v in (item.split("=", 1) for item in extra))
            return cls(kind, vtype, int(value), options)
        except ValueError as exc:
            raise ValueError(f"bad variant {text!r}: {exc}") from None

    def check(self, shape: ModelShape) -> None:
        """Raise ``ValueError`` if this variant cannot be built for ``shape``."""
        self.family.check(self, shape)

    def params(self, shape: ModelShape) -> int:
        """Parameter count of this subblock (norm weights included) for ``shape``."""
        return int(self.family.params(self, shape))

    def kv_heads(self, shape: ModelShape) -> int:
        """KV heads this subblock keeps in its cache (0: no cache)."""
        return int(self.family.kv_heads(self, shape))

    def cost_features(self, shape: ModelShape) -> dict[str, int]:
        """The per-variant columns the cost model reads (``nas.selection.costs``): ``params``,
        ``kv_values_per_token`` (keys + values cached per token) and ``kv_window`` (most
        tokens cached; 0 = the whole context)."""
        kv = self.kv_heads(shape)
        return {
            "params": self.params(shape),
            "kv_heads": kv,
            "kv_values_per_token": 2 * kv * shape.head_dim,
            "kv_window": int(self.family.kv_window(self)) if kv else 0,
        }


COST_FEATURES = ("params", "kv_heads", "kv_values_per_token", "kv_window")


def parent_variant(kind: str) -> VariantSpec:
    return VariantSpec(kind, "parent")


def _bare_number(kind: str, text: str, shape: ModelShape) -> VariantSpec:
    from compress.families import families

    for fam in families():
        if fam.bare_number == kind:
            return VariantSpec(kind, fam.type, fam.space_value(text, shape))
    raise ValueError(f"a bare number means nothing for {kind}")


def _entry(kind: str, entry, shape: ModelShape) -> VariantSpec:
    if isinstance(entry, bool):
        raise ValueError(f"bad {kind} variant {entry!r}")
    if isinstance(entry, (int, float)):
        return _bare_number(kind, str(entry), shape)
    text = str(entry).strip()
    if ":" in text:
        return VariantSpec.parse(text)
    if "=" not in text:
        try:
            float(text)
        except ValueError:
            return VariantSpec(kind, text)
        return _bare_number(kind, text, shape)
    vtype, values = (part.strip() for part in text.split("=", 1))
    value, *extra = values.split(",")
    spec = VariantSpec.parse(f"{kind}:{vtype}=1{''.join(',' + e for e in extra)}")
    return VariantSpec(kind, vtype, _family(vtype).space_value(value.strip(), shape), spec.options)


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

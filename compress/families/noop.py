"""``attention:noop`` / ``ffn:noop``: the subblock is skipped (residual only, no weights)."""

from __future__ import annotations

from compress.blocks import NoopSubblock
from compress.families.base import Family, register
from compress.variants import VariantSpec


@register
class Noop(Family):
    type = "noop"
    trainable = False

    def params(self, spec, shape):
        return 0

    def build(self, spec, parent, init):
        return NoopSubblock()

    def empty(self, spec, arch):
        return NoopSubblock()

    def recognise(self, kind, module, shape):
        return VariantSpec(kind, self.type) if type(module) is NoopSubblock else None

    def hf_block(self, spec, shape):
        return {"no_op": True, "replace_with_linear": False}

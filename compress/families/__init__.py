"""Variant families: one module per variant type, registered here (one import line each).

A family (``compress.families.base.Family``) owns everything about its type: parsing and the
canonical string, validity for a parent, parameter count and KV cache, building from the parent,
the empty module for loading, HF export metadata and recognising its modules in a student.
"""

from compress.families import (  # noqa: F401  (each import registers its family)
    attention_gqa,
    attention_window,
    ffn_width,
    int8,
    linear,
    noop,
    parent,
)
from compress.families.base import Family, families, family, recognise, register  # noqa: F401

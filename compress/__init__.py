"""Model side: parents, variants, block-wise distillation, students, latency, export.

This package never imports ``nas``. Importing it stays torch-free; torch is imported by the
submodules that need it.
"""

"""The import graph of ``nas`` and ``compress`` has no cycle and ``compress`` never imports ``nas``.

Imports are read with ``ast`` (nothing is imported), at module level and inside functions alike:
a function-level import that closes a cycle is still a cycle, only hidden until run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "compress")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (resolved to known modules)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule when one exists by that name
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_parent_package(a: str, b: str) -> bool:
    """A package's ``__init__`` importing its own submodule (or the reverse) is not a cycle of
    concern: Python initialises the package first by construction."""
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycle():
    graph = _graph()
    # drop package <-> own-submodule edges (an __init__ re-exporting, a module naming its package)
    graph = {v: {w for w in ws if not _is_parent_package(v, w)} for v, ws in graph.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module- or function-level): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_compress_never_imports_nas():
    graph = _graph()
    leaks = sorted(
        f"{v} -> {w}"
        for v, ws in graph.items()
        if v.startswith("compress")
        for w in ws
        if w == "nas" or w.startswith("nas.")
    )
    assert not leaks, "compress imports nas: " + ", ".join(leaks)


def test_walker_sees_function_level_imports(tmp_path):
    """The walker itself: a cycle closed by an import inside a function is found."""
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import x\n    return x\n")
    modules = {"a": a, "b": b}
    graph = {n: _imported(n, p, modules) for n, p in modules.items()}
    assert _cycles(graph) == [["a", "b"]]

"""The layer order of docs/design.md, enforced on the import graph.

Every ``import`` of a normkit module anywhere in a file counts, including imports
inside functions: a lazy import still makes the importing layer depend on the imported
one (it only hides the cycle from the interpreter). A module may import modules of a
lower layer, or of its own layer inside the same package; nothing may import upwards,
and the graph of normkit modules has no cycle.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "normkit"

# Layer of each module, by dotted-name prefix (the longest matching prefix wins). A new
# module with no entry fails test_every_module_has_a_layer: place it in docs/design.md's
# picture and here.
LAYERS = {
    "normkit.conventions": 0,
    "normkit._validation": 0,
    "normkit._env": 0,
    "normkit.ops.schema": 0,
    "normkit.reference": 1,
    "normkit.ops": 1,
    "normkit.dispatch": 2,
    "normkit.library": 3,
    "normkit.autograd": 4,
    "normkit.functional": 5,
    "normkit._export_path": 5,
    "normkit._native": 5,
    "normkit.fused": 5,
    "normkit.modules": 6,
    "normkit.fold": 7,
    "normkit.functional_mode": 7,
    "normkit.families": 7,
    "normkit.factory": 8,
    "normkit.convert": 8,
    "normkit.interop": 8,
    "normkit.bench": 9,
    "normkit.check": 9,
    "normkit.cli": 9,
    "normkit.convert_cli": 9,
    "normkit.scale_cli": 9,
    "normkit.lab": 9,
    "normkit.__main__": 9,
    "normkit": 9,  # the package itself: public re-exports only
}
# the data scalers stand apart from the layer stack: they may import no part of it
INDEPENDENT = ("normkit.preprocessing",)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known) -> set:
    """normkit modules imported anywhere in ``path`` (relative imports resolved)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from . import x` may name a submodule
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t == "normkit" or t.startswith("normkit."):
                # the deepest known module the name refers to
                while t not in known and "." in t:
                    t = t.rpartition(".")[0]
                if t != name:
                    found.add(t)
    return found


def _layer(name: str):
    best = None
    for prefix, layer in LAYERS.items():
        if (name == prefix or name.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    return None if best is None else best[1]


def _graph():
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _independent(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in INDEPENDENT)


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if not _independent(m) and _layer(m) is None]
    assert not missing, f"modules with no layer in tests/test_architecture.py: {missing}"


def test_no_upward_imports():
    bad = []
    for mod, deps in _graph().items():
        for dep in deps:
            if _independent(mod):
                if not _independent(dep):
                    bad.append(f"{mod} -> {dep} (preprocessing stands apart from the stack)")
                continue
            if _independent(dep):
                continue
            lm, ld = _layer(mod), _layer(dep)
            same_package = (
                dep.rsplit(".", 1)[0] == mod.rsplit(".", 1)[0]
                or dep.startswith(mod + ".")
                or mod.startswith(dep + ".")
            )
            if ld > lm or (ld == lm and not same_package):
                bad.append(f"{mod} (layer {lm}) -> {dep} (layer {ld})")
    assert not bad, "imports against the layer order of docs/design.md:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its submodules is not a cycle
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("relative", ["normkit/reference/lrn.py", "normkit/reference/norms.py"])
def test_reference_never_imports_torch(relative):
    tree = ast.parse((SRC / relative).read_text())
    names = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    names |= {
        (n.module or "").split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and not n.level
    }
    assert "torch" not in names, f"{relative} imports torch: the reference is NumPy only"

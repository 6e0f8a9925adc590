"""The import graph of ``src/siattn`` has layers: every import points to the same or a lower layer, and no two
modules import each other, directly or through others.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and ``from ... import``
statement counts, those inside functions included. ``from siattn.pkg import name`` is an edge to the module
``siattn.pkg.name`` when that is a module, else to ``siattn.pkg``. ARCHITECTURE.md describes the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "siattn"

# lowest first; a module belongs to the layer of its longest listed prefix
LAYERS: list[tuple[str, ...]] = [
    ("siattn.schedule", "siattn.precision", "siattn.io", "siattn.plotting", "siattn.provenance"),
    ("siattn.positional",),
    ("siattn.backends",),
    ("siattn.methods",),
    ("siattn.functional", "siattn"),  # the package itself re-exports the functional API
    ("siattn.model",),
    ("siattn.data",),
    ("siattn.training",),
    ("siattn.evaluation", "siattn.analysis", "siattn.benchmarking"),
    ("siattn.hf",),
    ("siattn.recipes",),
    ("siattn.cli", "siattn.__main__"),
]

# edges that break the layering today, each with the reason it is tolerated; the test fails when one is gone,
# so that the entry is removed with it
KNOWN_UPWARD: dict[tuple[str, str], str] = {
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The siattn modules that ``name`` (the module in ``path``) imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                while target not in known and "." in target:  # `import siattn.x.y` of a name inside a module
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    out.add(target)
    return out


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    assert mods, f"no modules under {SRC / PACKAGE}"
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_belongs_to_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_imports_point_to_the_same_or_a_lower_layer(graph):
    upward = sorted((src, dst) for src, targets in graph.items() for dst in targets
                    if layer_of(dst) > layer_of(src))
    unexpected = [f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
                  for src, dst in upward if (src, dst) not in KNOWN_UPWARD]
    assert not unexpected, "upward imports:\n" + "\n".join(unexpected)
    gone = sorted(set(KNOWN_UPWARD) - set(upward))
    assert not gone, f"these tolerated upward imports no longer exist; remove them from KNOWN_UPWARD: {gone}"


def test_no_import_cycles(graph):
    """Depth-first search; a back edge closes a cycle, reported as the chain of modules."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_model_imports_neither_data_nor_training(graph):
    bad = [f"{src} imports {dst}" for src, targets in sorted(graph.items()) if src.startswith("siattn.model")
           for dst in sorted(targets) if dst.startswith(("siattn.data", "siattn.training"))]
    assert not bad, "\n".join(bad)


def test_positional_imports_no_backend(graph):
    bad = [f"{src} imports {dst}" for src, targets in sorted(graph.items()) if src.startswith("siattn.positional")
           for dst in sorted(targets) if dst.startswith("siattn.backends")]
    assert not bad, "\n".join(bad)


def test_the_graph_reader_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "siattn"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from siattn.b import g\n    return g\n")
    (pkg / "b.py").write_text("import siattn.a\n")
    known = {"siattn.a", "siattn.b"}
    assert imports_of("siattn.a", pkg / "a.py", known) == {"siattn.b"}
    assert imports_of("siattn.b", pkg / "b.py", known) == {"siattn.a"}

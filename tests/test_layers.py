"""The architecture as a test: ``ddbench/`` imports only point down its layers, and no
module imports itself back through others (an import cycle fails here, naming the loop).

Every import counts: module level, inside functions, and under ``TYPE_CHECKING`` (a type
hint that points up the layers is still a dependency a reader has to follow)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ddbench"

#: bottom-up; a room may import rooms of its own layer or below, never above. Each
#: package's ``__init__`` docstring says the same in words.
LAYERS = [
    {"errors", "keys", "version"},
    {"params", "hookspecs", "synthetic"},
    {"runtime"},
    {"storage"},
    {"data"},
    {"evaluation"},
    {"context", "components"},
    {"__init__"},
    {"builtins", "registry"},
    {"plan"},
    {"analysis"},
    {"execution"},
    {"runner", "bench"},
    {"cli", "__main__"},
]
LEVEL = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the ddbench modules it imports (a package's ``__init__`` as the package)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        out = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import mod`` imports the module when there is one
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            out.update(t for t in targets if t.split(".")[0] == "ddbench" and t != mod)
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


GRAPH = _graph()


def test_every_room_has_a_layer():
    assert sorted({_room(m) for m in GRAPH} - set(LEVEL)) == []


def test_imports_point_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                    if LEVEL[_room(b)] > LEVEL[_room(a)])
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("graph, want", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_check_finds_a_loop(graph, want):
    assert _cycles(graph) == want


def test_a_package_says_what_lives_there_and_what_it_may_import():
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "imports:" in doc.lower(), f"{init.parent.name}: its docstring has no \"Imports:\" line"


def test_a_plugin_written_for_the_flat_layout_still_imports(recwarn):
    """The names the 0.1 README told plugin authors to import keep working (with a warning)."""
    from ddbench.augment import Strategy
    from ddbench.distillers.random import Random, sample_real
    from ddbench.records import ResultRow

    from ddbench.evaluation.augment import Strategy as new_strategy
    from ddbench.storage.records import ResultRow as new_row

    assert Strategy is new_strategy and ResultRow is new_row and callable(sample_real)
    assert Random.name == "random"
    moved = {str(w.message).split()[0] for w in recwarn.list if w.category is DeprecationWarning}
    assert {"ddbench.augment", "ddbench.records", "ddbench.distillers.random"} <= moved

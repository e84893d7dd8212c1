"""The package's import graph: no module imports itself back through others (no loops), and the
runtime, which user images carry alone, imports nothing from the operator side."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "operator"


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "cdl").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges to the cdl modules each module imports, at any depth (function-level imports count)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                # `from pkg import submodule` imports the submodule, not a loop through pkg
                if any(t in modules for t in targets[1:]):
                    targets = targets[1:]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_loops():
    assert _cycles(_graph(_modules())) == []


def test_the_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_imports_only_the_runtime():
    modules = _modules()
    graph = _graph(modules)
    outside = {m: sorted(t for t in graph[m] if not t.startswith("cdl.runtime") and t != "cdl")
               for m in modules if m.startswith("cdl.runtime")}
    assert {m: t for m, t in outside.items() if t} == {}

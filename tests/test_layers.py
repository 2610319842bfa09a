"""The floors of docs/ARCHITECTURE.md: a module imports (at module level) from no package on a
higher floor, and the packages' imports form no circle, so data flows one way. Function-level
imports (the CLI's dispatch, optional extras) are not bound by it."""
from __future__ import annotations

import ast
from pathlib import Path

import noisyfr

#: package or top-level module of noisyfr -> floor (docs/ARCHITECTURE.md)
FLOORS = {"errors": 1, "names": 1, "distributed": 1, "numeric": 1, "lazy": 1, "safefs": 2,
          "io": 2, "shipped": 2, "lock": 2, "dotted": 2, "device": 2, "plugins": 2, "cli": 2, "outputs": 2,
          "angle_log": 2, "losses": 2, "models": 2,
          "data": 3, "noise": 4, "eval": 4, "train": 5, "features": 5, "tune": 6, "analysis": 6,
          "cleaning": 7, "loop": 8, "demo": 9, "__main__": 9}


def _imports(path: Path) -> set[str]:
    """Top-level noisyfr packages named by the module-level imports of one file."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "noisyfr":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names
                     if a.name.startswith("noisyfr.") and "." in a.name]
        out.update(names)
    return out


def _package_imports() -> dict[str, set[str]]:
    root = Path(noisyfr.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        own = rel[0][:-3] if len(rel) == 1 else rel[0]
        if own != "__init__":
            graph.setdefault(own, set()).update(_imports(path) - {own, "__init__"})
    return graph


def test_no_import_runs_up_a_floor():
    graph = _package_imports()
    assert set(graph) <= set(FLOORS), f"not on a floor: {sorted(set(graph) - set(FLOORS))}"
    up = [f"{a} (floor {FLOORS[a]}) imports {b} (floor {FLOORS[b]})"
          for a, targets in graph.items() for b in targets if FLOORS[b] > FLOORS[a]]
    assert not up, "; ".join(up)


def test_no_import_circle_between_packages():
    graph = _package_imports()
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import circle: " + " -> ".join(trail + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])

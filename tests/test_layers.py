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
          "angle_log": 2, "labels": 2, "targets": 2, "losses": 2, "models": 2,
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


#: Most lines of one module, and of one function (docs/ARCHITECTURE.md).
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120
#: Over the module limit for now, each with its reason (a module named here that is back under the
#: limit fails the test, so the list cannot go stale): none.
OVER_LIMIT: dict[str, str] = {}
REPO = Path(noisyfr.__file__).resolve().parent.parent


def _sources() -> list[Path]:
    return sorted(p for d in ("noisyfr", "data_tools", "benchmarks") for p in (REPO / d).rglob("*.py"))


def long_modules(paths: list[Path], root: Path) -> dict[str, int]:
    """Modules over :data:`MAX_MODULE_LINES` lines (relative path -> lines)."""
    return {p.relative_to(root).as_posix(): n for p in paths
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}


def long_functions(paths: list[Path], root: Path) -> dict[str, int]:
    """Functions and methods (decorators included, nested ones too) over
    :data:`MAX_FUNCTION_LINES` lines (``path:line name`` -> lines)."""
    out = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if (n := node.end_lineno - first + 1) > MAX_FUNCTION_LINES:
                    out[f"{path.relative_to(root).as_posix()}:{node.lineno} {node.name}"] = n
    return out


def test_no_module_over_the_line_limit():
    long = long_modules(_sources(), REPO)
    assert not set(OVER_LIMIT) - set(long), f"back under the limit, drop from OVER_LIMIT: {set(OVER_LIMIT) - set(long)}"
    over = {k: v for k, v in long.items() if k not in OVER_LIMIT}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_function_over_the_line_limit():
    long = long_functions(_sources(), REPO)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_size_checks_see_an_oversized_module_and_function(tmp_path):
    """The control: a module of 501 lines and a decorated function of 121 lines are found, a
    module of 500 lines and a function of 120 are not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 2))
    pad = "\n" * (MAX_MODULE_LINES - MAX_FUNCTION_LINES)
    ok = tmp_path / "ok.py"
    ok.write_text("@staticmethod\ndef fits():\n" + body + "\n" + pad)
    big = tmp_path / "big.py"
    big.write_text("@staticmethod\ndef big():\n" + body + "\n    y = 1\n" + pad)
    assert long_modules([ok], tmp_path) == {} and long_functions([ok], tmp_path) == {}
    assert long_modules([big], tmp_path) == {"big.py": MAX_MODULE_LINES + 1}
    assert long_functions([big], tmp_path) == {"big.py:2 big": MAX_FUNCTION_LINES + 1}

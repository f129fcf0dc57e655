"""The package layout: imports between the stages of ``src/twotower`` go one way (function-local imports too)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "twotower"


def _package_imports() -> dict[str, dict[str, set[str]]]:
    """package -> imported package -> the modules that import it."""
    edges: dict[str, dict[str, set[str]]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        package = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "twotower" and len(parts) > 1 and parts[1] != package:
                    edges.setdefault(package, {}).setdefault(parts[1], set()).add(str(rel))
    return edges


def _cycle(edges: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle between packages, if any (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_between_packages() -> None:
    edges = _package_imports()
    assert {"db", "serve", "pipeline", "train"} <= set(edges)  # the walk sees the code
    cycle = _cycle(edges)
    if cycle:
        where = [f"{a} -> {b} in {sorted(edges[a][b])}" for a, b in itertools.pairwise(cycle)]
        raise AssertionError("import cycle between packages: " + "; ".join(where))


def _module_imports() -> dict[str, dict[str, set[str]]]:
    """module -> imported module of the same package -> the file (function-local imports too). ``from pkg import
    mod`` is an import of ``pkg.mod``; of ``pkg`` (its ``__init__``) only for a name that is not a module."""
    modules: dict[str, Path] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, dict[str, set[str]]] = {}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]  # fmt: skip
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name in modules and name != module and name.split(".")[:2] == module.split(".")[:2]:
                    edges.setdefault(module, {}).setdefault(name, set()).add(str(path.relative_to(SRC)))
    return edges


def test_no_import_cycle_between_modules_of_a_package() -> None:
    """Inside one package too (``db.database`` imported ``db.migrations``, which imported ``db.database`` back
    inside a function: a circle that only the order of first use kept working)."""
    edges = _module_imports()
    assert "twotower.db.migrations" in edges.get("twotower.db.database", {})  # the walk sees the code
    cycle = _cycle(edges)
    if cycle:
        raise AssertionError("import cycle between modules: " + " -> ".join(cycle))


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b": {"a/x.py"}}, "b": {"c": {"b/y.py"}}, "c": {"a": {"c/z.py"}}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": {"a/x.py"}}, "b": {}}) is None


def test_serve_routes_hold_no_sql() -> None:
    """The API's route modules call services (serve/queries.py, serve/console.py); they run no statement."""
    routes = sorted((SRC / "serve" / "routes").glob("*.py"))
    assert len(routes) >= 6
    for path in routes:
        tree = ast.parse(path.read_text(), filename=str(path))
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not calls & {"execute", "executemany", "cursor", "copy"}, path.name
        assert not {"sql", "psycopg"} & imports and "import psycopg" not in path.read_text(), path.name


MAX_MODULE_LINES = 400


def test_no_module_over_400_lines() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    large = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not large, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): {large}"

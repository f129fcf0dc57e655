"""The package layout: imports between the stages of ``src/twotower`` go one way (function-local imports too)."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
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


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> tuple[set[str], list[ast.Import | ast.ImportFrom]]:
    """The modules imported at module level (``if TYPE_CHECKING:`` aside: nothing is imported at run time there),
    and the function-local imports (inside a ``def`` or a class body; under ``if TYPE_CHECKING:`` aside)."""
    top: set[str] = set()
    local: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                if inside:
                    local.append(child)
                elif isinstance(child, ast.Import):
                    top.update(a.name for a in child.names)
                else:
                    top.add("." * child.level + (child.module or ""))
            else:
                visit(child, inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))

    visit(tree, False)
    return top, local


def test_function_local_imports_say_why() -> None:
    """An import inside a function is there for a measured reason (torch stays out of serving, ``twotower --help``
    stays fast, an optional dependency, an order that matters), said in a ``# lazy:`` comment on its line; it
    never repeats a module the file already imports at the top (issue 33)."""
    problems: list[str] = []
    count = 0
    for path in sorted(SRC.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        top, local = _imports(ast.parse(source, filename=str(path)))
        count += len(local)
        for node in local:
            where = f"{path.relative_to(SRC)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                ["." * node.level + (node.module or "")]  # fmt: skip
            if repeated := [n for n in names if n in top]:
                problems.append(f"{where}  (repeats the import of {', '.join(repeated)} at the top: delete it)")
            elif not any("# lazy:" in line for line in lines[node.lineno - 1 : node.end_lineno]):
                problems.append(f"{where}  (move it to the top, or say why not in a `# lazy:` comment)")
    assert count > 10  # the walk sees the code
    assert not problems, f"{len(problems)} function-local imports to fix:\n" + "\n".join(problems)


def test_serving_and_the_cli_import_no_torch() -> None:
    """``twotower serve`` (the app uvicorn's workers build) and ``twotower --help`` never import torch, nor the
    other training-only libraries: serving installs go without them, and torch alone takes seconds to import."""
    code = (
        "import sys, twotower.serve.factory, twotower.cli\n"
        "heavy = {'torch', 'onnx', 'optuna', 'safetensors', 'matplotlib', 'boto3'} & set(sys.modules)\n"
        "assert not heavy, sorted(heavy)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""One exception tree: every error class lives in twotower.errors, and the README's exit codes are its codes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import twotower.errors as errors

ROOT = Path(__file__).resolve().parents[1]


def _classes() -> list[type[errors.TwoTowerError]]:
    found = []
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, errors.TwoTowerError):
            found.append(value)
    return found


def test_every_error_class_is_defined_in_errors_py() -> None:
    """No module outside errors.py defines an exception of its own."""
    elsewhere = []
    for path in (ROOT / "src" / "twotower").rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "twotower":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id in {c.__name__ for c in _classes()} for b in node.bases
            ):
                elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not elsewhere, elsewhere


def test_the_readme_lists_every_exit_code_and_only_those() -> None:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"Errors are one line on stderr \(`error: \.\.\.`\) with a non-zero exit: (.*?)\n\n", text, re.S)
    assert match, "the README's exit-code sentence is missing"
    documented = {int(code) for code in re.findall(r"\b(\d\d)\b [a-z]", match.group(1))}
    codes = {c.exit_code for c in _classes() if c is not errors.DeployFailed and c.exit_code != 1}
    codes.add(70)  # an internal error (a bug): the CLI's catch-all
    assert documented == codes, (documented, codes)
    for cls in _classes():
        assert cls.code and re.fullmatch(r"[a-z_]+", cls.code), cls
        assert 400 <= cls.http_status <= 599, cls


def test_errors_are_imported_from_their_one_home() -> None:
    """``from twotower.errors import ...`` everywhere: no module re-exports an error class for others to import."""
    names = set(errors.__all__)
    elsewhere = []
    for folder in ("src", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twotower") and \
                        node.module != "twotower.errors":  # fmt: skip
                    elsewhere += [f"{path.relative_to(ROOT)}: {a.name} from {node.module}" for a in node.names
                                  if a.name in names]  # fmt: skip
    assert not elsewhere, elsewhere


def test_one_table_reports_library_exceptions_for_both_edges() -> None:
    """The rows the HTTP layer and the CLI read: most specific first, public messages that name no server."""
    import psycopg
    from psycopg_pool import PoolTimeout

    rows = {
        PoolTimeout("x"): (503, "database_unavailable", 69, True),
        psycopg.errors.QueryCanceled("x"): (503, "timeout", 69, True),
        psycopg.errors.UndefinedTable("x"): (503, "schema_missing", 78, False),
        psycopg.OperationalError("connection to server at 10.0.0.7 failed"): (503, "database_unavailable", 69, True),
        psycopg.errors.NumericValueOutOfRange("x"): (422, "invalid_request", 65, False),
        errors.NotFound("no such video"): (404, "not_found", 66, False),
        errors.DatabaseUnavailable("cannot connect to the database at u@db.internal:5432/app"): (
            503, "database_unavailable", 69, True),
    }  # fmt: skip
    for exc, expected in rows.items():
        row = errors.report(exc)
        assert row is not None and (row.status, row.code, row.exit_code, row.retry) == expected, (exc, row)
        assert "10.0.0.7" not in (row.public or "") and "db.internal" not in (row.public or "")
    assert errors.report(ValueError("a bug")) is None  # an internal error: 500 / exit 70
    assert set(errors.reported_types()) >= {errors.TwoTowerError, PoolTimeout, psycopg.OperationalError}

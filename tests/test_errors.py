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

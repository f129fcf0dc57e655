"""Import tests; ``assert_one_line_errors`` checks what the CLI prints for a refused file."""

from __future__ import annotations


def assert_one_line_errors(stderr: str) -> None:
    """Every line is a problem (``  line N: ...``) or the error, none carries a raw control character, and
    the error is the last line (str.splitlines also breaks on \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028...)."""
    assert "Traceback" not in stderr
    assert all(c == "\n" or c.isprintable() for c in stderr), repr(stderr)
    lines = stderr.strip("\n").splitlines()
    assert lines and lines[-1].startswith("error: "), repr(stderr)
    assert all(line.startswith(("  line ", "  ... and ")) for line in lines[:-1]), repr(stderr)
    assert len(lines[-1]) <= 600, repr(stderr)

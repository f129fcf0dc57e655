"""Reading files line by line without ever letting one bad line stop (or crash) an import."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from twotower.errors import InputError, NotFound
from twotower.ingest.records import Problems

__all__ = ["MAX_LINE_BYTES", "has_nul", "open_text_lines", "parse_timestamp", "parse_uuid", "read_csv_rows"]

MAX_LINE_BYTES = 1 << 20  # 1 MiB: no catalog item or swipe is that large; bigger is hostile or broken


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: expected a file, got a directory")
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) >= 4 and head.count(b"\x00") * 3 > len(head))
    if utf16:  # every other byte NUL: UTF-16 (or UTF-32) text, which would read as garbage
        raise InputError(f"{path}: this file is UTF-16 (or another wide encoding); save it as UTF-8 and import again")


def has_nul(value: object) -> bool:
    """A NUL character anywhere in a parsed value (keys included): PostgreSQL text and jsonb cannot hold one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def open_text_lines(path: Path, problems: Problems, *, blank: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line (each line with ``blank``; a bad one as an empty line);
    undecodable or oversized lines become problems."""
    _check_file(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if len(raw) > MAX_LINE_BYTES:
                problems.add(number, f"line is {len(raw):,} bytes, more than the {MAX_LINE_BYTES:,} allowed")
                text = ""
            else:
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    problems.add(number, f"not valid UTF-8 (byte {exc.start})")
                    text = ""
            if blank:
                yield number, text if text else "\n"
            elif text.strip():
                yield number, text


def read_csv_rows(
    path: Path, problems: Problems, required: tuple[str, ...], one_of: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each CSV data row, a quoted field may span lines (the row's number is its first line);
    a header that lacks a column rejects the whole file."""
    at = [0]  # the physical line the reader last consumed

    def lines() -> Iterator[str]:
        for number, text in open_text_lines(path, problems, blank=True):
            at[0] = number
            yield text

    reader = csv.reader(lines())
    header: list[str] | None = None
    while True:
        first = at[0] + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(first, f"malformed CSV: {exc}")
            if header is None:
                raise InputError(f"{path}: line {first}: unreadable CSV header") from None
            continue
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            missing = [c for c in required if c not in header]
            if one_of and not any(c in header for c in one_of):
                missing.append(" or ".join(one_of))
            if missing:
                raise InputError(
                    f"{path}: the header must have the column(s) {', '.join(missing)}; "
                    f"found {', '.join(header) or 'nothing'}"
                )
            continue
        if len(cells) != len(header):
            problems.add(first, f"expected {len(header)} fields, got {len(cells)}")
            continue
        if has_nul(cells):
            problems.add(first, "contains a NUL character")
            continue
        yield first, dict(zip(header, (c.strip() for c in cells), strict=True))
    if header is None:
        raise InputError(f"{path}: empty file (expected a CSV header)")


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 (``2024-05-01T12:00:00Z``, a date alone) or Unix seconds; naive times are UTC."""
    value = value.strip()
    if not value:
        raise ValueError("empty timestamp")
    try:
        if value.lstrip("-").replace(".", "", 1).isdigit():
            ts = datetime.fromtimestamp(float(value), tz=UTC)
        else:
            ts = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"invalid timestamp {value[:40]!r} (expected ISO 8601 or Unix seconds)") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    if not 1970 <= ts.year <= 2200:
        raise ValueError(f"timestamp {value[:40]!r} is out of range (1970-2200)")
    return ts


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None

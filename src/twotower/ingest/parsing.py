"""Reading files line by line without ever letting one bad line stop (or crash) an import."""

from __future__ import annotations

import codecs
import csv
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from twotower.errors import InputError, NotFound
from twotower.ingest.records import Problems, printable

__all__ = [
    "DECISION_CLOCK_SKEW",
    "MAX_ID",
    "MAX_LINE_BYTES",
    "RELEASE_AHEAD",
    "RELEASE_FROM",
    "has_nul",
    "id_problem",
    "open_text_lines",
    "parse_decision_time",
    "parse_timestamp",
    "parse_uuid",
    "read_csv_rows",
    "release_date_problem",
    "shown",
]

MAX_LINE_BYTES = 1 << 20  # 1 MiB: no catalog item or swipe is that large; bigger is hostile or broken
MAX_ID = 200  # user ids, external ids, sources: longer is not an id
# A swipe's time may be at most this far ahead of this machine's clock (clocks disagree a little). Further ahead is
# a wrong date, and a harmful one: an older swipe never overwrites a newer one, so it would win over every real
# later swipe of the pair, for ever.
DECISION_CLOCK_SKEW = timedelta(minutes=5)
DECISION_FROM = datetime(1970, 1, 1, tzinfo=UTC)
# A release date is from the first films (Passage de Venus, 1874) to 10 years ahead (pre-orders are announced
# months, rarely years, before release); outside that it is a wrong date.
RELEASE_FROM = datetime(1870, 1, 1, tzinfo=UTC)
RELEASE_AHEAD = timedelta(days=3653)
_HEAD = 4096
_CONTROL_BYTES = frozenset(range(0x20)) - frozenset(b"\t\n\r\x0c") | {0x7F}
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # C0/C1 controls, lone surrogates, line/paragraph separators


def shown(value: str, limit: int = 40) -> str:
    """``value`` quoted for a message: control characters escaped, at most ``limit`` characters of it."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def _where(path: Path) -> str:
    return printable(str(path), 300)


def _is_binary(head: bytes) -> bool:
    """Not UTF-8 and carrying control bytes that no text file has: random bytes, an image, an archive."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return any(b in _CONTROL_BYTES for b in head)  # a Latin-1 CSV has none: its lines are reported one by one
    return False


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotFound(f"{_where(path)}: no such file")
    if path.is_dir():
        raise InputError(f"{_where(path)}: expected a file, got a directory")
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD)
    except OSError as exc:
        raise InputError(f"{_where(path)}: cannot read: {exc.strerror}") from None
    utf16 = head[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) >= 4 and head.count(b"\x00") * 3 > len(head))
    if utf16:  # every other byte NUL: UTF-16 (or UTF-32) text, which would read as garbage
        raise InputError(
            f"{_where(path)}: this file is UTF-16 (or another wide encoding); save it as UTF-8 and import again"
        )
    if _is_binary(head):
        raise InputError(f"{_where(path)}: not UTF-8 text (binary data in its first {len(head):,} bytes)")


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
    header: list[str] | None = None

    def lines() -> Iterator[str]:
        seen = len(problems)
        for number, text in open_text_lines(path, problems, blank=True):
            at[0] = number
            if header is None and len(problems) > seen:  # an unreadable line where the header should be
                raise InputError(
                    f"{_where(path)}: line {number}: {problems.items[-1].message}; "
                    "expected a CSV header (save the file as UTF-8 text)"
                )
            yield text

    reader = csv.reader(lines())
    while True:
        first = at[0] + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.add(first, f"malformed CSV: {exc}")
            if header is None:
                raise InputError(f"{_where(path)}: line {first}: unreadable CSV header") from None
            continue
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            missing = [c for c in required if c not in header]
            if one_of and not any(c in header for c in one_of):
                missing.append(" or ".join(one_of))
            if missing:
                found = ", ".join(shown(c) for c in header[:10]) + (", ..." if len(header) > 10 else "")
                raise InputError(
                    f"{_where(path)}: the header must have the column(s) {', '.join(missing)}; "
                    f"found {found or 'nothing'}"
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
        raise InputError(f"{_where(path)}: empty file (expected a CSV header)")


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 (``2024-05-01T12:00:00Z``, a date alone) or Unix seconds; naive times are UTC. Whether the time
    makes sense is the caller's rule: :func:`parse_decision_time`, :func:`release_date_problem`."""
    value = value.strip()
    if not value:
        raise ValueError("empty timestamp")
    try:
        if value.lstrip("-").replace(".", "", 1).isdigit():
            ts = datetime.fromtimestamp(float(value), tz=UTC)
        else:
            ts = datetime.fromisoformat(value)
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        ts.astimezone(UTC)  # 0001-01-01T00:00+01:00 has no UTC time
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"invalid timestamp {shown(value)} (expected ISO 8601 or Unix seconds)") from None
    return ts


def parse_decision_time(value: str, column: str) -> datetime:
    """The time of a swipe, by the one rule of every importer of decisions: from 1970 to now (plus
    :data:`DECISION_CLOCK_SKEW`); ValueError with the reason otherwise."""
    ts = parse_timestamp(value)
    if ts < DECISION_FROM:
        raise ValueError(f"{column} {shown(value.strip())} is before 1970")
    if ts > datetime.now(UTC) + DECISION_CLOCK_SKEW:
        minutes = int(DECISION_CLOCK_SKEW.total_seconds() // 60)
        raise ValueError(
            f"{column} {shown(value.strip())} is in the future ({ts.astimezone(UTC):%Y-%m-%d %H:%M} UTC; at most "
            f"{minutes} minutes ahead of this machine's clock are allowed): it would win over every later swipe"
        )
    return ts


def release_date_problem(released: datetime) -> str | None:
    """Why a release date is refused, or None: the one rule of every catalog importer, from
    :data:`RELEASE_FROM` to :data:`RELEASE_AHEAD` from now."""
    if released.tzinfo is None:
        released = released.replace(tzinfo=UTC)
    latest = datetime.now(UTC) + RELEASE_AHEAD
    if RELEASE_FROM <= released <= latest:
        return None
    return (
        f"{released.date().isoformat()} is outside the accepted release dates "
        f"({RELEASE_FROM:%Y-%m-%d} to {latest:%Y-%m-%d}, 10 years ahead at most, for pre-orders)"
    )


def id_problem(value: str, column: str, limit: int = MAX_ID) -> str | None:
    """Why ``value`` cannot be an id (a user's, a video's external id, a source), or None."""
    if not value or len(value) > limit:
        return f"{column} must be 1-{limit} characters"
    bad = next((c for c in value if unicodedata.category(c) in _CONTROL_CATEGORIES), None)
    if bad is not None:
        return (
            f"{column} {shown(value)} contains a control character (U+{ord(bad):04X}); "
            "ids are printable text on one line"
        )
    return None


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None

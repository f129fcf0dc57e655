from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.ingest import assert_one_line_errors
from twotower.catalog.dmm_items import parse_item
from twotower.db import Database
from twotower.errors import ImportRejected, InputError, NotFound
from twotower.ingest.service import import_catalog


def _item(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "external_id": f"v{i}",
        "title": f"Video {i}",
        "price": "980",
        "duration_seconds": 3600,
        "maker": "Maker A",
        "product_released_at": "2024-05-01T00:00:00Z",
        "thumbnail_url": f"https://img.example.com/{i}.jpg",
        "tags": ["drama", "romance"],
        "performers": ["Aoi"],
        **extra,
    }


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _count(db: Database, table: str) -> int:
    with db.connection() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def test_import_and_reimport(db: Database, tmp_path: Path) -> None:
    f = _write(tmp_path / "c.jsonl", [_item(i) for i in range(20)])
    first = import_catalog(db, f, source="shop")
    assert first.videos is not None and first.videos.inserted == 20 and first.videos.tags_linked == 40
    again = import_catalog(db, f, source="shop")
    assert again.videos is not None
    assert (again.videos.inserted, again.videos.updated, again.videos.unchanged) == (0, 0, 20)
    assert again.videos.changed_ids == []
    assert _count(db, "videos") == 20 and _count(db, "video_tags") == 40
    with db.connection() as conn:
        row = conn.execute("SELECT price, raw->>'maker', source FROM videos WHERE external_id = 'v3'").fetchone()
    assert row is not None and float(row[0]) == 980.0 and row[1] == "Maker A" and row[2] == "shop"


def test_changes_are_applied_and_tags_replaced(db: Database, tmp_path: Path) -> None:
    import_catalog(db, _write(tmp_path / "a.jsonl", [_item(1), _item(2)]))
    changed = _write(tmp_path / "b.jsonl", [_item(1, title="New title"), _item(2, tags=["comedy"])])
    report = import_catalog(db, changed)
    assert report.videos is not None and report.videos.updated == 2 and len(report.videos.changed_ids) == 2
    with db.connection() as conn:
        tags = conn.execute(
            "SELECT array_agg(t.name ORDER BY t.name) FROM videos v JOIN video_tags vt ON vt.video_id = v.id "
            "JOIN tags t ON t.id = vt.tag_id WHERE v.external_id = 'v2'"
        ).fetchone()
        assert tags == (["comedy"],)
        assert conn.execute("SELECT title FROM videos WHERE external_id = 'v1'").fetchone() == ("New title",)


BAD_LINES = [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"title": "no id"}), "external_id"),
    (json.dumps(_item(9, price=-5)), "price"),
    (json.dumps(_item(9, price=float("nan"))), "price"),
    (json.dumps(_item(9, thumbnail_url="javascript:alert(1)")), "thumbnail_url"),
    (json.dumps(_item(9, tags="not-a-list")), "tags"),
    (json.dumps(_item(9, product_released_at="yesterday")), "product_released_at"),
    (json.dumps(_item(9, duration_seconds=10**12)), "duration_seconds"),
]


@pytest.mark.parametrize(("line", "needle"), BAD_LINES)
def test_bad_line_is_skipped_and_reported(db: Database, tmp_path: Path, line: str, needle: str) -> None:
    f = _write(tmp_path / "c.jsonl", [_item(1), line, _item(2)])
    report = import_catalog(db, f)
    assert report.videos is not None and report.videos.inserted == 2
    [problem] = report.problems.sorted()
    assert problem.line == 2 and needle in problem.message


def test_strict_rejects_whole_file(db: Database, tmp_path: Path) -> None:
    f = _write(tmp_path / "c.jsonl", [_item(1), "{oops", _item(2)])
    with pytest.raises(ImportRejected) as info:
        import_catalog(db, f, strict=True)
    assert "line 2" in info.value.message and info.value.problems[0].startswith("line 2:")
    assert _count(db, "videos") == 0


def test_hostile_input(db: Database, tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    with f.open("wb") as out:
        out.write(json.dumps(_item(1, title="Robert'); DROP TABLE videos;--")).encode() + b"\n")
        out.write(b'{"external_id": "x", "title": "\xff\xfe"}\n')  # not UTF-8
        out.write(b'{"external_id": "big", "title": "' + b"a" * (2 << 20) + b'"}\n')  # 2 MiB line
        out.write(b"[" * 100_000 + b"\n")  # deeply nested
        out.write(b"\n   \n")  # blank lines are fine
    report = import_catalog(db, f)
    messages = {p.line: p.message for p in report.problems.sorted()}
    assert "UTF-8" in messages[2] and "bytes" in messages[3] and "JSON" in messages[4]
    with db.connection() as conn:
        assert conn.execute("SELECT title FROM videos").fetchall() == [("Robert'); DROP TABLE videos;--",)]


def test_missing_and_empty_files(db: Database, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        import_catalog(db, tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="directory"):
        import_catalog(db, tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    report = import_catalog(db, empty)
    assert report.videos is not None and report.videos.read == 0


def test_cli_strict_exit_code(cli_env: dict[str, str], tmp_path: Path) -> None:
    f = _write(tmp_path / "c.jsonl", [_item(1), "{oops"])
    cmd = [sys.executable, "-m", "twotower", "import", "catalog", str(f)]
    strict = subprocess.run([*cmd, "--strict"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 65 and "Traceback" not in strict.stderr
    assert strict.stderr.strip().splitlines()[-1].startswith("error: ") and "line 2" in strict.stderr
    lenient = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=60)
    assert lenient.returncode == 0, lenient.stderr
    assert "line 2: malformed JSON" in lenient.stderr


def test_values_postgres_cannot_store_are_reported_per_line(db: Database, tmp_path: Path) -> None:
    """A NUL in a title, a tag or a key, or a count beyond an integer: reported with the file's line number, the
    other lines imported (each used to abort the whole file with exit 70 and no line number)."""
    f = tmp_path / "c.jsonl"
    lines = [
        {"external_id": "ok-1", "title": "Fine"},
        {"external_id": "nul-title", "title": "a\u0000b"},
        {"external_id": "nul-tag", "title": "T", "tags": ["x\u0000"]},
        {"external_id": "nul-key", "title": "T", "extra": {"k\u0000": 1}},
        {"external_id": "huge", "title": "T", "review_count": 1e20},
        {"external_id": "ok-2", "title": "Fine too"},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = import_catalog(db, f, source="shop")
    got = {p.line: p.message for p in report.problems.sorted()}
    assert set(got) == {2, 3, 4, 5}, got
    assert all("NUL" in got[n] for n in (2, 3, 4)) and "review_count" in got[5]
    with db.connection() as conn:
        assert {r[0] for r in conn.execute("SELECT external_id FROM videos")} == {"ok-1", "ok-2"}


def test_release_dates_follow_the_catalog_rule(db: Database, tmp_path: Path) -> None:
    """Released at: from 1870 (the first films) to 10 years ahead (pre-orders); 2199 was accepted, 1939 refused."""
    now = datetime.now(UTC)
    lines = [
        _item(1, product_released_at="1939-08-25"),  # 1: fine (was "out of range (1970-2200)")
        _item(2, product_released_at=(now + timedelta(days=365)).isoformat()),  # 2: a pre-order, fine
        _item(3, product_released_at="2199-01-01"),  # 3
        _item(4, product_released_at=(now + timedelta(days=11 * 366)).date().isoformat()),  # 4
        _item(5, product_released_at="1600-01-01"),  # 5
        _item(6, product_released_at=7258118400),  # 6: Unix seconds, 2200
        _item(7, product_released_at="1874-12-09"),  # 7: fine
    ]
    report = import_catalog(db, _write(tmp_path / "c.jsonl", lines))
    got = {p.line: p.message for p in report.problems.sorted()}
    assert set(got) == {3, 4, 5, 6}, got
    assert all("product_released_at" in m and "release dates" in m for m in got.values()), got
    with db.connection() as conn:
        kept = {r[0] for r in conn.execute("SELECT external_id FROM videos")}
    assert kept == {"v1", "v2", "v7"}
    with pytest.raises(ImportRejected, match="line 3"):
        import_catalog(db, _write(tmp_path / "c.jsonl", lines), strict=True)


def test_dmm_items_follow_the_same_release_rule() -> None:
    base = {"content_id": "abc1", "title": "T"}
    assert parse_item({**base, "date": "2024-05-01 10:00:00"}).product_released_at is not None
    # the API's item is kept (an upstream product cannot be fixed by the user), without the impossible date
    assert parse_item({**base, "date": "2199-01-01 10:00:00"}).product_released_at is None
    assert parse_item({**base, "date": "1600-01-01 10:00:00"}).product_released_at is None


@pytest.mark.parametrize("external_id", ["a\nb", "a\tb", "a\x1b[31mb", "a\u2028b", "a\x85b"])
def test_cli_external_ids_with_control_characters_are_refused(
    db: Database, cli_env: dict[str, str], tmp_path: Path, external_id: str
) -> None:
    f = _write(tmp_path / "c.jsonl", [_item(1, external_id=external_id)])
    cmd = [sys.executable, "-m", "twotower", "import", "catalog", str(f)]
    strict = subprocess.run([*cmd, "--strict"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert strict.returncode == 65, strict.stderr
    assert_one_line_errors(strict.stderr)
    assert "line 1: external_id" in strict.stderr and "control character" in strict.stderr, strict.stderr
    assert _count(db, "videos") == 0
    lenient = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=60)
    assert lenient.returncode == 0 and "line 1: external_id" in lenient.stderr, lenient.stderr
    assert _count(db, "videos") == 0


def test_cli_random_bytes_catalog_is_not_text(db: Database, cli_env: dict[str, str], tmp_path: Path) -> None:
    import random

    f = tmp_path / "c.jsonl"
    f.write_bytes(random.Random(3).randbytes(8192))
    cmd = [sys.executable, "-m", "twotower", "import", "catalog", str(f)]
    for strict in (["--strict"], []):
        result = subprocess.run([*cmd, *strict], env=cli_env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 65, result.stderr
        assert_one_line_errors(result.stderr)
        assert "UTF-8" in result.stderr and "text" in result.stderr, result.stderr
    assert _count(db, "videos") == 0

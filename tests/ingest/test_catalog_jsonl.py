from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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

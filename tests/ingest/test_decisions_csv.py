from __future__ import annotations

import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.ingest import assert_one_line_errors
from twotower.db import Database
from twotower.errors import ImportRejected, InputError
from twotower.ingest.loader import load_videos
from twotower.ingest.records import VideoRecord, user_uuid
from twotower.ingest.service import import_decisions


@pytest.fixture
def catalog(db: Database) -> dict[str, uuid.UUID]:
    with db.connection() as conn:
        load_videos(conn, [VideoRecord(source="shop", external_id=f"v{i}", title=f"V{i}") for i in range(5)])
        rows = conn.execute("SELECT external_id, id FROM videos").fetchall()
    return {r[0]: r[1] for r in rows}


def _csv(path: Path, *rows: str, header: str = "user_id,external_id,decision_type,created_at") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_import_and_reimport(db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path) -> None:
    u = uuid.uuid4()
    f = _csv(
        tmp_path / "d.csv",
        f"{u},v0,like,2024-01-01T00:00:00Z",
        f"{u},v1,nope,1704067300",
        "alice,v2,LIKE,2024-01-02",
        "alice,v3,nope,",
    )
    first = import_decisions(db, f, source="shop")
    assert first.decisions is not None and first.decisions.inserted == 4 and not first.problems
    again = import_decisions(db, f, source="shop")
    assert again.decisions is not None and (again.decisions.inserted, again.decisions.updated) == (0, 0)
    with db.connection() as conn:
        users = {r[0] for r in conn.execute("SELECT DISTINCT user_id FROM user_video_decisions")}
    assert users == {u, user_uuid("shop", "alice")}


def test_by_video_uuid_and_reswipe(db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path) -> None:
    u = uuid.uuid4()
    header = "user_id,video_id,decision_type,created_at"
    import_decisions(db, _csv(tmp_path / "a.csv", f"{u},{catalog['v0']},like,2024-01-01", header=header))
    later = _csv(tmp_path / "b.csv", f"{u},{catalog['v0']},nope,2024-02-01", header=header)
    report = import_decisions(db, later)
    assert report.decisions is not None and report.decisions.updated == 1
    older = _csv(tmp_path / "c.csv", f"{u},{catalog['v0']},like,2023-01-01", header=header)
    report = import_decisions(db, older)  # an older swipe never overwrites a newer one
    assert report.decisions is not None and report.decisions.updated == 0
    with db.connection() as conn:
        assert conn.execute("SELECT decision_type FROM user_video_decisions").fetchone() == ("nope",)


def test_bad_rows_reported_with_line_numbers(db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path) -> None:
    f = _csv(
        tmp_path / "d.csv",
        "u1,v0,like,2024-01-01",  # 2 ok
        "u1,v404,like,2024-01-01",  # 3 unknown video
        "u1,v1,superlike,2024-01-01",  # 4 invalid decision_type
        "u1,v1,like,not-a-date",  # 5 bad timestamp
        "u1,v1",  # 6 wrong field count
        ",v2,like,",  # 7 missing user
        "u1,,like,",  # 8 missing video
        '"u1,v1,like',  # 9 an unterminated quote: a CSV parser reads to the end of the file for it
    )
    report = import_decisions(db, f, source="shop")
    assert report.decisions is not None and report.decisions.inserted == 1
    got = {p.line: p.message for p in report.problems.sorted()}
    assert set(got) == {3, 4, 5, 6, 7, 8, 9}
    assert "unknown video" in got[3] and "decision_type" in got[4] and "timestamp" in got[5]


def test_strict_is_atomic(db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path) -> None:
    f = _csv(tmp_path / "d.csv", "u1,v0,like,", "u1,v404,like,")
    with pytest.raises(ImportRejected, match="line 3"):
        import_decisions(db, f, source="shop", strict=True)
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM user_video_decisions").fetchone() == (0,)


def test_bad_headers(db: Database, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="decision_type"):
        import_decisions(db, _csv(tmp_path / "a.csv", "u1,v0", header="user_id,external_id"))
    with pytest.raises(InputError, match="video_id or external_id"):
        import_decisions(db, _csv(tmp_path / "b.csv", "u1,like", header="user_id,decision_type"))
    (tmp_path / "c.csv").write_text("")
    with pytest.raises(InputError, match="empty file"):
        import_decisions(db, tmp_path / "c.csv")


def test_cli_unknown_video_strict(cli_env: dict[str, str], tmp_path: Path) -> None:
    f = _csv(tmp_path / "d.csv", "u1,v404,like,")
    result = subprocess.run(
        [sys.executable, "-m", "twotower", "import", "decisions", str(f), "--strict"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "line 2: unknown video catalog:v404" in result.stderr


def test_hostile_csv_lines_are_reported_with_their_line_numbers(
    db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    u = uuid.uuid4()
    f = tmp_path / "d.csv"
    f.write_bytes(
        b"user_id,external_id,decision_type,created_at\n"
        + b'"ru\n1",v0,like,2024-01-01\n'  # line 2-3: a quoted newline inside a field
        + f"{u},v1,like,2024-01-01\n".encode()  # line 4: fine
        + f"{u},v2,li\x00ke,2024-01-01\n".encode()  # line 5: a NUL byte
        + f"{u},v3,like,2199-01-01\n".encode()  # line 6: a date far in the future
        + f"{u},v4,nope,2024-01-02\n".encode()  # line 7: fine
    )
    result = import_decisions(db, f, source="shop")
    lines = {p.line: p.message for p in result.problems.sorted()}
    assert result.decisions is not None and result.decisions.inserted == 2, lines
    assert set(lines) == {2, 5, 6}, lines
    assert "control character" in lines[2] and "NUL" in lines[5] and "future" in lines[6]
    with db.connection() as conn:
        users = {r[0] for r in conn.execute("SELECT DISTINCT user_id FROM user_video_decisions")}
    assert users == {u}  # the quoted newline made neither an id nor a new row


def test_a_utf16_file_is_named_as_such(db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes("user_id,external_id,decision_type\nalice,v0,like\n".encode("utf-16"))
    with pytest.raises(InputError, match="UTF-16"):
        import_decisions(db, f, source="shop")


def _run_cli(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twotower", "import", *args], env=cli_env, capture_output=True, text=True, timeout=120
    )


def _decisions_count(db: Database) -> int:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM user_video_decisions").fetchone()
    return int(row[0]) if row else 0


def test_cli_binary_header_is_one_escaped_line(
    db: Database, catalog: dict[str, uuid.UUID], cli_env: dict[str, str], tmp_path: Path
) -> None:
    f = tmp_path / "d.csv"
    header = '"user\nid",\x1b[2J\x1b[31mred,a\x0bb,c\u2028d,e\x85f,' + "x" * 5000
    f.write_bytes((header + "\nu1,v0\n").encode())
    for strict in (["--strict"], []):
        result = _run_cli(cli_env, "decisions", str(f), *strict)
        assert result.returncode == 65, result.stderr
        assert_one_line_errors(result.stderr)
        assert "the header must have" in result.stderr and "\\x1b" in result.stderr
    assert _decisions_count(db) == 0


def test_cli_random_bytes_are_not_an_empty_file(
    db: Database, catalog: dict[str, uuid.UUID], cli_env: dict[str, str], tmp_path: Path
) -> None:
    noise = random.Random(29).randbytes(8192)
    latin1 = "user_id,external_id,decision_type\nzoë,v0,like\n".encode("latin-1")  # the header line itself is fine
    for name, data in (("noise.csv", noise), ("bad-header.csv", b"us\xe9r_id,external_id\n" + latin1)):
        f = tmp_path / name
        f.write_bytes(data)
        for strict in (["--strict"], []):
            result = _run_cli(cli_env, "decisions", str(f), *strict)
            assert result.returncode == 65, result.stderr
            assert_one_line_errors(result.stderr)
            assert "empty file" not in result.stderr and "UTF-8" in result.stderr, result.stderr
    assert _decisions_count(db) == 0


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ('"u\n1",v0,like', "user_id"),  # a quoted newline
        ('"u\t1",v0,like', "user_id"),
        ('"u\x1b[31m1",v0,like', "user_id"),
        ("u\u20281,v0,like", "user_id"),  # a Unicode line separator
        ('u1,"v\n0",like', "external_id"),
        ("u1,v\x7f0,like", "external_id"),
    ],
)
def test_cli_ids_with_control_characters_are_refused(
    db: Database, catalog: dict[str, uuid.UUID], cli_env: dict[str, str], tmp_path: Path, row: str, where: str
) -> None:
    f = tmp_path / "d.csv"
    f.write_bytes(("user_id,external_id,decision_type\n" + row + "\n").encode())
    strict = _run_cli(cli_env, "decisions", str(f), "--source", "shop", "--strict")
    assert strict.returncode == 65, strict.stderr
    assert_one_line_errors(strict.stderr)
    assert f"line 2: {where} " in strict.stderr and "control character" in strict.stderr, strict.stderr
    assert _decisions_count(db) == 0
    lenient = _run_cli(cli_env, "decisions", str(f), "--source", "shop")
    assert lenient.returncode == 0, lenient.stderr
    assert f"line 2: {where} " in lenient.stderr and "control character" in lenient.stderr
    assert _decisions_count(db) == 0


def test_a_source_column_with_control_characters_is_refused(
    db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path
) -> None:
    f = tmp_path / "d.csv"
    f.write_text('user_id,source,external_id,decision_type\nu1,"sh\nop",v0,like\nu1,shop,v1,like\n')
    report = import_decisions(db, f)
    assert [(p.line, "source" in p.message) for p in report.problems.sorted()] == [(2, True)]
    assert report.decisions is not None and report.decisions.inserted == 1


def test_the_future_is_five_minutes_away(db: Database, catalog: dict[str, uuid.UUID], tmp_path: Path) -> None:
    now = datetime.now(UTC)
    soon, late = (now + timedelta(minutes=2)).isoformat(), (now + timedelta(hours=1)).isoformat()
    f = _csv(tmp_path / "d.csv", f"u1,v0,like,{soon}", f"u1,v1,like,{late}", "u1,v2,like,7258118400")
    report = import_decisions(db, f, source="shop")
    got = {p.line: p.message for p in report.problems.sorted()}
    assert set(got) == {3, 4}, got
    assert all("in the future" in m and "5 minutes" in m for m in got.values()), got
    assert report.decisions is not None and report.decisions.inserted == 1

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ingest import assert_one_line_errors
from tests.support.db import MOVIELENS
from twotower.db import Database
from twotower.errors import ImportRejected, NotFound
from twotower.ingest.movielens import split_title
from twotower.ingest.records import user_uuid
from twotower.ingest.service import import_movielens


def test_full_import_counts_and_idempotence(db: Database) -> None:
    first = import_movielens(db, MOVIELENS)
    assert first.videos is not None and first.decisions is not None and first.ratings is not None
    assert first.videos.inserted == 9742
    assert first.ratings.likes + first.ratings.nopes + first.ratings.neutral == 100_836
    assert first.decisions.inserted == first.ratings.likes + first.ratings.nopes
    assert not first.problems

    second = import_movielens(db, MOVIELENS)
    assert second.videos is not None and second.decisions is not None
    assert (second.videos.inserted, second.videos.updated) == (0, 0)
    assert (second.decisions.inserted, second.decisions.updated) == (0, 0)

    with db.connection() as conn:
        likes, nopes = conn.execute(
            "SELECT count(*) FILTER (WHERE decision_type = 'like'), count(*) FILTER (WHERE decision_type = 'nope') "
            "FROM user_video_decisions"
        ).fetchone() or (0, 0)
        assert (likes, nopes) == (first.ratings.likes, first.ratings.nopes)
        assert conn.execute("SELECT count(DISTINCT user_id) FROM user_video_decisions").fetchone() == (610,)
        # movieId 1: Toy Story (1995), Adventure|Animation|Children|Comedy|Fantasy, tags "pixar", "fun"
        title, released, tags = conn.execute(
            "SELECT v.title, extract(year FROM v.product_released_at)::int, array_agg(t.name ORDER BY t.name) "
            "FROM videos v JOIN video_tags vt ON vt.video_id = v.id JOIN tags t ON t.id = vt.tag_id "
            "WHERE v.source = 'movielens' AND v.external_id = '1' GROUP BY v.id"
        ).fetchone() or ("", 0, [])
        assert title == "Toy Story" and released == 1995
        assert {"Animation", "Comedy", "pixar", "fun"} <= set(tags)
        # the user mapping is stable: MovieLens user 1 is always the same UUID
        row = conn.execute(
            "SELECT count(*) FROM user_video_decisions WHERE user_id = %s", (user_uuid("movielens", "1"),)
        ).fetchone()
        assert row is not None and row[0] > 0
        # a rating of 3 gives no decision: user 1 rated movie 1 4.0 (like) and movie 3 4.0; movie 70 is 3.0
        assert conn.execute(
            "SELECT count(*) FROM user_video_decisions d JOIN videos v ON v.id = d.video_id "
            "WHERE d.user_id = %s AND v.external_id = '70'",
            (user_uuid("movielens", "1"),),
        ).fetchone() == (0,)


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Toy Story (1995)", ("Toy Story", 1995)),
        ("Babylon 5", ("Babylon 5", None)),
        ("Fawlty Towers (1975-1979)", ("Fawlty Towers", 1975)),
        ("Death Note: Desu nôto (2006–2007)", ("Death Note: Desu nôto", 2006)),
        ("American President, The (1995) ", ("American President, The", 1995)),
    ],
)
def test_split_title(title: str, expected: tuple[str, int | None]) -> None:
    name, released = split_title(title)
    assert (name, released.year if released else None) == expected


def _small_copy(tmp_path: Path) -> Path:
    target = tmp_path / "ml"
    target.mkdir()
    lines = (MOVIELENS / "movies.csv").read_text().splitlines()
    (target / "movies.csv").write_text("\n".join(lines[:51]) + "\n")
    ids = {line.split(",", 1)[0] for line in lines[1:51]}
    ratings = (MOVIELENS / "ratings.csv").read_text().splitlines()
    kept = [ratings[0], *[r for r in ratings[1:] if r.split(",")[1] in ids][:399]]
    (target / "ratings.csv").write_text("\n".join(kept) + "\n")
    shutil.copy(MOVIELENS / "links.csv", target / "links.csv")
    return target


def test_bad_rows_are_reported_with_line_numbers(db: Database, tmp_path: Path) -> None:
    ml = _small_copy(tmp_path)
    with (ml / "ratings.csv").open("a") as f:
        f.write("1,999999,5.0,964982703\n")  # unknown movie: line 401
        f.write("1,1,great,964982703\n")  # bad rating: line 402
        f.write("1,1\n")  # wrong field count: line 403
    report = import_movielens(db, ml)
    problems = [str(p) for p in report.problems.sorted()]
    assert problems[0].startswith("line 401: unknown video movielens:999999")
    assert problems[1].startswith("line 402: invalid rating")
    assert problems[2].startswith("line 403: expected 4 fields")


def test_strict_rejects_atomically(db: Database, tmp_path: Path) -> None:
    ml = _small_copy(tmp_path)
    with (ml / "ratings.csv").open("a") as f:
        f.write("1,999999,5.0,964982703\n")
    with pytest.raises(ImportRejected, match="nothing was imported"):
        import_movielens(db, ml, strict=True)
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM videos").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM user_video_decisions").fetchone() == (0,)


def test_missing_files(db: Database, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"missing ratings\.csv"):
        (tmp_path / "movies.csv").write_text("movieId,title,genres\n")
        import_movielens(db, tmp_path)
    with pytest.raises(NotFound, match="not a directory"):
        import_movielens(db, tmp_path / "nope")


def test_cli_prints_counts(cli_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twotower", "import", "movielens", str(MOVIELENS)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "9,742" in result.stdout and "likes" in result.stdout and "no bad rows" in result.stdout


def _count(db: Database, table: str) -> int:
    with db.connection() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def test_cli_a_rating_dated_2200_is_refused(db: Database, cli_env: dict[str, str], tmp_path: Path) -> None:
    """Issue 29's reproduction: ``1,9000003,5.0,7258118400`` with --strict was imported as a like of 2200-01-01."""
    ml = _small_copy(tmp_path)
    with (ml / "movies.csv").open("a") as f:
        f.write("9000003,Future Film (2019),Drama\n")
    with (ml / "ratings.csv").open("a") as f:
        f.write("1,9000003,5.0,7258118400\n")  # line 401
    cmd = [sys.executable, "-m", "twotower", "import", "movielens", str(ml)]
    strict = subprocess.run([*cmd, "--strict"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 65, strict.stdout + strict.stderr
    assert_one_line_errors(strict.stderr)
    assert "line 401: timestamp '7258118400' is in the future" in strict.stderr, strict.stderr
    assert _count(db, "videos") == 0 and _count(db, "user_video_decisions") == 0
    lenient = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=120)
    assert lenient.returncode == 0, lenient.stderr
    with db.connection() as conn:
        assert conn.execute(
            "SELECT count(*) FROM user_video_decisions WHERE created_at > now() + interval '5 minutes'"
        ).fetchone() == (0,)


def test_future_decision_times_get_the_same_report_from_both_importers(db: Database, tmp_path: Path) -> None:
    from twotower.ingest.loader import load_videos
    from twotower.ingest.records import VideoRecord
    from twotower.ingest.service import import_decisions

    ml = _small_copy(tmp_path)
    with (ml / "ratings.csv").open("a") as f:
        f.write("1,1,5.0,7258118400\n")  # line 401
    from_movielens = import_movielens(db, ml).problems.sorted()
    with db.connection() as conn:
        load_videos(conn, [VideoRecord(source="shop", external_id="v0", title="V0")])
    csv = tmp_path / "d.csv"
    csv.write_text("user_id,external_id,decision_type,created_at\nu1,v0,like,7258118400\n")
    from_csv = import_decisions(db, csv, source="shop").problems.sorted()
    assert [p.line for p in from_movielens] == [401] and [p.line for p in from_csv] == [2]
    # one rule, one wording: only the column's name differs
    assert from_movielens[0].message.replace("timestamp", "created_at", 1) == from_csv[0].message
    assert "5 minutes" in from_csv[0].message


def test_release_years_outside_the_catalog_rule_are_reported(db: Database, tmp_path: Path) -> None:
    ml = _small_copy(tmp_path)
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with (ml / "movies.csv").open("a") as f:
        f.write("9000001,Far Future (2199),Drama\n")  # line 52
        f.write("9000002,Year Zero (0000),Drama\n")  # line 53: was a ValueError from datetime
        f.write("9000003,Too Old (1700),Drama\n")  # line 54
        f.write("9000004,Passage de Venus (1874),Documentary\n")  # line 55: fine, one of the first films
    report = import_movielens(db, ml)
    got = {p.line: p.message for p in report.problems.sorted()}
    assert set(got) == {52, 53, 54}, got
    assert all("release" in m for m in got.values()), got
    with db.connection() as conn:
        row = conn.execute(
            "SELECT extract(year FROM product_released_at)::int FROM videos WHERE external_id = '9000004'"
        ).fetchone()
        assert row == (1874,)
        assert conn.execute("SELECT count(*) FROM videos WHERE external_id IN ('9000001', '9000002', '9000003')"
                            ).fetchone() == (0,)  # fmt: skip
    with pytest.raises(ImportRejected, match="line 52"):
        import_movielens(db, ml, strict=True)


def test_cli_random_bytes_ratings_are_not_an_empty_file(db: Database, cli_env: dict[str, str], tmp_path: Path) -> None:
    ml = _small_copy(tmp_path)
    (ml / "ratings.csv").write_bytes(random.Random(7).randbytes(4096))
    for strict in (["--strict"], []):
        result = subprocess.run(
            [sys.executable, "-m", "twotower", "import", "movielens", str(ml), *strict],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 65, result.stdout + result.stderr
        assert_one_line_errors(result.stderr)
        assert "empty file" not in result.stderr and "ratings.csv" in result.stderr and "UTF-8" in result.stderr
    assert _count(db, "videos") == 0 and _count(db, "user_video_decisions") == 0

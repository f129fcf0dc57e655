"""``twotower synth`` against a real database: reproducible, idempotent, exact, and with findable tastes."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from twotower.db import Database, upgrade
from twotower.errors import InputError
from twotower.synth import EPOCH, SynthConfig, SynthResult, generate

SMALL = SynthConfig(videos=600, users=80, decisions=6000, tastes=6)


def _run(db: Database, config: SynthConfig) -> SynthResult:
    with db.connection() as conn:
        return generate(conn, config)


def _digest(conn: psycopg.Connection[Any], seed: int) -> dict[str, str]:
    """md5 of ordered exports of one seed's rows. ``videos`` and ``swipes`` leave ids out, so seeds compare."""
    prefix = f"syn-{seed}-%"
    queries = {
        "videos": """SELECT md5(string_agg(concat_ws('|', title, description, duration_seconds, price, maker,
                            label, series, director, extract(epoch FROM product_released_at), thumbnail_url,
                            sample_video_url, product_url, review_count, review_average, is_active, raw::text),
                        E'\\n' ORDER BY external_id))
                     FROM videos WHERE external_id LIKE %s""",
        "tags": """SELECT md5(string_agg(v.external_id || ':' || t.name, E'\\n' ORDER BY v.external_id, t.name))
                   FROM videos v JOIN video_tags vt ON vt.video_id = v.id JOIN tags t ON t.id = vt.tag_id
                   WHERE v.external_id LIKE %s""",
        "performers": """SELECT md5(string_agg(v.external_id || ':' || p.name, E'\\n'
                                               ORDER BY v.external_id, p.name))
                         FROM videos v JOIN video_performers vp ON vp.video_id = v.id
                         JOIN performers p ON p.id = vp.performer_id
                         WHERE v.external_id LIKE %s""",
        "decisions": """SELECT md5(string_agg(concat_ws('|', d.user_id, v.external_id, d.decision_type,
                                                        extract(epoch FROM d.created_at)),
                                              E'\\n' ORDER BY d.user_id, v.external_id))
                        FROM user_video_decisions d JOIN videos v ON v.id = d.video_id
                        WHERE v.external_id LIKE %s""",
        "swipes": """SELECT md5(string_agg(concat_ws('|', v.title, d.decision_type,
                                                     extract(epoch FROM d.created_at)),
                                           E'\\n' ORDER BY d.created_at, v.external_id, d.decision_type))
                     FROM user_video_decisions d JOIN videos v ON v.id = d.video_id
                     WHERE v.external_id LIKE %s""",
    }
    out = {}
    for name, sql in queries.items():
        row = conn.execute(sql, (prefix,)).fetchone()
        assert row is not None and row[0] is not None, name
        out[name] = row[0]
    return out


def _count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_same_seed_gives_identical_data_in_fresh_databases(db: Database, empty_db_url: str) -> None:
    first = _run(db, SMALL)
    with psycopg.connect(empty_db_url) as conn:
        upgrade(conn)
        second = generate(conn, SMALL)
        conn.commit()
        other = _digest(conn, 0)
    with db.connection() as conn:
        assert _digest(conn, 0) == other
    assert first.user_tastes == second.user_tastes
    assert first.video_tastes == second.video_tastes


def test_another_seed_gives_other_data(db: Database) -> None:
    _run(db, SMALL)
    _run(db, SynthConfig(videos=600, users=80, decisions=6000, tastes=6, seed=1))
    with db.connection() as conn:
        zero, one = _digest(conn, 0), _digest(conn, 1)
        assert _count(conn, "SELECT count(*) FROM videos") == 1200  # the seeds' ids do not collide
    for name in zero:
        assert zero[name] != one[name], name


def test_rerun_with_the_same_seed_changes_nothing(db: Database) -> None:
    first = _run(db, SMALL)
    assert (first.videos.inserted, first.decisions.inserted) == (SMALL.videos, SMALL.decisions)
    again = _run(db, SMALL)
    assert (again.videos.inserted, again.videos.updated, again.videos.unchanged) == (0, 0, SMALL.videos)
    assert (again.decisions.inserted, again.decisions.updated) == (0, 0)
    assert again.decisions.unchanged == SMALL.decisions
    with db.connection() as conn:
        assert _count(conn, "SELECT count(*) FROM user_video_decisions") == SMALL.decisions


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        SynthConfig(videos=30, users=7, decisions=210, tastes=3, seed=5),  # every (user, video) pair
        SynthConfig(videos=50, users=40, decisions=25, tastes=50),  # fewer decisions than users
        SynthConfig(videos=10, users=3, decisions=0, tastes=1),
    ],
    ids=["small", "full-matrix", "sparse", "no-decisions"],
)
def test_counts_are_exact_and_pairs_distinct(db: Database, config: SynthConfig) -> None:
    result = _run(db, config)
    assert result.decisions.read == result.decisions.inserted == config.decisions  # nothing collapsed
    assert result.decisions.unknown_video == 0
    assert len(result.user_tastes) == config.users and len(result.video_tastes) == config.videos
    with db.connection() as conn:
        assert _count(conn, "SELECT count(*) FROM videos") == config.videos
        assert _count(conn, "SELECT count(*) FROM user_video_decisions") == config.decisions
        users = _count(conn, "SELECT count(DISTINCT user_id) FROM user_video_decisions")
        tags = conn.execute(
            "SELECT min(n), max(n) FROM (SELECT count(*) AS n FROM video_tags GROUP BY video_id) s"
        ).fetchone()
        people = conn.execute(
            "SELECT min(n), max(n) FROM (SELECT count(*) AS n FROM video_performers GROUP BY video_id) s"
        ).fetchone()
        tagged = _count(conn, "SELECT count(DISTINCT video_id) FROM video_tags")
    assert users == min(config.users, config.decisions)
    assert tagged == config.videos
    assert tags is not None and tags[0] >= 3 and tags[1] <= 8
    assert people is not None and people[0] >= 1 and people[1] <= 3
    assert all(1 <= len(t) <= 2 and t == sorted(set(t)) for t in result.user_tastes.values())


def test_catalog_rows_are_complete(db: Database) -> None:
    _run(db, SMALL)
    with db.connection() as conn:
        row = conn.execute(
            """SELECT count(*) FILTER (WHERE title = '' OR description IS NULL OR maker IS NULL
                                         OR label IS NULL OR duration_seconds IS NULL OR price IS NULL
                                         OR product_released_at IS NULL OR thumbnail_url IS NULL
                                         OR sample_video_url IS NULL OR product_url IS NULL
                                         OR review_count IS NULL OR source <> 'synthetic'),
                      count(*) FILTER (WHERE price = 0), min(price) FILTER (WHERE price > 0), max(price),
                      min(product_released_at), max(product_released_at),
                      count(DISTINCT maker), count(*) FILTER (WHERE series IS NOT NULL)
               FROM videos"""
        ).fetchone()
    assert row is not None
    incomplete, free, cheapest, dearest, first, last, makers, in_series = row
    assert incomplete == 0
    assert 0 < free < SMALL.videos * 0.1
    assert cheapest >= 300 and dearest <= 3000
    assert first >= EPOCH and last < EPOCH + timedelta(days=3 * 365)
    assert last - first > timedelta(days=2 * 365)  # spread over the whole range
    assert makers > SMALL.tastes and 0 < in_series < SMALL.videos


def test_planted_tastes_are_findable(db: Database) -> None:
    config = SynthConfig()  # the default size, as `twotower demo` uses it
    result = _run(db, config)
    with db.connection() as conn:
        taste = dict(conn.execute("SELECT id, (raw->'synthetic'->>'taste')::int FROM videos").fetchall())
        ext = dict(conn.execute("SELECT id, external_id FROM videos").fetchall())
        swipes = conn.execute("SELECT user_id, video_id, decision_type FROM user_video_decisions").fetchall()
        tag_links = conn.execute("SELECT tag_id, video_id FROM video_tags").fetchall()
    assert {ext[v]: k for v, k in taste.items()} == result.video_tastes  # the DB carries the planted truth

    size = Counter(taste.values())
    mine_liked = liked = 0
    chance = 0.0
    likes: dict[bool, list[int]] = {True: [0, 0], False: [0, 0]}
    per_video: Counter[uuid.UUID] = Counter()
    shown: defaultdict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0])
    for user, video, kind in swipes:
        own = taste[video] in result.user_tastes[user]
        likes[own][0] += kind == "like"
        likes[own][1] += 1
        per_video[video] += 1
        shown[user][0] += own
        shown[user][1] += 1
        if kind == "like":
            liked += 1
            mine_liked += own
            chance += sum(size[k] for k in result.user_tastes[user]) / config.videos
    # likes land on the user's own tastes far more often than a taste-blind user's would
    assert mine_liked / liked > 0.75 and mine_liked / liked > 3 * chance / liked
    assert likes[True][0] / likes[True][1] > 0.65 and likes[False][0] / likes[False][1] < 0.2
    shown_own = sorted(n_own / n for n_own, n in shown.values())
    assert shown_own[len(shown_own) // 2] > 0.6  # users are shown their tastes mostly

    # tags say which taste a video is in: most tags' videos are nearly all from one taste
    by_tag: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for tag, video in tag_links:
        by_tag[tag][taste[video]] += 1
    purity = sorted(c.most_common(1)[0][1] / c.total() for c in by_tag.values() if c.total() >= 20)
    assert purity[len(purity) // 2] > 0.8
    assert purity[0] < 0.5  # ... and the generic tags say nothing
    assert len(size) == config.tastes and max(size.values()) > 1.5 * min(size.values())  # tastes differ

    # popularity is long-tailed: the top tenth of videos draws far more than the tenth a flat catalog would
    top = sum(n for _, n in per_video.most_common(config.videos // 10))
    assert top / len(swipes) > 0.25


def test_swipes_are_ordered_in_time_after_release(db: Database) -> None:
    _run(db, SMALL)
    with db.connection() as conn:
        before_release = _count(
            conn,
            """SELECT count(*) FROM user_video_decisions d JOIN videos v ON v.id = d.video_id
               WHERE d.created_at < v.product_released_at""",
        )
        ties = _count(
            conn,
            """SELECT count(*) - count(DISTINCT (user_id, created_at)) FROM user_video_decisions""",
        )
        span = conn.execute("SELECT min(created_at), max(created_at) FROM user_video_decisions").fetchone()
        # a temporal split is meaningful: most active users have swipes on both sides of the median time
        both_sides = conn.execute(
            """WITH cut AS (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY created_at) AS t
                            FROM user_video_decisions)
               SELECT count(*) FILTER (WHERE bool_or_before AND bool_or_after), count(*)
               FROM (SELECT bool_or(created_at < cut.t) AS bool_or_before,
                            bool_or(created_at >= cut.t) AS bool_or_after
                     FROM user_video_decisions, cut GROUP BY user_id HAVING count(*) >= 20) s"""
        ).fetchone()
    assert before_release == 0
    assert ties == 0  # each user's history is strictly ordered
    assert span is not None and span[0] >= EPOCH and span[1] <= EPOCH + timedelta(days=3 * 365, hours=1)
    assert both_sides is not None and both_sides[0] > 0.5 * both_sides[1]


def test_progress_is_reported(db: Database) -> None:
    messages: list[str] = []
    with db.connection() as conn:
        generate(conn, SynthConfig(videos=20, users=3, decisions=30, tastes=2), messages.append)
    assert any("videos" in m for m in messages) and any("decisions" in m for m in messages)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (SynthConfig(videos=0), "--videos must be at least 1, got 0"),
        (SynthConfig(users=0), "--users must be at least 1, got 0"),
        (SynthConfig(decisions=-1), "--decisions must be at least 0, got -1"),
        (
            SynthConfig(videos=2000, users=1000, decisions=5_000_000),
            "--decisions must be at most videos × users (2,000,000), got 5,000,000",
        ),
        (SynthConfig(videos=10, users=5, decisions=5, tastes=11), "--tastes must be between 1 and"),
        (SynthConfig(tastes=0), "--tastes must be between 1 and the number of videos (2,000), got 0"),
        (SynthConfig(seed=-3), "--seed must be a non-negative integer, got -3"),
        (SynthConfig(source=" "), "--source must not be empty"),
    ],
)
def test_bad_configs_are_refused_before_writing(db: Database, config: SynthConfig, message: str) -> None:
    with db.connection() as conn:
        with pytest.raises(InputError) as info:
            generate(conn, config)
        assert message in str(info.value)
        assert _count(conn, "SELECT count(*) FROM videos") == 0

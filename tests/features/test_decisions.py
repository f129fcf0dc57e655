"""``load_decision_log`` streams the decisions as binary COPY and decodes them with numpy (issue 31: nothing reads
all decisions into Python objects): the same log as the row-by-row reading it replaced, for the whole catalog, a
part of it (decisions on other videos dropped, users left with none absent) and a range of users."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from tests.support.db import synth_database
from twotower.features.catalog import load_catalog
from twotower.features.decisions import DecisionLog, load_decision_log, sample_users
from twotower.synth import SynthConfig


@pytest.fixture(scope="module")
def conn(pg_server: str, template_db: str) -> Iterator[psycopg.Connection]:
    config = SynthConfig(videos=600, users=90, decisions=9_000, seed=3, tastes=4)
    with synth_database(pg_server, template_db, config) as url, psycopg.connect(url) as c:
        yield c


def _reference(
    conn: psycopg.Connection[Any], video_ids: list[uuid.UUID], user_range: tuple[str, str] | None
) -> DecisionLog:
    """The row-by-row reading (one Python tuple per decision) that ``load_decision_log`` replaced."""
    index = {vid: i for i, vid in enumerate(video_ids)}
    where = "WHERE d.user_id BETWEEN %s AND %s" if user_range is not None else ""
    rows = conn.execute(
        "SELECT d.user_id, d.video_id, d.decision_type = 'like', extract(epoch FROM d.created_at)::float8 "
        f"FROM user_video_decisions d JOIN videos v ON v.id = d.video_id {where} "
        "ORDER BY d.user_id, d.created_at, v.source, v.external_id",
        user_range,
    ).fetchall()
    users: dict[uuid.UUID, int] = {}
    kept = [(users.setdefault(u, len(users)), index[v], like, ts) for u, v, like, ts in rows if v in index]
    columns = list(zip(*kept, strict=True)) or [[], [], [], []]
    return DecisionLog(list(users), np.array(columns[0], np.int32), np.array(columns[1], np.int32),
                       np.array(columns[2], bool), np.array(columns[3], np.float64))  # fmt: skip


@pytest.mark.parametrize("part", ["all", "every third video", "one video", "none"])
@pytest.mark.parametrize(
    "user_range", [None, ("40000000-0000-0000-0000-000000000000", "bfffffff-ffff-ffff-ffff-ffffffffffff")]
)
def test_the_same_log_as_reading_row_by_row(
    conn: psycopg.Connection[Any], part: str, user_range: tuple[str, str] | None
) -> None:
    ids = load_catalog(conn).ids
    ids = {"all": ids, "every third video": ids[::3], "one video": ids[5:6], "none": []}[part]
    got, want = load_decision_log(conn, ids, user_range), _reference(conn, ids, user_range)
    assert got.user_ids == want.user_ids
    for name in ("user", "item", "like", "ts"):
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    if part == "all" and user_range is None:
        assert len(got) == 9_000 and got.n_users == 90


def test_the_log_of_listed_users_is_theirs_alone(conn: psycopg.Connection[Any]) -> None:
    ids = load_catalog(conn).ids
    everyone = load_decision_log(conn, ids)
    chosen = everyone.user_ids[3:60:7]
    got = load_decision_log(conn, ids, users=chosen)
    assert got.user_ids == sorted(chosen, key=str) == chosen  # the log's order: by user id
    keep = np.isin(everyone.user, [everyone.user_ids.index(u) for u in chosen])
    for name in ("item", "like", "ts"):
        np.testing.assert_array_equal(getattr(got, name), getattr(everyone, name)[keep], err_msg=name)
    assert len(load_decision_log(conn, ids, users=[])) == 0
    assert len(load_decision_log(conn, ids, users=[uuid.uuid4()])) == 0  # nobody's decisions


def test_sampled_users_are_distinct_users_with_decisions_and_follow_the_seed(conn: psycopg.Connection[Any]) -> None:
    everyone = load_decision_log(conn, load_catalog(conn).ids).user_ids
    first = sample_users(conn, 30, seed=1)
    assert first == sample_users(conn, 30, seed=1)
    assert first != sample_users(conn, 30, seed=2)
    assert len(first) == len(set(first)) == 30 and set(first) <= set(everyone)
    assert first == sorted(first, key=str)  # in id order, as the log lists its users
    assert sample_users(conn, 90, seed=5) == sample_users(conn, 1000, seed=6) == everyone  # all, wrapping around
    assert sample_users(conn, 0) == []

"""Every statement of the serving path, timed at 100k videos under custom and under generic plans.

    .venv/bin/python bench/statements.py [--data-dir D] [--small] [--runs 30]

The server's pooled connections force generic plans (``plan_cache_mode = force_generic_plan``): a generic plan
is made once, without the parameters' values, and guesses 10 elements for an array. A statement whose generic
plan is much slower than its custom plan at this size is a bug. Each statement runs on a connection with the
serving pool's settings (``serving_session``), the plan mode being the only difference, with the same inputs as
the server gives it: a user with many decisions, a user without, the fallbacks' candidate lists. Writes
bench/results/statements.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write

from serve import _environment
from twotower.features.catalog import load_catalog
from twotower.serve import serving_session
from twotower.serve.recommend import (
    Filters,
    PopularityCache,
    Recommender,
    _conditions,
    _params,
    ann_query,
    fetch_rows,
    load_history,
)
from twotower.settings import Settings

Statement = Callable[[psycopg.Connection[Any]], object]


def _statements(conn: psycopg.Connection[Any], version: str, dim: int) -> dict[str, Statement]:
    """name -> the work, as the server does it (the same functions, the same SQL)."""
    heavy = conn.execute("SELECT user_id FROM user_video_decisions GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
    user: uuid.UUID = heavy.fetchone()[0]  # type: ignore[index]
    row = conn.execute("SELECT embedding FROM user_embeddings WHERE model_version = %s AND user_id = %s",
                       (version, user)).fetchone()  # fmt: skip
    assert row is not None, "the bench user has no stored embedding"
    vector = row[0]
    video = conn.execute("SELECT video_id FROM video_embeddings WHERE model_version = %s LIMIT 1", (version,))
    some_video: uuid.UUID = video.fetchone()[0]  # type: ignore[index]
    history = load_history(conn, user, 50, 20)
    recent = history.likes + history.nopes
    popularity = PopularityCache()
    popularity.refresh(conn)
    recommender = Recommender(popularity, seed=0)  # linear: the SQL scoring (before the server's index is built)
    indexed = Recommender(popularity, seed=0)
    indexed.tags.refresh(conn)
    tags = [r[0] for r in conn.execute("SELECT name FROM tags ORDER BY id LIMIT 6").fetchall()]
    makers = [r[0] for r in conn.execute("SELECT DISTINCT maker FROM videos WHERE maker IS NOT NULL LIMIT 5")]
    filters = Filters(exclude_tags=tuple(tags[:3]), include_tags=tuple(tags[3:]), makers=tuple(makers),
                      max_price=3000.0)  # fmt: skip

    def ann(f: Filters, limit: int = 20) -> Statement:
        where = _conditions(f, user, True)
        query = ann_query(version, dim, where, sql.SQL("%(q)s"), limit)
        return lambda c: fetch_rows(c, query, {**_params(f, user, limit), "q": vector})

    similar_where = sql.SQL("v.is_active AND e.video_id <> %(video)s")
    similar_vector = sql.SQL("SELECT embedding FROM video_embeddings WHERE model_version = {} AND video_id = "
                             "%(video)s").format(sql.Literal(version))  # fmt: skip
    similar = ann_query(version, dim, similar_where, similar_vector, 20)
    linear_rows = conn.execute(
        "SELECT video_id FROM user_video_decisions WHERE user_id = %s AND decision_type = 'like' LIMIT 1", (user,)
    ).fetchall()
    assert linear_rows
    new_user = uuid.uuid4()

    def decision(c: psycopg.Connection[Any]) -> None:
        with c.transaction(force_rollback=True):
            c.execute(
                "INSERT INTO user_video_decisions (user_id, video_id, decision_type) VALUES (%s, %s, %s) "
                "ON CONFLICT (user_id, video_id) DO UPDATE SET decision_type = EXCLUDED.decision_type, "
                "created_at = now() RETURNING video_id, decision_type, created_at",
                (new_user, some_video, "like"),
            ).fetchone()

    return {
        "history (50 likes + 20 nopes, counts)": lambda c: load_history(c, user, 50, 20),
        "two_tower ANN, limit 20, seen excluded": ann(Filters()),
        "two_tower ANN, limit 100": ann(Filters(), 100),
        "two_tower ANN, all five filters": ann(filters),
        "similar videos (ANN from a stored vector)": lambda c: fetch_rows(
            c, similar, {"video": some_video, "limit": 20}
        ),
        "features of 70 videos (newer than the table)": lambda c: load_catalog(c, recent),
        "popularity answer (60 candidates)": lambda c: recommender.popular(c, new_user, 20, True, Filters()),
        "linear answer (profile + 600 candidates)": lambda c: recommender.linear(c, user, 20, True, Filters()),
        "linear answer, limit 100 (2,200 candidates)": lambda c: recommender.linear(c, user, 100, True, Filters()),
        "linear answer, in-memory tag index (the server's)": lambda c: indexed.linear(c, user, 20, True, Filters()),
        "linear answer, in-memory, limit 100": lambda c: indexed.linear(c, user, 100, True, Filters()),
        "tag index build (background)": lambda c: Recommender(popularity).tags.refresh(c),
        "has likes (fallback choice)": lambda c: c.execute(
            "SELECT EXISTS (SELECT 1 FROM user_video_decisions WHERE user_id = %s AND decision_type = 'like')",
            (user,),
        ).fetchone(),
        "record a decision (rolled back)": decision,
        "popularity cache refresh (background)": lambda c: PopularityCache().refresh(c),
    }


def _time(conn: psycopg.Connection[Any], work: Statement, runs: int) -> float:
    for _ in range(3):  # warm: caches, and psycopg prepares a statement on its 5th run
        work(conn)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work(conn)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from pgvector.psycopg import register_vector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="the data of bench/serve.py (kept there, reused)")
    parser.add_argument("--small", action="store_true", help="10k/1k/100k instead of 100k/10k/1M")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    size = (10_000, 1_000, 100_000) if args.small else (100_000, 10_000, 1_000_000)
    rows: dict[str, dict[str, float]] = {}
    with _environment(args.data_dir, size) as (db, _data, _seconds):
        session = serving_session(Settings())
        for mode in ("force_custom_plan", "force_generic_plan"):
            with psycopg.connect(db.conninfo, autocommit=True) as conn:
                register_vector(conn)
                for name, value in {**session, "plan_cache_mode": mode}.items():
                    conn.execute("SELECT set_config(%s, %s, false)", (name, value))
                dim = conn.execute("SELECT embedding_dim FROM model_versions WHERE version = 'bench'").fetchone()
                assert dim is not None
                for name, work in _statements(conn, "bench", int(dim[0])).items():
                    rows.setdefault(name, {})[mode.split("_")[1]] = round(_time(conn, work, args.runs), 2)
    print(f"{'statement (median of ' + str(args.runs) + ' runs, ms)':<52} {'custom':>8} {'generic':>8} {'ratio':>6}")
    worst = 0.0
    for name, t in rows.items():
        ratio = t["generic"] / t["custom"] if t["custom"] else float("nan")
        worst = max(worst, ratio)
        print(f"{name:<52} {t['custom']:>8.2f} {t['generic']:>8.2f} {ratio:>6.2f}")
    report = {"machine": machine(), "data": dict(zip(("videos", "users", "decisions"), size, strict=True)),
              "runs": args.runs, "statements_ms": rows, "worst_generic_over_custom": round(worst, 2)}  # fmt: skip
    write("statements_small" if args.small else "statements", report)
    return 0 if worst < 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())

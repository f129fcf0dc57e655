"""The scale guard: what the server runs stays linear in its input at a size where plans change, and the real
server on a catalog of 25,000 videos answers every request with the two-tower model.

(a) Each statement the server runs with a variable-length array or a large result runs under the exact session
settings of the serving pool (generic plans: an array parameter is planned as if it held 10 elements), and also
with the planner steered away from hash joins (the plan a database with other statistics picks). Its time for
20,000 ids must be within a linear multiple of its time for 2,000, measured in the same test: a nested loop
over the ids (quadratic) takes about 100 times as long, a linear plan about 10 times.

(b) A one-epoch deploy, the real ``twotower serve`` process, 200 requests from users with decisions: every answer
comes from ``two_tower`` with exactly ``limit`` items, and the API's median is within a fixed multiple of the
median of the raw pgvector query for the same users, timed in the same test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support.api import SECRET, bearer
from tests.support.db import database_copy, deploy_template, drop_db, free_port
from twotower.features.catalog import Catalog, load_catalog
from twotower.features.pipeline import FeaturePipeline
from twotower.inference.items import LOOKBACK, ItemIndex
from twotower.serve import serving_session
from twotower.serve.recommend import Filters, PopularityCache, Recommender
from twotower.serve.runtime import LOADER_SESSION
from twotower.settings import Settings
from twotower.synth import SynthConfig

VIDEOS, USERS, DECISIONS = 25_000, 2_500, 125_000
SMALL, LARGE = 2_000, 20_000
LINEAR_BOUND = 30.0  # t(20,000) / t(2,000): 10 for a linear statement, ~100 for a quadratic one
# the planner's choices to survive: the serving pool's own settings, and the same with hash joins (and merge joins)
# off, which is what a database whose statistics favour nested loops ends up with
PLANNERS = {
    "serving": {},
    "no-hashjoin": {"enable_hashjoin": "off"},
    "nestloop-only": {"enable_hashjoin": "off", "enable_mergejoin": "off"},
}
TEMPLATE = "tt_scale_seed"
START = datetime(1970, 1, 1, tzinfo=UTC)
NO_STAMPS = np.zeros(0, dtype=np.int64)
NO_IDS = np.zeros(0, dtype="S16")  # an item table with no video


@pytest.fixture(scope="module")
def scale(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("scale")
    config = SynthConfig(videos=VIDEOS, users=USERS, decisions=DECISIONS, seed=7)
    deploy_template(pg_server, template_db, TEMPLATE, data, config)
    with psycopg.connect(make_conninfo(pg_server, dbname=TEMPLATE), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    with database_copy(pg_server, TEMPLATE) as url:
        yield url, data
    drop_db(pg_server, TEMPLATE)


def _session(url: str, session: dict[str, str]) -> psycopg.Connection[Any]:
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    for name, value in session.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    return conn


def _best_of(runs: int, work: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(runs):
        started = clock()
        work()
        times.append(clock() - started)
    return min(times)


def _growth(url: str, session: dict[str, str], statement: Callable[[psycopg.Connection[Any], int], object]) -> float:
    with _session(url, session) as conn:
        statement(conn, SMALL)  # warm the caches (and let psycopg prepare the statement)
        small = _best_of(3, lambda: statement(conn, SMALL))
        large = _best_of(2, lambda: statement(conn, LARGE))
    return large / small


def _ids(url: str) -> list[uuid.UUID]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM videos ORDER BY md5(id::text)").fetchall()]


def _statements(url: str, data: Path) -> dict[str, Callable[[psycopg.Connection[Any], int], object]]:
    ids = _ids(url)
    pipeline = FeaturePipeline.load(data / "models" / "v" / "features.json")
    user = uuid.uuid4()
    recommender = Recommender(PopularityCache())
    # the LARGE first ids changed one millisecond apart, in the future: a refresh from ``changed[n]`` reads n videos
    with psycopg.connect(url) as conn:  # (the trigger would stamp now())
        conn.execute("ALTER TABLE videos DISABLE TRIGGER videos_touch_updated_at")
        conn.execute(
            "UPDATE videos v SET updated_at = '2100-01-01'::timestamptz + c.n * interval '1 ms' "
            "FROM unnest(%s::uuid[]) WITH ORDINALITY AS c(id, n) WHERE v.id = c.id",
            (ids[:LARGE],),
        )
    empty = pipeline.transform(Catalog.from_rows([])).with_padding_row()

    def catalog(conn: psycopg.Connection[Any], n: int) -> None:  # the request's history, batch jobs, loading
        assert len(load_catalog(conn, ids[:n])) == n

    def listed(conn: psycopg.Connection[Any], n: int) -> None:  # the fallbacks' candidate lists
        candidates = [(v, 1.0 / (i + 1)) for i, v in enumerate(ids[:n])]
        assert len(recommender.listed(conn, candidates, user, 100, True, Filters())) == 100

    def gather(conn: psycopg.Connection[Any], n: int) -> None:  # videos newer than the server's item table
        assert len(ItemIndex(empty, NO_IDS, NO_STAMPS, START).gather(conn, pipeline, ids[:n])) == n + 1

    def refreshed(conn: psycopg.Connection[Any], n: int) -> None:  # the catalog changes a server picks up
        since = START.replace(year=2100) + timedelta(milliseconds=LARGE - n + 1) + LOOKBACK
        assert len(ItemIndex(empty, NO_IDS, NO_STAMPS, since).refreshed(conn, pipeline)) == n

    return {"load_catalog": catalog, "listed": listed, "gather": gather, "refreshed": refreshed}


@pytest.mark.parametrize("planner", list(PLANNERS))
def test_array_statements_grow_linearly_under_the_serving_settings(
    scale: tuple[str, Path], pg_server: str, planner: str
) -> None:
    _, data = scale
    with database_copy(pg_server, TEMPLATE) as url:
        statements = _statements(url, data)
        growth = {}
        for session in (serving_session(Settings()), LOADER_SESSION):  # requests; the model loader
            for name, statement in statements.items():
                growth[f"{name}@{session['statement_timeout']}"] = _growth(url, {**session, **PLANNERS[planner]},
                                                                           statement)  # fmt: skip
    print(planner, {name: round(g, 1) for name, g in growth.items()})
    slow = {name: round(g, 1) for name, g in growth.items() if g > LINEAR_BOUND}
    assert not slow, f"t({LARGE:,})/t({SMALL:,}) over {LINEAR_BOUND:g} (quadratic?): {slow}; all: {growth}"


def test_a_refresh_after_a_catalog_sync_costs_the_server_a_fraction_of_reading_it(
    scale: tuple[str, Path], pg_server: str
) -> None:
    """For ten minutes after a sync that touched every video, every video is inside the lookback window that each
    server process compares with its item table every 30 s. Read as rows (UUID and datetime objects), 100k of
    them cost a worker ~250 ms of Python holding the GIL, and its requests stalled that long. The comparison takes
    one bytea and arrays: its CPU time in this process must be a fraction of reading the same window as rows,
    timed in the same test, on 25,000 videos."""
    _, data = scale
    pipeline = FeaturePipeline.load(data / "models" / "v" / "features.json")
    with database_copy(pg_server, TEMPLATE) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE videos SET updated_at = now()")  # the sync
        index = ItemIndex.load(conn, pipeline)
        assert index.refreshed(conn, pipeline).table is index.table  # nothing changed since: nothing is read again
        window = (index.as_of - LOOKBACK,)
        # CPU time of this thread: what the server's process spends, not the database
        refresh = _best_of(3, lambda: index.refreshed(conn, pipeline), time.thread_time)
        rows = _best_of(
            3,
            lambda: conn.execute("SELECT id, updated_at FROM videos WHERE updated_at >= %s", window).fetchall(),
            time.thread_time,
        )
    print(f"refresh of {VIDEOS:,} videos: {refresh * 1e3:.1f} ms of CPU here; read as rows: {rows * 1e3:.1f} ms")
    assert refresh < rows / 3, (refresh, rows)


def test_the_real_server_answers_with_the_model_at_scale(scale: tuple[str, Path], tmp_path: Path) -> None:
    url, data = scale
    with psycopg.connect(url) as conn:
        query = "SELECT user_id FROM user_video_decisions GROUP BY user_id ORDER BY user_id LIMIT 200"
        users = [r[0] for r in conn.execute(query).fetchall()]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=url, TWOTOWER_DATA_DIR=str(data), TWOTOWER_ARTIFACT_STORE=str(data / "store"),
               TWOTOWER_JWT_SECRET=SECRET, TWOTOWER_JWT_AUDIENCE="authenticated")  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "twotower", "serve", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        ready = _wait_ready(base, server, tmp_path / "serve.log")
        assert ready["model_version"] == "v" and ready["algorithm"] == "two_tower", ready
        algorithms: Counter[str] = Counter()
        api: list[float] = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for user in users:
                headers = bearer(user)
                started = time.perf_counter()
                response = client.post("/v1/recommendations", json={"limit": 20}, headers=headers)
                api.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
                answer = response.json()
                algorithms[answer["algorithm"]] += 1
                assert answer["total_count"] == 20 and len(answer["recommendations"]) == 20
        ann = _raw_ann(url, users)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert algorithms == {"two_tower": len(users)}, algorithms
    ratio = statistics.median(api) / statistics.median(ann)
    print(f"API p50 {1000 * statistics.median(api):.2f} ms, raw ANN p50 {1000 * statistics.median(ann):.2f} ms, "
          f"ratio {ratio:.1f}")  # fmt: skip
    # the raw query takes ~0.2 ms; the API adds HTTP, the token, the history read, the user tower, the exclusion of
    # seen videos and the metadata (~20x at 25k and at 100k); an exact scan instead of the index, or a fallback
    # scoring the catalog in SQL, is 50x to 300x
    assert ratio < 40, f"API p50 is {ratio:.1f}x the raw ANN query's"


def _raw_ann(url: str, users: list[uuid.UUID]) -> list[float]:
    """The physical floor: the HNSW query alone, with the users' stored embeddings, under the serving settings."""
    times = []
    with _session(url, serving_session(Settings())) as conn:
        rows = conn.execute("SELECT user_id, embedding FROM user_embeddings WHERE model_version = 'v' AND "
                            "user_id = ANY(%s)", (users,)).fetchall()  # fmt: skip
        vectors = {u: np.asarray(e.to_numpy() if hasattr(e, "to_numpy") else e, np.float32) for u, e in rows}
        dim = len(next(iter(vectors.values())))
        query = (f"SELECT video_id FROM video_embeddings WHERE model_version = 'v' "
                 f"ORDER BY embedding::vector({dim}) <#> %s::vector({dim}) LIMIT 20")  # fmt: skip
        for user in users:
            started = time.perf_counter()
            conn.execute(query, (vectors[user],)).fetchall()
            times.append(time.perf_counter() - started)
    return times


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            response = httpx.get(f"{base}/readyz", timeout=2)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout:g} s: {log.read_text()[-2000:]}")

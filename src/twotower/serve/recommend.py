"""Recommendations: the caller's recent decisions → user tower → pgvector ANN over the active generation.

Two round trips: one reads the user's recent decisions with the features of those videos, one runs the ANN
query with the filters and the exclusion of seen videos. The ANN query uses HNSW iterative scans; when they
stop short (a user who has seen most of the catalog, very narrow filters) an exact backfill inside the same
statement tops the list up, so exactly ``min(limit, available)`` videos come back.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from twotower.features.examples import UserBatch
from twotower.features.history import user_stats
from twotower.inference.items import ItemIndex
from twotower.inference.towers import OnnxTowers
from twotower.serve.linear import TagIndex

__all__ = [
    "Algorithm",
    "Filters",
    "History",
    "PopularityCache",
    "Recommendation",
    "Recommender",
    "fetch_rows",
    "load_history",
]

Algorithm = Literal["two_tower", "linear", "popularity"]

_META = sql.SQL(
    "v.id, v.title, v.thumbnail_url, v.sample_video_url, v.product_url, v.maker, v.price::float8 AS price, "
    "v.duration_seconds, v.product_released_at, "
    "COALESCE((SELECT array_agg(t.name ORDER BY t.name) FROM video_tags vt JOIN tags t ON t.id = vt.tag_id "
    "WHERE vt.video_id = v.id), '{}') AS tags, "
    "COALESCE((SELECT array_agg(p.name ORDER BY p.name) FROM video_performers vp "
    "JOIN performers p ON p.id = vp.performer_id WHERE vp.video_id = v.id), '{}') AS performers"
)

_HISTORY = """
WITH counts AS (
    SELECT count(*) FILTER (WHERE decision_type = 'like') AS likes,
           count(*) FILTER (WHERE decision_type = 'nope') AS nopes
    FROM user_video_decisions WHERE user_id = %(user)s
), recent AS (
    (SELECT video_id, decision_type, created_at FROM user_video_decisions
     WHERE user_id = %(user)s AND decision_type = 'like' ORDER BY created_at DESC LIMIT %(max_likes)s)
    UNION ALL
    (SELECT video_id, decision_type, created_at FROM user_video_decisions
     WHERE user_id = %(user)s AND decision_type = 'nope' ORDER BY created_at DESC LIMIT %(max_nopes)s)
)
SELECT c.likes, c.nopes, r.decision_type, r.video_id{fresh}
FROM counts c LEFT JOIN recent r ON true
ORDER BY r.created_at DESC NULLS LAST
"""
# the user's decisions of the last seconds, with the history (read_your_writes=primary: a replica may lack them)
_FRESH = """,
    (SELECT coalesce(array_agg(f.video_id), '{}') FROM user_video_decisions f WHERE f.user_id = %(user)s
     AND f.created_at > now() - make_interval(secs => %(fresh)s)) AS fresh,
    (SELECT coalesce(array_agg(f.video_id), '{}') FROM user_video_decisions f WHERE f.user_id = %(user)s
     AND f.decision_type = 'nope' AND f.created_at > now() - make_interval(secs => %(fresh)s)) AS fresh_nopes"""


@dataclass(frozen=True)
class Filters:
    exclude_tags: tuple[str, ...] = ()
    include_tags: tuple[str, ...] = ()
    makers: tuple[str, ...] = ()
    max_price: float | None = None
    released_after: datetime | None = None
    exclude_ids: tuple[uuid.UUID, ...] = ()  # besides the user's decisions (their newest, when a replica answers)


@dataclass
class History:
    likes: list[uuid.UUID] = field(default_factory=list)  # most recent first
    nopes: list[uuid.UUID] = field(default_factory=list)
    n_likes: int = 0
    n_nopes: int = 0
    fresh: list[uuid.UUID] = field(default_factory=list)  # decided in the last seconds (when asked for)
    fresh_nopes: list[uuid.UUID] = field(default_factory=list)

    def unseen(self, filters: Filters, exclude_liked: bool) -> Filters:
        """``filters`` that also exclude the fresh decisions (all of them, or the nopes), for a replica's read."""
        fresh = self.fresh if exclude_liked else self.fresh_nopes
        return replace(filters, exclude_ids=filters.exclude_ids + tuple(fresh)) if fresh else filters

    @property
    def empty(self) -> bool:
        return self.n_likes + self.n_nopes == 0


@dataclass
class Recommendation:
    items: list[dict[str, Any]]
    algorithm: Algorithm
    model_version: str | None


def load_history(
    conn: psycopg.Connection[Any], user: uuid.UUID, max_likes: int, max_nopes: int, fresh: float | None = None
) -> History:
    """Round trip 1: the user's most recent likes and nopes, and their totals; with ``fresh``, also the videos they
    decided on in the last ``fresh`` seconds."""
    query = _HISTORY.format(fresh=_FRESH if fresh is not None else "")
    params = {"user": user, "max_likes": max_likes, "max_nopes": max_nopes, "fresh": fresh}
    rows = conn.execute(query, params).fetchall()
    history = History()
    for likes, nopes, kind, video, *recent in rows:
        history.n_likes, history.n_nopes = int(likes), int(nopes)
        if recent:
            history.fresh, history.fresh_nopes = list(recent[0]), list(recent[1])
        if kind == "like":
            history.likes.append(video)
        elif kind == "nope":
            history.nopes.append(video)
    return history


def user_embedding(
    towers: OnnxTowers, items: ItemIndex, conn: psycopg.Connection[Any], history: History
) -> npt.NDArray[np.float32]:
    """The user tower on this history (the same inputs as training: most recent first, stats over all)."""
    likes, nopes = history.likes, history.nopes
    table = items.gather(conn, towers.pipeline, likes + nopes)
    pad = len(likes) + len(nopes)

    def window(start: int, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if n == 0:  # one masked slot: the towers take any history length >= 1
            return np.array([[pad]], dtype=np.int64), np.zeros((1, 1), dtype=np.float32)
        return np.arange(start, start + n, dtype=np.int64)[None, :], np.ones((1, n), dtype=np.float32)

    like_rows, like_mask = window(0, len(likes))
    nope_rows, nope_mask = window(len(likes), len(nopes))
    stats = user_stats(np.array([history.n_likes]), np.array([history.n_nopes]))
    batch = UserBatch(like_rows, like_mask, nope_rows, nope_mask, stats)
    return np.asarray(towers.embed_users(table, batch)[0], dtype=np.float32)


def _conditions(filters: Filters, user: uuid.UUID | None, exclude_liked: bool) -> sql.Composable:
    parts: list[sql.Composable] = [sql.SQL("v.is_active")]
    if filters.exclude_tags:
        parts.append(sql.SQL(
            "NOT EXISTS (SELECT 1 FROM video_tags ft JOIN tags t ON t.id = ft.tag_id "
            "WHERE ft.video_id = v.id AND t.name = ANY(%(exclude_tags)s))"
        ))  # fmt: skip
    if filters.include_tags:
        parts.append(sql.SQL(
            "EXISTS (SELECT 1 FROM video_tags ft JOIN tags t ON t.id = ft.tag_id "
            "WHERE ft.video_id = v.id AND t.name = ANY(%(include_tags)s))"
        ))  # fmt: skip
    if filters.makers:
        parts.append(sql.SQL("v.maker = ANY(%(makers)s)"))
    if filters.max_price is not None:
        parts.append(sql.SQL("v.price <= %(max_price)s"))
    if filters.released_after is not None:
        parts.append(sql.SQL("v.product_released_at >= %(released_after)s"))
    if filters.exclude_ids:
        parts.append(sql.SQL("v.id <> ALL(%(exclude_ids)s::uuid[])"))
    if user is not None:
        kinds = sql.SQL("") if exclude_liked else sql.SQL(" AND d.decision_type = 'nope'")
        parts.append(sql.SQL(
            "NOT EXISTS (SELECT 1 FROM user_video_decisions d WHERE d.user_id = %(user)s AND d.video_id = v.id{})"
        ).format(kinds))  # fmt: skip
    return sql.SQL(" AND ").join(parts)


def _params(filters: Filters, user: uuid.UUID | None, limit: int) -> dict[str, Any]:
    return {
        "exclude_tags": list(filters.exclude_tags), "include_tags": list(filters.include_tags),
        "makers": list(filters.makers), "max_price": filters.max_price, "released_after": filters.released_after,
        "user": user, "limit": limit, "exclude_ids": list(filters.exclude_ids),
    }  # fmt: skip


def ann_query(version: str, dim: int, where: sql.Composable, query_vector: sql.Composable, limit: int) -> sql.Composed:
    """Round trip 2: top ``limit`` of the generation by inner product, with an exact backfill if the index
    scan ran out (the backfill is a one-time-filtered branch: it costs nothing when the ANN part is full).

    The version and the limit are literals (a validated name, an int ≤ 100): the statement is prepared once
    per (version, limit), and its plan knows the limit, which decides between the HNSW index and a scan."""
    distance = sql.SQL("e.embedding::vector({d}) <#> ({q})::vector({d})").format(d=sql.Literal(dim), q=query_vector)
    return sql.SQL("""
WITH ann AS MATERIALIZED (
    SELECT e.video_id, {distance} AS distance
    FROM video_embeddings e JOIN videos v ON v.id = e.video_id
    WHERE e.model_version = {version} AND {where}
    ORDER BY {distance}
    LIMIT {limit}
), backfill AS MATERIALIZED (
    SELECT e.video_id, ({distance}) + 0 AS distance
    FROM video_embeddings e JOIN videos v ON v.id = e.video_id
    WHERE (SELECT count(*) FROM ann) < %(limit)s AND e.model_version = {version} AND {where}
      AND e.video_id NOT IN (SELECT video_id FROM ann)
    ORDER BY 2
    LIMIT {limit}
), picked AS (
    SELECT * FROM ann UNION ALL SELECT * FROM backfill ORDER BY distance LIMIT {limit}
)
SELECT {meta}, -p.distance AS similarity_score
FROM picked p JOIN videos v ON v.id = p.video_id
ORDER BY p.distance
""").format(
        distance=distance, version=sql.Literal(version), where=where, meta=_META, limit=sql.Literal(int(limit))
    )  # fmt: skip


class PopularityCache:
    """Like counts of the most liked videos and a sample of active videos, refreshed in the background."""

    def __init__(self, ttl: float = 300.0, top: int = 2000, sample: int = 5000) -> None:
        self.ttl, self.top, self.sample = ttl, top, sample
        self.popular: list[tuple[uuid.UUID, int]] = []
        self.active_sample: list[uuid.UUID] = []
        self.loaded_at = 0.0
        self._lock = threading.Lock()
        self._due = 0.0  # the next refresh, jittered so that a server's processes do not refresh together

    def stale(self) -> bool:
        return time.monotonic() > self._due

    def refresh(self, conn: psycopg.Connection[Any]) -> None:
        """Read the counts again. The aggregate reads every like (1M decisions: ~0.3 s of three processes with a
        parallel plan, 1.7 s under load): it runs with a serial plan, one core, so requests keep the others, and
        every ~5 minutes (popularity moves slowly; a cold user is the only one it answers)."""
        with self._lock, conn.transaction():
            if not self.stale():  # another thread refreshed it while this one waited
                return
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            popular = conn.execute(
                "SELECT d.video_id, count(*) FROM user_video_decisions d JOIN videos v ON v.id = d.video_id "
                "WHERE d.decision_type = 'like' AND v.is_active GROUP BY d.video_id ORDER BY 2 DESC, 1 LIMIT %s",
                (self.top,),
            ).fetchall()
            sample = conn.execute(
                "SELECT id FROM videos WHERE is_active ORDER BY random() LIMIT %s", (self.sample,)
            ).fetchall()
            self.popular = [(r[0], int(r[1])) for r in popular]
            self.active_sample = [r[0] for r in sample]
            self.loaded_at = time.monotonic()
            self._due = self.loaded_at + self.ttl * random.uniform(0.9, 1.1)

    def candidates(self, k: int, rng: random.Random, explore: float = 0.2) -> list[tuple[uuid.UUID, float]]:
        """About ``k`` candidates: popular videos sampled by sqrt-popularity (Gumbel top-k), a share ``explore``
        of random active videos mixed in. Scores are popularity relative to the most liked video."""
        popular, sample = self.popular, self.active_sample
        top = popular[0][1] if popular else 1
        keys = [(0.5 * math.log(c) - math.log(-math.log(rng.random() or 1e-12)), vid, c / top) for vid, c in popular]
        keys.sort(reverse=True)
        n_explore = max(1, round(k * explore)) if sample else 0
        picked = [(vid, score) for _, vid, score in keys[: k - n_explore]]
        explore_ids = rng.sample(sample, min(len(sample), n_explore))
        out: list[tuple[uuid.UUID, float]] = []
        seen: set[uuid.UUID] = set()
        every = max(2, round(1 / explore)) if n_explore else 0
        ex = iter(explore_ids)
        for i, item in enumerate(picked):
            if every and i % every == every - 1:
                vid = next(ex, None)
                if vid is not None and vid not in seen:
                    out.append((vid, 0.0))
                    seen.add(vid)
            if item[0] not in seen:
                out.append(item)
                seen.add(item[0])
        for vid in ex:
            if vid not in seen:
                out.append((vid, 0.0))
                seen.add(vid)
        return out


_LIST_QUERY = """
WITH cand AS (
    SELECT c.video_id, c.ord, c.score
    FROM unnest(%(ids)s::uuid[], %(scores)s::float8[]) WITH ORDINALITY AS c(video_id, score, ord)
), hit AS MATERIALIZED (
    SELECT c.video_id, c.ord, c.score FROM cand c JOIN videos v ON v.id = c.video_id
    WHERE {where} ORDER BY c.ord LIMIT %(limit)s
), backfill AS MATERIALIZED (
    SELECT v.id AS video_id, 1e12::float8 AS ord, 0.0::float8 AS score FROM videos v
    WHERE (SELECT count(*) FROM hit) < %(limit)s AND {where} AND v.id NOT IN (SELECT video_id FROM hit)
    ORDER BY random() LIMIT %(limit)s
), picked AS (
    SELECT * FROM hit UNION ALL SELECT * FROM backfill ORDER BY ord LIMIT %(limit)s
)
SELECT {meta}, p.score AS similarity_score FROM picked p JOIN videos v ON v.id = p.video_id ORDER BY p.ord
"""

_LINEAR_CANDIDATES = """
WITH liked AS (
    SELECT video_id FROM user_video_decisions WHERE user_id = %(user)s AND decision_type = 'like'
    ORDER BY created_at DESC LIMIT 50
), profile AS (
    SELECT vt.tag_id, count(*)::float8 AS w FROM liked JOIN video_tags vt USING (video_id) GROUP BY vt.tag_id
), scored AS (
    SELECT vt.video_id, sum(p.w) AS s FROM profile p JOIN video_tags vt USING (tag_id) GROUP BY vt.video_id
)
SELECT s.video_id, s.s / sqrt(greatest((SELECT count(*) FROM video_tags x WHERE x.video_id = s.video_id), 1))
       / greatest((SELECT sum(w) FROM profile), 1) AS score
FROM scored s ORDER BY score DESC, s.video_id LIMIT %(k)s
"""


def fetch_rows(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


class Recommender:
    """One request's worth of logic; stateless apart from the popularity cache."""

    def __init__(self, popularity: PopularityCache, seed: int | None = None, tags: TagIndex | None = None) -> None:
        self.popularity = popularity
        self.tags = tags or TagIndex()
        self.rng = random.Random(seed)

    def two_tower(
        self, conn: psycopg.Connection[Any], version: str, towers: OnnxTowers, items: ItemIndex, history: History,
        user: uuid.UUID, limit: int, exclude_liked: bool, filters: Filters,
    ) -> list[dict[str, Any]]:  # fmt: skip
        vector = user_embedding(towers, items, conn, history)
        return self.nearest(conn, version, towers.dim, vector, user, limit, exclude_liked, filters)

    def nearest(
        self, conn: psycopg.Connection[Any], version: str, dim: int, vector: npt.NDArray[np.float32],
        user: uuid.UUID | None, limit: int, exclude_liked: bool, filters: Filters,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The ANN query for a user vector (the part a read replica runs)."""
        where = _conditions(filters, user, exclude_liked)
        params = {**_params(filters, user, limit), "q": vector}
        return fetch_rows(conn, ann_query(version, dim, where, sql.SQL("%(q)s"), limit), params)

    def listed(
        self, conn: psycopg.Connection[Any], candidates: list[tuple[uuid.UUID, float]], user: uuid.UUID | None,
        limit: int, exclude_liked: bool, filters: Filters,
    ) -> list[dict[str, Any]]:  # fmt: skip
        where = _conditions(filters, user, exclude_liked)
        params = {**_params(filters, user, limit), "ids": [c[0] for c in candidates],
                  "scores": [c[1] for c in candidates]}  # fmt: skip
        return fetch_rows(conn, sql.SQL(_LIST_QUERY).format(where=where, meta=_META), params)

    def popular(
        self, conn: psycopg.Connection[Any], user: uuid.UUID | None, limit: int, exclude_liked: bool, filters: Filters
    ) -> list[dict[str, Any]]:
        if not self.popularity.loaded_at:  # first use; afterwards the server's watcher refreshes it
            self.popularity.refresh(conn)
        candidates = self.popularity.candidates(3 * limit, self.rng)
        return self.listed(conn, candidates, user, limit, exclude_liked, filters)

    def linear(
        self, conn: psycopg.Connection[Any], user: uuid.UUID, limit: int, exclude_liked: bool, filters: Filters
    ) -> list[dict[str, Any]]:
        """The simple linear model: the user's liked-tag profile · each video's normalised tag vector."""
        candidates = self.linear_candidates(conn, user, limit)
        return self.listed(conn, candidates, user, limit, exclude_liked, filters)

    def linear_candidates(
        self, conn: psycopg.Connection[Any], user: uuid.UUID, limit: int
    ) -> list[tuple[uuid.UUID, float]]:
        """The linear model's candidates from the user's likes (read on ``conn``: the primary's, with replicas)."""
        k = 20 * limit + 200
        if self.tags.ready:  # scored in memory (the server builds it while no model is loaded)
            return self.tags.candidates(conn, user, k)
        return [(r[0], float(r[1])) for r in conn.execute(_LINEAR_CANDIDATES, {"user": user, "k": k})]

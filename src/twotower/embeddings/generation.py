"""Building a version's embedding generation with its ONNX towers, next to the one that is serving.

Rows are written with binary COPY in one transaction (a crash leaves none behind), then the generation gets a
partial HNSW index of its own, built concurrently so the serving generation is never blocked.

Re-embedding rows of a generation (``replace_embeddings``, ``embed_videos``) writes only the rows whose vector
changed: every written row of ``video_embeddings`` costs an HNSW insert (about 0.4 ms of one core, most of the
write) plus a dead tuple and a dead index entry that VACUUM must later repair out of the graph (as costly again),
while the same towers on the same features give the same vector, so a nightly re-embed mostly changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from twotower.db import Database
from twotower.errors import ArtifactError
from twotower.features.catalog import load_catalog
from twotower.features.decisions import load_decision_log
from twotower.features.examples import Histories
from twotower.inference.towers import OnnxTowers
from twotower.registry.generations import generation_table, hnsw_build_memory
from twotower.registry.versions import hnsw_index_name

__all__ = [
    "TOLERANCE",
    "GenerationStats",
    "build_generation",
    "create_generation_index",
    "embed_videos",
    "embed_videos_counted",
    "replace_embeddings",
    "update_embeddings",
    "video_vectors",
    "write_embeddings",
]

CHUNK = 10_000
TOLERANCE = 1e-5  # L2 distance under which a stored vector counts as the same (ONNX kernels differ by CPU)

# per embeddings table: its time-stamp column, and when a row with an unchanged vector is rewritten all the same
_STAMP = {"video_embeddings": "created_at", "user_embeddings": "updated_at"}
_REFRESH = {
    # the catalog sync re-embeds a video whose row is older than the video (``created_at < updated_at``): an
    # unchanged vector of such a video is written again, so that its row says it is current
    "video_embeddings": "EXISTS (SELECT 1 FROM videos v WHERE v.id = e.video_id AND v.updated_at > e.created_at)",
}


@dataclass
class GenerationStats:
    videos: int
    users: int
    seconds: float


def write_embeddings(
    conn: psycopg.Connection[Any],
    table: str,
    key: str,
    version: str,
    ids: Sequence[uuid.UUID],
    vectors: npt.NDArray[np.float32],
    on_chunk: Callable[[str, int], None] | None = None,
    *,
    as_of: datetime | None = None,
) -> None:
    """Binary COPY of ``(version, id, vector)`` rows, in chunks (``on_chunk(table, rows_so_far)`` after each).

    ``as_of``: when the data the vectors come from was read (the rows' time stamp; default: now). A video changed
    after that moment then shows as stale, and the next sync or batch update re-embeds it."""
    stamp = _STAMP.get(table, "created_at")
    columns = [sql.Identifier(c) for c in ("model_version", key, "embedding", *([stamp] if as_of else []))]
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(columns)
    )
    for start in range(0, len(ids), CHUNK):
        with conn.cursor().copy(copy_sql) as copy:
            copy.set_types(["text", "uuid", "vector", *(["timestamptz"] if as_of else [])])
            for rid, vec in zip(ids[start : start + CHUNK], vectors[start : start + CHUNK], strict=True):
                copy.write_row((version, rid, vec, as_of) if as_of else (version, rid, vec))
        if on_chunk is not None:
            on_chunk(table, min(start + CHUNK, len(ids)))


def replace_embeddings(
    conn: psycopg.Connection[Any], table: str, key: str, version: str, ids: Sequence[uuid.UUID],
    vectors: npt.NDArray[np.float32],
) -> None:  # fmt: skip
    """Make these rows of the generation hold these vectors: exactly one row per id, whatever was there.

    Rows whose stored vector is already within ``TOLERANCE`` are left alone (see the module docstring), others are
    deleted and written again, missing ones written. Runs in the caller's transaction."""
    update_embeddings(conn, table, key, version, ids, vectors)


def update_embeddings(
    conn: psycopg.Connection[Any], table: str, key: str, version: str, ids: Sequence[uuid.UUID],
    vectors: npt.NDArray[np.float32],
) -> int:  # fmt: skip
    """``replace_embeddings``, returning how many rows it wrote (changed or missing ones)."""
    if not len(ids):
        return 0
    if conn.autocommit:  # the staged rows live until the end of the transaction: one for the whole update
        with conn.transaction():
            return _update_embeddings(conn, table, key, version, ids, vectors)
    return _update_embeddings(conn, table, key, version, ids, vectors)


def _update_embeddings(
    conn: psycopg.Connection[Any], table: str, key: str, version: str, ids: Sequence[uuid.UUID],
    vectors: npt.NDArray[np.float32],
) -> int:  # fmt: skip
    # the new vectors go to a temporary table (binary COPY), compared with the stored ones in SQL
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS twotower_staged (id uuid NOT NULL, embedding vector NOT NULL) "
                 "ON COMMIT DELETE ROWS")  # fmt: skip
    conn.execute("DELETE FROM twotower_staged")  # the rows of an earlier call in this transaction
    with conn.cursor().copy("COPY twotower_staged (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["uuid", "vector"])
        for rid, vec in zip(ids, vectors, strict=True):
            copy.write_row((rid, vec))
    target = generation_table(conn, table, version)  # the table itself, or the child a bulk re-embed attached
    names = {"table": sql.Identifier(target), "key": sql.Identifier(key),
             "stamp": sql.Identifier(_STAMP.get(table, "created_at")),
             "refresh": sql.SQL(_REFRESH.get(table, "false"))}  # fmt: skip
    # CASE: vectors of different dimensions have no distance (and are different)
    conn.execute(sql.SQL("""
        DELETE FROM {table} e USING twotower_staged s
        WHERE e.model_version = %(version)s AND e.{key} = s.id
          AND (CASE WHEN vector_dims(e.embedding) = vector_dims(s.embedding)
                    THEN (e.embedding <-> s.embedding) > %(tolerance)s ELSE true END
               OR {refresh})""").format(**names), {"version": version, "tolerance": TOLERANCE})  # fmt: skip
    written = conn.execute(sql.SQL("""
        INSERT INTO {table} AS e (model_version, {key}, embedding)
        SELECT %(version)s, s.id, s.embedding FROM twotower_staged s
        WHERE NOT EXISTS (SELECT 1 FROM {table} o WHERE o.model_version = %(version)s AND o.{key} = s.id)
        ON CONFLICT (model_version, {key}) DO UPDATE SET embedding = EXCLUDED.embedding, {stamp} = now()
        """).format(**names), {"version": version}).rowcount  # fmt: skip
    return max(written, 0)


def embed_videos(conn: psycopg.Connection[Any], towers: OnnxTowers, ids: Sequence[uuid.UUID]) -> int:
    """(Re-)embed these videos with the item tower into generation ``towers.version``; returns how many exist.

    Afterwards each of them has exactly one row for the version, holding the towers' vector (within
    ``TOLERANCE``); only changed or missing rows, and rows older than their video, are written. Ids of videos
    deleted meanwhile are skipped. Runs in the caller's transaction.
    """
    return embed_videos_counted(conn, towers, ids)[0]


def embed_videos_counted(
    conn: psycopg.Connection[Any], towers: OnnxTowers, ids: Sequence[uuid.UUID]
) -> tuple[int, int]:
    """``embed_videos``, returning ``(videos that exist, rows written)``."""
    found, vectors = video_vectors(conn, towers, ids)
    return len(found), update_embeddings(conn, "video_embeddings", "video_id", towers.version, found, vectors)


def video_vectors(
    conn: psycopg.Connection[Any], towers: OnnxTowers, ids: Sequence[uuid.UUID]
) -> tuple[list[uuid.UUID], npt.NDArray[np.float32]]:  # fmt: skip
    """The item tower's vectors of these videos, with their ids (ids of videos that are gone are left out)."""
    catalog = load_catalog(conn, list(ids))
    if not len(catalog):
        return [], np.zeros((0, towers.dim), dtype=np.float32)
    return list(catalog.ids), towers.embed_items(towers.pipeline.transform(catalog))


def create_generation_index(conn: psycopg.Connection[Any], version: str, dim: int) -> None:
    """The generation's partial HNSW index (inner product: the towers' outputs are unit vectors), on the table
    that holds its rows (``registry.generations``).

    ``conn`` must be in autocommit mode (``CREATE INDEX CONCURRENTLY``). An invalid leftover from a crashed build
    is dropped first.
    """
    name = sql.Identifier(hnsw_index_name(version))
    table = sql.Identifier(generation_table(conn, "video_embeddings", version))
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))
    row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE model_version = %s").format(table), (version,)).fetchone()
    memory = hnsw_build_memory(int(row[0]) if row else 0, dim)  # the graph in memory: no build on disk
    conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
    try:
        conn.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY {} ON {} USING hnsw ((embedding::vector({})) vector_ip_ops) "
                "WITH (m = 16, ef_construction = 64) WHERE model_version = {}"
            ).format(name, table, sql.Literal(dim), sql.Literal(version))
        )
    finally:
        conn.execute("RESET maintenance_work_mem")
    conn.execute(sql.SQL("ANALYZE {}").format(table))


def build_generation(
    db: Database,
    towers: OnnxTowers,
    *,
    on_progress: Callable[[str], None] | None = None,
    on_chunk: Callable[[str, int], None] | None = None,
) -> GenerationStats:
    """Embed every video and every user with ``towers`` and store them as generation ``towers.version``.

    The version must be registered (status 'registered' or 'building'); it ends 'ready'. Users are embedded
    from all their decisions: what they look like now.
    """
    started = time.perf_counter()
    say = on_progress or (lambda _: None)
    version = towers.version
    with db.direct() as conn:
        row = conn.execute("SELECT now()").fetchone()  # the catalog as of this moment (the rows' time stamp)
        assert row is not None
        read_at: datetime = row[0]
        catalog = load_catalog(conn)
        log = load_decision_log(conn, catalog.ids)
    say(f"embedding {len(catalog):,} videos")
    features = towers.pipeline.transform(catalog)
    items = towers.embed_items(features)
    say(f"embedding {log.n_users:,} users")
    hist = Histories(log, np.ones(len(log), dtype=bool), len(catalog), towers.history)
    users = towers.embed_users(features.with_padding_row(), hist.batch(np.arange(log.n_users, dtype=np.int64)))
    with db.direct(autocommit=True) as conn:
        conn.execute("UPDATE model_versions SET status = 'building' WHERE version = %s", (version,))
        say("writing embeddings")
        with conn.transaction():
            write_embeddings(conn, "video_embeddings", "video_id", version, catalog.ids, items, on_chunk, as_of=read_at)
            write_embeddings(conn, "user_embeddings", "user_id", version, log.user_ids, users, on_chunk, as_of=read_at)
        say("building the HNSW index")
        create_generation_index(conn, version, towers.dim)
        done = conn.execute(
            "UPDATE model_versions SET status = 'ready', generation_built_at = now(), videos_embedded = %s, "
            "users_embedded = %s WHERE version = %s AND status = 'building' RETURNING version",
            (len(catalog), log.n_users, version),
        ).fetchone()
        if done is None:  # another deploy declared this build dead meanwhile and removed its rows
            raise ArtifactError(f"the build of {version} was cancelled while it ran; deploy again")
    return GenerationStats(len(catalog), log.n_users, time.perf_counter() - started)

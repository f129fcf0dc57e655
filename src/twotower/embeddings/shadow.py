"""A shadow generation: a version's rows re-embedded in bulk into a table serving does not see, then switched in.

Rewriting most of a generation in place costs an HNSW insert per row (about 0.4 ms of a core) plus a dead tuple
and a dead index entry that VACUUM must repair; loading the rows into an empty table and building the index after
is several times cheaper (pgvector's guidance). So a bulk re-embed:

1. creates ``<table>_g<digest>_<job>`` (``registry.generations``): the columns of the embeddings table,
   ``CHECK (model_version = v)``, its primary key. It is no child of the embeddings table yet: no query sees it
   (the live writers — sync, user-embedding route — keep writing to the serving table; their rows are carried
   over at the end, see ``_carry_over``);
2. loads it with binary COPY, chunk by chunk, each chunk in the transaction that marks it done (a worker killed
   mid-chunk leaves the chunk pending and none of its rows);
3. ``finish``: the foreign keys (added ``NOT VALID``, then the rows of videos deleted while the job ran are removed,
   then validated: a scan that blocks no request), ``VACUUM (ANALYZE)`` (autovacuum is off during the load), the
   secondary index, the generation's partial HNSW index built on the loaded table (a plain ``CREATE INDEX``: the
   table is invisible, so nothing waits on it, and the build may use parallel workers); then the switch, one short
   transaction: the version's current rows leave (the attached child is detached, or, the first time, the rows in
   the embeddings table itself are deleted and its partial HNSW index dropped), the loaded table is attached
   (``INHERIT``) and its index takes the generation's index name. Every lock it takes is taken with a
   ``lock_timeout`` of ``LOCK_TIMEOUT`` and the transaction retried: a request never waits on the switch for longer
   than that. Queries of the version see the old rows or the new ones, never both or neither (one commit). Then the
   old child is dropped (after the first switch: the embeddings table vacuumed).

A worker killed at any moment leaves the serving rows intact: before the switch's commit they are untouched; after
it they are the new ones. A re-run finds the state (``finish`` is idempotent): a loaded table not attached yet is
indexed (again) and switched; an attached one only needs the old child dropped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from twotower.db.priority import serving_clients
from twotower.errors import StoreError
from twotower.registry.generations import child_prefix, drop_children, generation_table, hnsw_build_memory
from twotower.registry.versions import hnsw_index_name

__all__ = ["LOCK_TIMEOUT", "create_shadow", "finish", "load_shadow", "shadow_name"]

log = logging.getLogger("twotower.jobs")
T = TypeVar("T")
Opener = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]  # opens a connection when it is due
LOCK_TIMEOUT = "50ms"  # the longest a request may wait on a lock of the switch (per attempt)
SWITCH_TRIES = 200
BUILD_WORKERS = 2  # parallel maintenance workers of the build
# a gentle job (one that yields the CPU to live traffic) builds with no parallel worker while at least this many
# other client sessions of the database ran a statement in the last second (``db.priority.serving_clients``)
TRAFFIC = 2
_REFERENCES = {  # the foreign keys of the embeddings tables: (column, table, its key)
    "video_embeddings": [("model_version", "model_versions", "version"), ("video_id", "videos", "id")],
    "user_embeddings": [("model_version", "model_versions", "version")],
}
_KEY = {"video_embeddings": "video_id", "user_embeddings": "user_id"}
_STAMP = {"video_embeddings": "created_at", "user_embeddings": "updated_at"}


def _carry_over(conn: psycopg.Connection[Any], table: str, version: str, name: str, since: Any) -> int:
    """Rows the live writers (the catalog sync, the user-embedding route) wrote to the serving table at or after
    ``since`` go into the loaded table, unless its own row is newer: a video synced while the job ran keeps its
    vector, and one created meanwhile (perhaps in a range already loaded) is not lost at the switch."""
    old = generation_table(conn, table, version)
    names = {"new": sql.Identifier(name), "old": sql.Identifier(old), "key": sql.Identifier(_KEY[table]),
             "stamp": sql.Identifier(_STAMP[table])}  # fmt: skip
    return conn.execute(sql.SQL("""
        INSERT INTO {new} AS n (model_version, {key}, embedding, {stamp})
        SELECT model_version, {key}, embedding, {stamp} FROM ONLY {old} WHERE model_version = %s AND {stamp} >= %s
        ON CONFLICT (model_version, {key}) DO UPDATE SET embedding = EXCLUDED.embedding, {stamp} = EXCLUDED.{stamp}
        WHERE EXCLUDED.{stamp} > n.{stamp}""").format(**names), (version, since)).rowcount  # fmt: skip


def shadow_name(table: str, version: str, job_id: int) -> str:
    return f"{child_prefix(table, version)}{job_id}"


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def _attached(conn: psycopg.Connection[Any], table: str, name: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s) "
                       "AND inhparent = to_regclass(%s))", (name, table)).fetchone()  # fmt: skip
    return bool(row and row[0])


def _has_constraint(conn: psycopg.Connection[Any], table: str, constraint: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) "
                       "AND conname = %s)", (table, constraint)).fetchone()  # fmt: skip
    return bool(row and row[0])


def _retry_locks(conn: psycopg.Connection[Any], action: Callable[[], T], failure: str) -> T:
    """``action`` in a transaction whose locks wait at most ``LOCK_TIMEOUT``, tried again (after a pause that lets
    the queued requests through) until it gets them; ``StoreError`` after ``SWITCH_TRIES`` tries."""
    for attempt in range(SWITCH_TRIES):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
                return action()
        except psycopg.errors.LockNotAvailable:
            time.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)))
    raise StoreError(f"{failure}: its locks were busy {SWITCH_TRIES} times; run batch-update again to finish the "
                     "job (the serving rows are unchanged)")  # fmt: skip


def create_shadow(conn: psycopg.Connection[Any], table: str, version: str, name: str) -> None:
    """The (empty) table a bulk re-embed of ``version`` loads, if it is not there yet."""
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {name} (LIKE {table} INCLUDING DEFAULTS, CHECK (model_version = {version}), "
        "PRIMARY KEY (model_version, {key})) WITH (autovacuum_enabled = false)"
    ).format(name=sql.Identifier(name), table=sql.Identifier(table), version=sql.Literal(version),
             key=sql.Identifier(_KEY[table])))  # fmt: skip
    # closed to every other role (the database's default privileges may have granted some, see db.rls): queries
    # through the embeddings table use its privileges and policies, the table itself is nobody's business
    conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(name)))
    grantees = conn.execute("SELECT DISTINCT grantee FROM information_schema.role_table_grants "
                            "WHERE table_name = %s AND grantee <> current_user", (name,)).fetchall()  # fmt: skip
    for (grantee,) in grantees:
        role = sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee)
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(name), role))


def load_shadow(
    conn: psycopg.Connection[Any], table: str, version: str, name: str, ids: Sequence[uuid.UUID],
    vectors: npt.NDArray[np.float32],
) -> int:  # fmt: skip
    """Binary COPY of these rows into the loaded table (time stamp: the caller's transaction's start, before it
    read the data). Runs in the caller's transaction."""
    copy_sql = sql.SQL("COPY {} (model_version, {}, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(name), sql.Identifier(_KEY[table]))  # fmt: skip
    with conn.cursor().copy(copy_sql) as copy:
        copy.set_types(["text", "uuid", "vector"])
        for rid, vec in zip(ids, vectors, strict=True):
            copy.write_row((version, rid, vec))
    return len(ids)


def _build_workers(conn: psycopg.Connection[Any], gentle: bool) -> int:
    """Parallel maintenance workers for the index build: all of them, unless the job is gentle and the database
    serves (each busy core costs requests the scheduler's ticks, even at the idle priority: ``db.priority``)."""
    if not gentle:
        return BUILD_WORKERS
    clients = serving_clients(conn)
    if clients >= TRAFFIC:
        log.info("%d client sessions are busy: the index is built by one process", clients)
        return 0
    return BUILD_WORKERS


def _prepare(
    conn: psycopg.Connection[Any], table: str, version: str, name: str, dim: int | None, gentle: bool = False
) -> None:  # fmt: skip
    """Foreign keys, indexes and statistics of the loaded table (autocommit ``conn``; idempotent). ``gentle``:
    see ``finish``."""
    ident = sql.Identifier(name)
    key = _KEY[table]
    keys = [f"{name}_fk{n}" for n in range(len(_REFERENCES[table]))]
    for fk, (column, ref, ref_key) in zip(keys, _REFERENCES[table], strict=True):
        if _has_constraint(conn, name, fk):  # a re-run: dropping it again would lock ``ref`` exclusively
            continue
        add = sql.SQL(
            "ALTER TABLE {t} ADD CONSTRAINT {fk} FOREIGN KEY ({c}) REFERENCES {r} ({k}) ON DELETE CASCADE NOT VALID"
        ).format(t=ident, fk=sql.Identifier(fk), c=sql.Identifier(column), r=sql.Identifier(ref),
                 k=sql.Identifier(ref_key))  # fmt: skip
        # it locks ``ref`` against writes (the catalog sync, deploy) while it waits: never for long
        _retry_locks(conn, functools.partial(conn.execute, add), f"could not add the foreign key {fk}")
    # from now on a deleted video takes its loaded row with it; the ones deleted while the job ran (their rows
    # were read before) go now. Then the keys are checked (a scan that blocks no reader or writer of the tables)
    if table == "video_embeddings":
        conn.execute(sql.SQL("DELETE FROM {} s WHERE NOT EXISTS (SELECT 1 FROM videos v WHERE v.id = s.video_id)")
                     .format(ident))  # fmt: skip
    for fk in keys:
        conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(ident, sql.Identifier(fk)))
    # the load's vacuum (visibility map, statistics) now, before the index build, rather than an autovacuum (of
    # the inserts) competing with the build and live traffic; autovacuum was off during the load for that reason
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))
    conn.execute(sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(ident))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(f"{name}_{key[:4]}_idx"), ident, sql.Identifier(key)))  # fmt: skip
    if dim is not None:
        index = sql.Identifier(f"{name}_hnsw")
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(index))  # a build killed midway left nothing
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
        memory = hnsw_build_memory(int(row[0]) if row else 0, dim)  # the graph in memory (at least 64 MB)
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (memory,))
        workers = _build_workers(conn, gentle)
        conn.execute(sql.SQL("SET max_parallel_maintenance_workers = {}").format(sql.Literal(workers)))
        try:
            started = time.perf_counter()
            conn.execute(
                sql.SQL(
                    "CREATE INDEX {} ON {} USING hnsw ((embedding::vector({})) vector_ip_ops) "
                    "WITH (m = 16, ef_construction = 64) WHERE model_version = {}"
                ).format(index, ident, sql.Literal(dim), sql.Literal(version))
            )  # the same as create_generation_index
            log.info("%s: HNSW index built in %.1fs (%d parallel workers)", name, time.perf_counter() - started,
                     workers)  # fmt: skip
        finally:
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")


def _switch(conn: psycopg.Connection[Any], table: str, version: str, name: str, indexed: bool, since: Any) -> str:
    """Make ``name`` the generation's table in one transaction; returns the table that held the rows before.
    Rows written to the serving table at or after ``since`` are carried over first, under a lock that holds
    writers (not readers) until the commit, so no write falls between the carry-over and the switch."""
    ident, parent = sql.Identifier(name), sql.Identifier(table)
    generation_index = sql.Identifier(hnsw_index_name(version))

    def switch() -> str:
        old = generation_table(conn, table, version)
        conn.execute(sql.SQL("LOCK TABLE ONLY {} IN SHARE MODE").format(sql.Identifier(old)))
        _carry_over(conn, table, version, name, since)
        if old == table:  # the first time: the rows are in the embeddings table itself
            conn.execute(sql.SQL("DELETE FROM ONLY {} WHERE model_version = %s").format(parent), (version,))
            if indexed:
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(generation_index))
        else:
            conn.execute(sql.SQL("ALTER TABLE {} NO INHERIT {}").format(sql.Identifier(old), parent))
            if indexed:
                conn.execute(sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                    generation_index, sql.Identifier(f"{old}_hnsw")))  # fmt: skip
        conn.execute(sql.SQL("ALTER TABLE {} INHERIT {}").format(ident, parent))
        if indexed:
            conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(f"{name}_hnsw"), generation_index))  # fmt: skip
        return old

    return _retry_locks(conn, switch, f"could not switch {name} in")


def finish(
    conn: psycopg.Connection[Any], table: str, version: str, name: str, dim: int | None, since: Any,
    urgent: Opener | None = None, *, gentle: bool = False,
) -> bool:  # fmt: skip
    """Index, switch in and tidy up after the loaded table ``name`` (autocommit ``conn``): True when it serves.

    ``dim``: the generation's HNSW index is built (video embeddings). ``since``: when the job started (rows the
    live writers wrote from then on are carried over). ``urgent`` (default: ``conn``) opens the autocommit
    connection of the switch and of the old table's drop, the transactions that hold locks requests wait on,
    when they are due (not during the index build). ``gentle``: the
    job yields the CPU to live traffic, so while the database serves, the index is built by one process (slower,
    but a core stays free for requests). Idempotent, see the module docstring."""
    if not _exists(conn, name):
        return False  # dropped meanwhile (the generation was)
    first = False
    attached = _attached(conn, table, name)
    marked = None
    if not attached:
        marked = conn.execute("SELECT clock_timestamp()").fetchone()
        _carry_over(conn, table, version, name, since)  # the bulk of it, before the index build and without locks
        _prepare(conn, table, version, name, dim, gentle)
    with (urgent or (lambda: contextlib.nullcontext(conn)))() as fast:
        if not attached:
            started = time.perf_counter()
            old = _switch(fast, table, version, name, dim is not None, marked[0] if marked else since)
            first = old == table
            log.info("%s: switched in for %s in %.3fs (was %s)", name, version, time.perf_counter() - started, old)

        # a request planned before the switch may still read the old table: its drop waits for it, briefly
        def drop() -> None:
            for dropped in drop_children(fast, version, keep=name, tables=(table,)):
                log.info("%s: the old rows of %s dropped", dropped, version)

        try:
            _retry_locks(fast, drop, f"could not drop the old rows of {version}")
        except StoreError as exc:  # they serve no query any more: the next job (or a re-run) drops them
            log.warning("%s", exc)
    if first:  # the version's old rows were deleted from the embeddings table: vacuum them now, not on traffic
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    return True

"""How a ``batch-update`` job writes (in place, or a shadow generation) and how it is closed.

In place, every changed row of ``video_embeddings`` is an HNSW insert (~0.4 ms of a core) plus a dead tuple and
a dead index entry for VACUUM; a shadow generation (``embeddings.shadow``) costs a binary COPY of every row, an
index build over all of them and a switch, whatever changed. ``shadow_targets`` estimates, when a job is created,
the share of a generation that would change (a random sample re-embedded and compared) and picks the shadow
generation from ``SHADOW_SHARE`` on. Measured with bench/batch.py (100k videos, 2 workers, one run): in place,
12 s when nothing changes and 110 s when everything does (~1 ms per changed row, its share of the REINDEX and
VACUUM included); a shadow generation 25 s whatever changes: they break even at about 13% changed. Users'
embeddings have no HNSW index, but a rewrite of most of them is a table's worth of dead tuples: the same rule.

The closing worker (``finish_job``) switches the shadow generations in, or pays the vacuum debt of what the job
rewrote in place, before it marks the job done.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import Any, TypeVar

import numpy as np
import psycopg
from psycopg import sql

from twotower.db import locks
from twotower.embeddings.embedder import Embedder
from twotower.embeddings.generation import TOLERANCE
from twotower.embeddings.shadow import Opener, finish, shadow_name
from twotower.registry.generations import generation_table
from twotower.registry.versions import hnsw_index_name

__all__ = ["KIND", "SHADOW_SHARE", "TABLES", "finish_job", "planned_paths", "shadow_targets"]

T = TypeVar("T")  # a target's name

log = logging.getLogger("twotower.jobs")
KIND = "batch_update"
TABLES = {"videos": "video_embeddings", "users": "user_embeddings"}
_KEYS = {"videos": "video_id", "users": "user_id"}
SHADOW_SHARE = 0.15  # estimated changed share of a generation from which a job builds a shadow generation
SAMPLE = 256  # rows re-embedded to estimate that share
REINDEX_SHARE = 0.25  # rewritten share of a generation above which an in-place job rebuilds its HNSW index
REINDEX_MEMORY = "256MB"  # maintenance_work_mem for that rebuild (the graph should fit: see pgvector's docs)


def _changed_share(conn: psycopg.Connection[Any], embedder: Embedder, target: str, ids: list[Any]) -> float:
    """The share of a sample of ``ids`` whose stored vector is missing or differs from the towers' (> TOLERANCE)."""
    if not ids:
        return 0.0
    if target == "videos":
        found, vectors = embedder.video_vectors(conn, random.sample(ids, min(SAMPLE, len(ids))))
    else:  # a range of consecutive ids: user ids are random, and the user tower embeds ranges
        first = random.randrange(max(1, len(ids) - SAMPLE + 1))
        found, vectors = embedder.user_range(conn, str(ids[first]), str(ids[min(first + SAMPLE, len(ids)) - 1]))
    if not found:
        return 0.0
    stored = dict(conn.execute(
        sql.SQL("SELECT {key}, embedding FROM {table} WHERE model_version = %s AND {key} = ANY(%s)").format(
            key=sql.Identifier(_KEYS[target]), table=sql.Identifier(TABLES[target])),
        (embedder.version, list(found))).fetchall())  # fmt: skip
    changed = 0
    for rid, vec in zip(found, vectors, strict=True):
        old = stored.get(rid)
        old = None if old is None else np.asarray(old.to_numpy() if hasattr(old, "to_numpy") else old)
        changed += old is None or old.shape != vec.shape or float(np.linalg.norm(old - vec)) > TOLERANCE
    return changed / len(found)


def planned_paths(
    conn: psycopg.Connection[Any], embedder: Embedder | None, targets: dict[T, list[Any]], forced: bool | None
) -> dict[T, tuple[str, str]]:  # fmt: skip
    """How a new job writes each target, ``("shadow" | "in place", why)``: all of them in a shadow generation
    (``forced`` True), none (False), or those whose estimated changed share is at least ``SHADOW_SHARE`` (a
    sample re-embedded by ``embedder``; without one, nothing is estimated: ``{}``)."""
    if forced is not None:
        return {t: ("shadow" if forced else "in place", "--shadow" if forced else "--in-place") for t in targets}
    if embedder is None:
        return {}
    out: dict[T, tuple[str, str]] = {}
    for target, ids in sorted(targets.items()):
        share = _changed_share(conn, embedder, str(target), ids)
        log.info("%s of %s: about %.0f%% would change", target, embedder.version, 100 * share)
        how = "shadow" if share >= SHADOW_SHARE else "in place"
        out[target] = (how, f"about {share:.0%} would change; a shadow from {SHADOW_SHARE:.0%}")
    return out


def shadow_targets(
    conn: psycopg.Connection[Any], embedder: Embedder, targets: dict[Any, list[Any]], forced: bool | None
) -> list[str]:  # fmt: skip
    """The targets a new job rebuilds in a shadow generation (``planned_paths``)."""
    return sorted(t for t, (how, _) in planned_paths(conn, embedder, targets, forced).items() if how == "shadow")


def finish_job(
    conn: psycopg.Connection[Any], job_id: int, version: str, urgent: Opener | None = None, *, gentle: bool = False,
) -> str:  # fmt: skip
    """Close the job when no chunk is left pending or running (another worker may still be on one): the shadow
    generations switched in, or the table maintenance after in-place writes, then the status. One closing worker
    at a time. ``conn`` is in autocommit mode; ``urgent`` (default: ``conn``) opens, when the switch is due, the
    autocommit connection of its short transactions, whose locks requests wait on: one at the server's priority
    when the job's sessions run lower (``db.priority``), so that a busy machine cannot stretch them.
    ``gentle``: the job yields to live traffic (see ``embeddings.shadow.finish``)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed') "
            "FROM job_chunks WHERE job_id = %s",
            (job_id,),
        ).fetchone()
        assert row is not None
        pending, failed = int(row[0]), int(row[1])
    if pending:  # chunks still in flight with other workers: the last one to finish closes the job
        return "running"
    status = "failed" if failed else "succeeded"
    lock = f"{KIND}:finish:{job_id}"
    if not locks.try_lock(conn, lock):
        return "running"  # another worker is closing it
    try:
        row = conn.execute("SELECT status, started_at, params FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None or row[0] != "running":
            return str(row[0]) if row else status
        params = row[2] or {}
        shadow = params.get("shadow", [])
        for target in ("videos", "users"):
            if not params.get(target, True):
                continue
            table = TABLES[target]
            if target in shadow:
                if failed:  # a generation with holes must not replace the serving one
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.Identifier(shadow_name(table, version, job_id))))  # fmt: skip
                    continue
                dim = conn.execute("SELECT embedding_dim FROM model_versions WHERE version = %s", (version,))
                finish(conn, table, version, shadow_name(table, version, job_id),
                       int(dim.fetchone()[0]) if target == "videos" else None, row[1],  # type: ignore[index]
                       urgent, gentle=gentle)  # fmt: skip
            else:
                stamp = "created_at" if target == "videos" else "updated_at"
                _tidy(conn, table, stamp, version, row[1], hnsw_index_name(version) if target == "videos" else None)
        conn.execute(
            "UPDATE jobs SET status = %s, finished_at = now(), error = %s WHERE id = %s AND status = 'running'",
            (status, f"{failed} chunk(s) failed" if failed else None, job_id),
        )
    finally:
        locks.unlock(conn, lock)
    return status


def _tidy(
    conn: psycopg.Connection[Any], table: str, stamp: str, version: str, since: Any, index: str | None
) -> None:  # fmt: skip
    """Vacuum what the job rewrote in ``table`` (rows of the version stamped since the job started), after
    rebuilding the generation's HNSW ``index`` if that is a large share of it. ``conn`` is in autocommit mode."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FILTER (WHERE {} >= %s), count(*) FROM {} WHERE model_version = %s").format(
            sql.Identifier(stamp), sql.Identifier(table)), (since, version)).fetchone()  # fmt: skip
    written, total = (int(row[0]), int(row[1])) if row else (0, 0)
    if not written:
        return
    target = generation_table(conn, table, version)  # the table itself, or a shadow generation's
    started = time.perf_counter()
    try:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (index,)).fetchone() if index else None
        if exists and exists[0] and written >= REINDEX_SHARE * total:
            conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(REINDEX_MEMORY)))
            try:
                conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(str(index))))
            finally:
                conn.execute("RESET maintenance_work_mem")
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(target)))
    except psycopg.Error as exc:  # the embeddings are written: autovacuum will do it, at some cost to traffic
        log.warning("could not vacuum %s after the batch job: %s", target, exc)
        if index:  # what a failed REINDEX CONCURRENTLY leaves behind (invalid, still maintained on writes)
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(f"{index}_ccnew")))
        return
    log.info("%s: %d of %d rows rewritten; vacuumed in %.1fs", target, written, total, time.perf_counter() - started)

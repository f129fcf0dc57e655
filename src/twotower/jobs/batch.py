"""``twotower batch-update``: (re)embed every video and user for a model version, in chunks.

A job is a row in ``jobs`` and its chunks are rows in ``job_chunks`` (ranges of video or user ids). A worker
claims a chunk with ``SELECT ... FOR UPDATE SKIP LOCKED`` and keeps that row lock while it computes and writes
the chunk's embeddings; the embeddings and the chunk's ``done`` mark commit together. So a worker killed at any
point leaves its chunk pending (its transaction is rolled back, the lock released), a restarted job resumes
where it was with no gaps and no duplicates, and any number of workers, on any machines, share a job.

A chunk writes only the rows whose vector changed (``registry.generation.update_embeddings``): a re-embed with the
same towers and mostly the same features rewrites almost nothing. The worker that closes the job pays the vacuum
debt of what was rewritten before it marks the job done, so that no autovacuum of the HNSW index (after changed
vectors, as costly as the inserts were, and a drag on live queries while it runs) starts after the job, on live
traffic: ``VACUUM (ANALYZE)``, after a ``REINDEX CONCURRENTLY`` of the generation's HNSW index when a large share of
it was rewritten (a parallel rebuild from the live rows is cheaper than VACUUM repairing the graph around that many
dead entries). A large rewrite can still trigger an autovacuum while the job runs. A closing worker killed
meanwhile leaves the job running with no chunk pending: the next run closes it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from twotower.db import Database, locks
from twotower.embeddings.generation import embed_videos_counted, update_embeddings
from twotower.errors import InputError, NotFound, TwoTowerError
from twotower.features.decisions import load_decision_log
from twotower.features.examples import Histories
from twotower.inference.items import ItemIndex
from twotower.inference.towers import OnnxTowers
from twotower.registry.store import ArtifactStore, fetch
from twotower.registry.versions import active_version, get_version, hnsw_index_name

__all__ = ["BatchOptions", "BatchPlan", "BatchResult", "plan_batch", "run_batch"]

log = logging.getLogger("twotower.jobs")
KIND = "batch_update"
Target = Literal["videos", "users"]
REINDEX_SHARE = 0.25  # rewritten share of a generation above which the job rebuilds its HNSW index at the end
REINDEX_MEMORY = "256MB"  # maintenance_work_mem for that rebuild (the graph should fit: see pgvector's docs)


@dataclass
class BatchOptions:
    version: str | None = None  # default: the active version
    videos: bool = True
    users: bool = True
    chunk_size: int = 5000
    max_rate: float = 0.0  # rows/s across this worker (0: no throttle)
    retries: int = 3
    cache_dir: Path = Path(".twotower/models")

    def validate(self) -> None:
        if not (self.videos or self.users):
            raise InputError("nothing to do: --no-videos and --no-users together")
        if not 10 <= self.chunk_size <= 1_000_000:
            raise InputError(f"--chunk-size must be between 10 and 1,000,000, got {self.chunk_size:,}")
        if self.max_rate < 0:
            raise InputError("--max-rate must be >= 0")


@dataclass
class BatchPlan:
    version: str
    videos: int
    users: int
    chunks: dict[Target, int]
    job_id: int | None = None  # an unfinished job this run would resume
    done_chunks: int = 0


@dataclass
class BatchResult:
    job_id: int
    version: str
    chunks_done: int = 0  # by this worker
    rows: dict[str, int] = field(default_factory=lambda: {"videos": 0, "users": 0})
    written: dict[str, int] = field(default_factory=lambda: {"videos": 0, "users": 0})  # changed or missing rows
    failed_chunks: int = 0
    seconds: float = 0.0
    status: str = "running"


def _version(conn: psycopg.Connection[Any], version: str | None) -> str:
    if version is None:
        version = active_version(conn)
        if version is None:
            raise NotFound("no active model version: deploy one first, or give --model-version")
    status = get_version(conn, version).status
    if status not in ("active", "ready", "retired"):
        raise InputError(f"version {version} is {status}: only a version with a generation can be updated")
    return version


def _ranges(ids: list[Any], size: int) -> list[tuple[str, str]]:
    return [(str(ids[i]), str(ids[min(i + size, len(ids)) - 1])) for i in range(0, len(ids), size)]


def _targets(conn: psycopg.Connection[Any], options: BatchOptions) -> dict[Target, list[Any]]:
    out: dict[Target, list[Any]] = {}
    if options.videos:
        out["videos"] = [r[0] for r in conn.execute("SELECT id FROM videos ORDER BY id").fetchall()]
    if options.users:
        out["users"] = [r[0] for r in conn.execute(
            "SELECT DISTINCT user_id FROM user_video_decisions ORDER BY user_id").fetchall()]  # fmt: skip
    return out


def _open_job(conn: psycopg.Connection[Any], options: BatchOptions) -> tuple[int, str] | None:
    row = conn.execute(
        "SELECT id FROM jobs WHERE kind = %s AND model_version = %s AND status IN ('pending', 'running') "
        "AND params @> %s ORDER BY created_at DESC LIMIT 1",
        (KIND, options.version, Jsonb({"videos": options.videos, "users": options.users})),
    ).fetchone()
    return None if row is None else (int(row[0]), str(options.version))


def plan_batch(db: Database, options: BatchOptions) -> BatchPlan:
    """What a run would do (``--dry-run``): nothing is written."""
    options.validate()
    with db.direct() as conn:
        version = _version(conn, options.version)
        targets = _targets(conn, options)
        options.version = version
        existing = _open_job(conn, options)
        done = 0
        if existing is not None:
            row = conn.execute("SELECT count(*) FROM job_chunks WHERE job_id = %s AND status = 'done'",
                               (existing[0],)).fetchone()  # fmt: skip
            done = int(row[0]) if row else 0
    chunks = {t: (len(ids) + options.chunk_size - 1) // options.chunk_size for t, ids in targets.items()}
    return BatchPlan(version, len(targets.get("videos", [])), len(targets.get("users", [])), chunks,
                     existing[0] if existing else None, done)  # fmt: skip


def _create_or_join(db: Database, options: BatchOptions) -> int:
    """The unfinished job for this version and these targets, or a new one (one transaction, under a lock)."""
    with db.direct() as conn, conn.transaction():
        locks.xact_lock(conn, f"{KIND}:{options.version}")
        existing = _open_job(conn, options)
        if existing is not None:
            return existing[0]
        targets = _targets(conn, options)
        params = {"videos": options.videos, "users": options.users, "chunk_size": options.chunk_size}
        total = sum((len(ids) + options.chunk_size - 1) // options.chunk_size for ids in targets.values())
        row = conn.execute(
            "INSERT INTO jobs (kind, model_version, status, params, total_chunks, started_at) "
            "VALUES (%s, %s, 'running', %s, %s, now()) RETURNING id",
            (KIND, options.version, Jsonb(params), total),
        ).fetchone()
        assert row is not None
        job_id = int(row[0])
        chunk_no = 0
        with conn.cursor().copy(
            "COPY job_chunks (job_id, chunk_no, target, range_start, range_end) FROM STDIN"
        ) as copy:
            for target, ids in targets.items():
                for start, end in _ranges(ids, options.chunk_size):
                    copy.write_row((job_id, chunk_no, target, start, end))
                    chunk_no += 1
        return job_id


class _Embedder:
    """The version's towers, loaded once per worker, and its feature index, loaded on the first users chunk (the
    whole catalog through the feature pipeline: seconds, that a videos-only job does not need)."""

    def __init__(self, db: Database, store: ArtifactStore, version: str, cache_dir: Path) -> None:
        self.db = db
        self.version = version
        self.towers = OnnxTowers(fetch(store, version, cache_dir))

    @functools.cached_property
    def items(self) -> ItemIndex:
        with self.db.direct() as conn:  # the version's item table, brought up to date
            return ItemIndex.open(self.towers.directory, conn, self.towers.pipeline)

    @functools.cached_property
    def catalog_ids(self) -> list[Any]:
        return sorted(self.items.row, key=self.items.row.__getitem__)  # the index's row order

    def videos(self, conn: psycopg.Connection[Any], start: str, end: str) -> tuple[int, int]:
        """``(rows, rows written)`` of this range."""
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM videos WHERE id BETWEEN %s AND %s ORDER BY id", (start, end)).fetchall()]  # fmt: skip
        return embed_videos_counted(conn, self.towers, ids)

    def users(self, conn: psycopg.Connection[Any], start: str, end: str) -> tuple[int, int]:
        log_ = load_decision_log(conn, self.catalog_ids, user_range=(start, end))
        if log_.n_users == 0:
            return 0, 0
        hist = Histories(log_, np.ones(len(log_), dtype=bool), len(self.catalog_ids), self.towers.history)
        batch = hist.batch(np.arange(log_.n_users, dtype=np.int64))
        vectors = self.towers.embed_users(self.items.table, batch)
        written = update_embeddings(conn, "user_embeddings", "user_id", self.version, log_.user_ids, vectors)
        return log_.n_users, written


def run_batch(
    db: Database,
    store: ArtifactStore,
    options: BatchOptions,
    *,
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> BatchResult:
    """Work on the job for ``options`` until no chunk is left. ``on_chunk(done, total, rows)`` after each."""
    options.validate()
    with db.direct() as conn:
        options.version = _version(conn, options.version)
    job_id = _create_or_join(db, options)
    result = BatchResult(job_id, options.version)
    embedder = _Embedder(db, store, options.version, options.cache_dir)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.perf_counter()
    with db.direct(autocommit=True) as conn:  # each chunk is its own transaction (see _one_chunk)
        row = conn.execute("SELECT total_chunks FROM jobs WHERE id = %s", (job_id,)).fetchone()
        total = int(row[0]) if row else 0
        while (claimed := _one_chunk(conn, embedder, job_id, worker, options, result)) is not None:
            n, took = claimed
            if on_chunk is not None and n >= 0:
                done = conn.execute("SELECT count(*) FROM job_chunks WHERE job_id = %s AND status = 'done'",
                                    (job_id,)).fetchone()  # fmt: skip
                on_chunk(int(done[0]) if done else 0, total, n)
            if options.max_rate > 0 and n > 0:  # the throttle: keep this worker under max_rate rows/s
                time.sleep(max(0.0, n / options.max_rate - took))
        result.status = _finish(conn, job_id, options.version)
    result.seconds = time.perf_counter() - started
    return result


def _one_chunk(
    conn: psycopg.Connection[Any], embedder: _Embedder, job_id: int, worker: str, options: BatchOptions,
    result: BatchResult,
) -> tuple[int, float] | None:  # fmt: skip
    """Claim, compute and commit one chunk: ``(rows, seconds)``, ``(-1, s)`` after a failed attempt, None when
    no chunk is left to claim."""
    with conn.transaction():
        row = conn.execute(
            "SELECT chunk_no, target, range_start, range_end, attempts FROM job_chunks "
            "WHERE job_id = %s AND status = 'pending' ORDER BY chunk_no LIMIT 1 FOR UPDATE SKIP LOCKED",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        chunk_no, target, start, end, attempts = row
        started = time.perf_counter()
        try:
            with conn.transaction():  # a savepoint: a failed chunk leaves no rows behind
                work = embedder.videos if target == "videos" else embedder.users
                n, written = work(conn, start, end)
                conn.execute(
                    "UPDATE job_chunks SET status = 'done', rows_done = %s, worker = %s, attempts = attempts + 1, "
                    "finished_at = now(), error = NULL WHERE job_id = %s AND chunk_no = %s",
                    (n, worker, job_id, chunk_no),
                )
        except (psycopg.Error, TwoTowerError, ValueError) as exc:
            failed = attempts + 1 >= options.retries
            conn.execute(
                "UPDATE job_chunks SET attempts = attempts + 1, error = %s, status = %s, worker = %s "
                "WHERE job_id = %s AND chunk_no = %s",
                (str(exc)[:500], "failed" if failed else "pending", worker, job_id, chunk_no),
            )
            log.warning("chunk %s of job %s failed (attempt %s): %s", chunk_no, job_id, attempts + 1, exc)
            result.failed_chunks += int(failed)
            time.sleep(min(2.0, 0.1 * 2**attempts))  # back off before the retry
            return -1, time.perf_counter() - started
    result.chunks_done += 1
    result.rows[target] += n
    result.written[target] += written
    return n, time.perf_counter() - started


def _finish(conn: psycopg.Connection[Any], job_id: int, version: str) -> str:
    """Close the job when no chunk is left pending or running (another worker may still be on one): the table
    maintenance first (see the module docstring), then the status. One closing worker at a time."""
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
        if params.get("videos", True):
            _tidy(conn, "video_embeddings", "created_at", version, row[1], hnsw_index_name(version))
        if params.get("users", True):
            _tidy(conn, "user_embeddings", "updated_at", version, row[1], None)
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
    started = time.perf_counter()
    try:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (index,)).fetchone() if index else None
        if exists and exists[0] and written >= REINDEX_SHARE * total:
            conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(REINDEX_MEMORY)))
            try:
                conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(str(index))))
            finally:
                conn.execute("RESET maintenance_work_mem")
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    except psycopg.Error as exc:  # the embeddings are written: autovacuum will do it, at some cost to traffic
        log.warning("could not vacuum %s after the batch job: %s", table, exc)
        if index:  # what a failed REINDEX CONCURRENTLY leaves behind (invalid, still maintained on writes)
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(f"{index}_ccnew")))
        return
    log.info("%s: %d of %d rows rewritten; vacuumed in %.1fs", table, written, total, time.perf_counter() - started)

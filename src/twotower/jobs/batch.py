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

When a large share of a generation would change (``SHADOW_SHARE``, estimated on a sample when the job is created),
the job builds a shadow generation instead (``embeddings.shadow``): each chunk copies all its rows into a table
serving does not see, and the closing worker indexes it and switches it in, in one short transaction. See
``jobs.closing``.
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

import psycopg
from psycopg.types.json import Jsonb
from threadpoolctl import threadpool_limits

from twotower.db import Database, locks
from twotower.embeddings.embedder import Embedder
from twotower.embeddings.shadow import create_shadow, load_shadow, shadow_name
from twotower.errors import InputError, NotFound, TwoTowerError
from twotower.jobs.closing import KIND, TABLES, finish_job, planned_paths, shadow_targets
from twotower.registry.store import ArtifactStore
from twotower.registry.versions import active_version, get_version

__all__ = ["BatchOptions", "BatchPlan", "BatchResult", "plan_batch", "run_batch"]

log = logging.getLogger("twotower.jobs")
Target = Literal["videos", "users"]


@dataclass
class BatchOptions:
    version: str | None = None  # default: the active version
    videos: bool = True
    users: bool = True
    chunk_size: int = 5000
    max_rate: float = 0.0  # rows/s across this worker (0: no throttle)
    retries: int = 3
    cache_dir: Path = Path(".twotower/models")
    shadow: bool | None = None  # rebuild the generation in a shadow table (None: when most vectors would change)
    # the job yields the CPU to live traffic (``batch-update --nice``): one ONNX Runtime thread per worker (scale
    # with workers), and a shadow generation's index built without parallel workers while the database serves
    gentle: bool = False

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
    # how each target would be written: "shadow" (a shadow generation switched in) or "in place", and why
    paths: dict[Target, tuple[str, str]] = field(default_factory=dict)


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
    if status not in ("active", "ready", "candidate", "retired"):
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


def plan_batch(db: Database, options: BatchOptions, store: ArtifactStore | None = None) -> BatchPlan:
    """What a run would do (``--dry-run``): nothing is written. With ``store``, the path of each target is
    decided as a new job would (a sample re-embedded with the version's towers, see ``jobs.closing``)."""
    options.validate()
    with db.direct() as conn:
        version = _version(conn, options.version)
        targets = _targets(conn, options)
        options.version = version
        existing = _open_job(conn, options)
        done, paths = 0, {}
        if existing is not None:
            row = conn.execute("SELECT count(*) FILTER (WHERE c.status = 'done'), j.params->'shadow' FROM jobs j "
                               "LEFT JOIN job_chunks c ON c.job_id = j.id WHERE j.id = %s GROUP BY j.id",
                               (existing[0],)).fetchone()  # fmt: skip
            done, shadow = (int(row[0]), row[1] or []) if row else (0, [])
            paths = {t: ("shadow" if t in shadow else "in place", f"as job {existing[0]} decided") for t in targets}
    if existing is None and store is not None:  # a dry run: a run decides when it creates the job
        embedder = None
        if options.shadow is None:
            embedder = _embedder(db, store, options)
            embedder.towers  # noqa: B018  # loaded (perhaps downloaded) before the estimate's transaction
        with db.direct() as conn:
            paths = planned_paths(conn, embedder, targets, options.shadow)
    chunks = {t: (len(ids) + options.chunk_size - 1) // options.chunk_size for t, ids in targets.items()}
    return BatchPlan(version, len(targets.get("videos", [])), len(targets.get("users", [])), chunks,
                     existing[0] if existing else None, done, paths)  # fmt: skip


def _embedder(db: Database, store: ArtifactStore, options: BatchOptions) -> Embedder:
    assert options.version is not None  # resolved by the caller
    # a gentle worker keeps to one core: one ONNX Runtime thread
    return Embedder(db, store, options.version, options.cache_dir, threads=1 if options.gentle else 0)


def _create_or_join(db: Database, options: BatchOptions, embedder: Embedder) -> int:
    """The unfinished job for this version and these targets, or a new one (one transaction, under a lock), with
    the targets it rebuilds in a shadow table (``jobs.closing.shadow_targets``) and those tables created."""
    with db.direct() as conn, conn.transaction():
        locks.xact_lock(conn, f"{KIND}:{options.version}")
        existing = _open_job(conn, options)
        if existing is not None:
            return existing[0]
        targets = _targets(conn, options)
        shadow = shadow_targets(conn, embedder, targets, options.shadow)
        params = {"videos": options.videos, "users": options.users, "chunk_size": options.chunk_size,
                  "shadow": shadow}  # fmt: skip
        total = sum((len(ids) + options.chunk_size - 1) // options.chunk_size for ids in targets.values())
        row = conn.execute(
            "INSERT INTO jobs (kind, model_version, status, params, total_chunks, started_at) "
            "VALUES (%s, %s, 'running', %s, %s, now()) RETURNING id",
            (KIND, options.version, Jsonb(params), total),
        ).fetchone()
        assert row is not None
        job_id = int(row[0])
        version = options.version
        assert version is not None  # resolved by run_batch
        for target in shadow:
            create_shadow(conn, TABLES[target], version, shadow_name(TABLES[target], version, job_id))
        chunk_no = 0
        with conn.cursor().copy(
            "COPY job_chunks (job_id, chunk_no, target, range_start, range_end) FROM STDIN"
        ) as copy:
            for target, ids in targets.items():
                for start, end in _ranges(ids, options.chunk_size):
                    copy.write_row((job_id, chunk_no, target, start, end))
                    chunk_no += 1
        return job_id


def run_batch(
    db: Database,
    store: ArtifactStore,
    options: BatchOptions,
    *,
    on_chunk: Callable[[int, int, int], None] | None = None,
) -> BatchResult:
    """Work on the job for ``options`` until no chunk is left. ``on_chunk(done, total, rows)`` after each."""
    options.validate()
    # a gentle worker keeps to one core: no BLAS helper threads (they spin)
    with threadpool_limits(1, "blas") if options.gentle else contextlib.nullcontext():
        return _run_batch(db, store, options, on_chunk)


def _run_batch(
    db: Database, store: ArtifactStore, options: BatchOptions, on_chunk: Callable[[int, int, int], None] | None
) -> BatchResult:  # fmt: skip
    with db.direct() as conn:
        options.version = _version(conn, options.version)
    embedder = _embedder(db, store, options)
    job_id = _create_or_join(db, options, embedder)
    result = BatchResult(job_id, options.version)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started = time.perf_counter()
    with db.direct(autocommit=True) as conn:  # each chunk is its own transaction (see _one_chunk)
        row = conn.execute("SELECT total_chunks, params FROM jobs WHERE id = %s", (job_id,)).fetchone()
        assert row is not None  # the job exists: created or joined above
        total = int(row[0])
        targets = (row[1] or {}).get("shadow", [])
        shadow = {t: shadow_name(TABLES[t], options.version, job_id) for t in targets}
        work = _Work(embedder, shadow)
        while (claimed := _one_chunk(conn, work, job_id, worker, options, result)) is not None:
            n, took = claimed
            if on_chunk is not None and n >= 0:
                done = conn.execute("SELECT count(*) FROM job_chunks WHERE job_id = %s AND status = 'done'",
                                    (job_id,)).fetchone()  # fmt: skip
                on_chunk(int(done[0]) if done else 0, total, n)
            if options.max_rate > 0 and n > 0:  # the throttle: keep this worker under max_rate rows/s
                time.sleep(max(0.0, n / options.max_rate - took))
        urgent = functools.partial(db.direct, autocommit=True, lowered=False)  # the switch: see finish_job
        result.status = finish_job(conn, job_id, options.version, urgent, gentle=options.gentle)
    result.seconds = time.perf_counter() - started
    return result


class _Work:
    """What a chunk does: re-embed its rows in place (only changed ones written), or copy them all into the
    job's shadow table of its target."""

    def __init__(self, embedder: Embedder, shadow: dict[str, str]) -> None:
        self.embedder, self.shadow = embedder, shadow

    def __call__(self, conn: psycopg.Connection[Any], target: str, start: str, end: str) -> tuple[int, int]:
        e = self.embedder
        if target not in self.shadow:
            return (e.embed_video_range if target == "videos" else e.embed_user_range)(conn, start, end)
        ids, vectors = (e.video_range if target == "videos" else e.user_range)(conn, start, end)
        return len(ids), load_shadow(conn, TABLES[target], e.version, self.shadow[target], ids, vectors)


def _one_chunk(
    conn: psycopg.Connection[Any], work: _Work, job_id: int, worker: str, options: BatchOptions,
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
                n, written = work(conn, target, start, end)
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

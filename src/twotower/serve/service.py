"""What the routes share: settings, the database pool (with the serving session), the model holder, auth, the
recommender."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from twotower.db import Database, locks
from twotower.db.replicas import ReadReplicas, Replica, replayed, wal_position
from twotower.errors import DatabaseUnavailable
from twotower.monitor.experiment import check_experiment
from twotower.registry.store import open_store
from twotower.serve.auth import Authenticator
from twotower.serve.http import Metrics
from twotower.serve.recommend import (
    PopularityCache,
    Recommender,
)
from twotower.serve.runtime import LoadedModel, ModelHolder
from twotower.serve.served import ServedLog
from twotower.settings import Settings

__all__ = ["Service", "serving_session"]

log = logging.getLogger("twotower.serve")
T = TypeVar("T")
Conn = psycopg.Connection[Any]


class Service:
    """What the routes share: the database, the model holder, auth, the recommender."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(settings)
        self.db: Database | None = None
        self.holder: ModelHolder | None = None
        self.popularity = PopularityCache()
        self.recommender = Recommender(self.popularity)
        self.metrics = Metrics.create()
        self.served: ServedLog | None = None
        self.replicas: ReadReplicas | None = None
        self._experiment_due = 0.0

    def start(self) -> None:
        settings = self.settings
        self.db = Database.open(settings, migrate=False, check=False)  # the database may be down: /readyz says so
        self.db.autocommit = True  # one statement per round trip, no COMMIT round trip
        self.db.session = serving_session(settings)
        if settings.read_urls:
            self.replicas = ReadReplicas(self.db, settings, self.db.session)
            self.replicas.look()  # before the first request: which replicas are usable
            self.replicas.start()
        cache = settings.model_cache_dir
        self.holder = ModelHolder(self.db, open_store(settings), cache, poll_seconds=settings.serve_model_poll_seconds,
                                  threads=settings.serve_onnx_threads, on_poll=self._poll)  # fmt: skip
        self.holder.start()
        self.served = ServedLog(self.db, sample=settings.monitor_served_sample,
                                retention_days=settings.monitor_served_retention_days,
                                experiment_sample=settings.experiment_served_sample)  # fmt: skip
        self.served.start()

    def _poll(self, conn: psycopg.Connection[Any]) -> None:
        """The watcher's periodic work, on its own connection: the fallbacks' data, the experiment's check."""
        if self.popularity.stale():
            self.popularity.refresh(conn)
        tags = self.recommender.tags
        linear = self.model is None or self.settings.serve_algorithm == "linear"
        if linear and tags.stale():  # the linear fallback answers users with likes
            tags.refresh(conn)
        self._check_experiment(conn)

    def _check_experiment(self, conn: psycopg.Connection[Any]) -> None:
        """Every ``experiment_check_seconds``, one process of all the servers (the first to take the lock) looks
        at the running experiment: its figures over time, and the guardrail (which stops a worse candidate)."""
        holder = self.holder
        if holder is None or holder.experiment is None or time.monotonic() < self._experiment_due:
            return
        self._experiment_due = time.monotonic() + self.settings.experiment_check_seconds
        with conn.transaction():
            recent = conn.execute(
                "SELECT 1 FROM experiment_checks WHERE experiment_id = %s AND created_at > now() - "
                "make_interval(secs => %s)", (holder.experiment.definition.id, self.settings.experiment_check_seconds),
            ).fetchone()  # fmt: skip
            if recent is not None or not locks.try_xact_lock(conn, "experiment check"):
                return  # another process looked at it within the period
            result = check_experiment(conn, self.settings, experiment=holder.experiment.definition,
                                      actor="guardrail (server)")  # fmt: skip
        if result.stopped:
            holder.refresh()  # this process at once; the others on the notification

    def stop(self) -> None:
        if self.replicas is not None:
            self.replicas.stop()
        if self.served is not None:
            self.served.stop()
        if self.holder is not None:
            self.holder.stop()
        if self.db is not None:
            self.db.close()

    @property
    def model(self) -> LoadedModel | None:
        return self.holder.current if self.holder else None

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; once more on a fresh one if the connection had died (a database
        restart leaves dead connections in the pool)."""
        assert self.db is not None
        for attempt in (1, 2):
            try:
                with self.db.connection(timeout=self.settings.serve_db_timeout) as conn:
                    return work(conn)
            except psycopg.errors.QueryCanceled:
                raise
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                self.db.pool.check()  # drop every dead idle connection before the retry
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Conn, Conn], T], position: int = 0) -> T:
        """Run ``work(own, reads)``: ``own`` reads the user's own decisions, ``reads`` runs the ANN and catalog
        reads. On a usable read replica that has replayed ``position``, ``reads`` is a replica's connection and
        ``own`` the primary's (read_your_writes=primary), or both the replica's once it has replayed what the
        primary had written (read_your_writes=wait). Without one, or when the replica fails, the primary runs
        both."""
        replica = self.replicas.pick(position) if self.replicas is not None else None
        if replica is None:
            self.metrics.reads.labels("primary", "no_replica").inc()
            return self.run(lambda conn: work(conn, conn))
        try:
            return self._on_replica(replica, work)
        except _ReplicaFailed as failed:
            if failed.cause is None:
                self.metrics.reads.labels("primary", "replica_behind").inc()
            elif isinstance(failed.cause, psycopg.errors.SerializationFailure):  # one query cancelled by recovery
                self.metrics.reads.labels("primary", "replica_conflict").inc()
            else:
                replica.failed(failed.cause)
                self.metrics.reads.labels("primary", "replica_failed").inc()
        return self.run(lambda conn: work(conn, conn))

    def _on_replica(self, replica: Replica, work: Callable[[Conn, Conn], T]) -> T:
        settings = self.settings
        try:
            with replica.db.connection(timeout=min(settings.serve_db_timeout, _REPLICA_WAIT)) as reads:
                if settings.read_your_writes == "wait":
                    target = self.run(wal_position)
                    if not _guard(reads, lambda _, conn: _caught_up(conn, target, settings.read_wait_ms / 1000)):
                        raise _ReplicaFailed(None)  # the replica is not broken: the primary answers this one
                    result = _guard(reads, work, reads)
                else:
                    result = self.run(lambda own: _guard(reads, work, own))
        except DatabaseUnavailable as exc:  # no connection to the replica within the wait
            raise _ReplicaFailed(exc) from None
        self.metrics.reads.labels(replica.name, "ok").inc()
        return result


_REPLICA_WAIT = 0.25  # seconds for a replica's pooled connection, then the primary answers


class _ReplicaFailed(Exception):
    """A read replica could not answer (``cause``), or had not caught up (``None``)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _guard(reads: Conn, work: Callable[[Conn, Conn], T], own: Conn | None = None) -> T:
    """``work`` with the replica's failures told apart from the primary's (which ``Service.run`` retries)."""
    try:
        return work(reads if own is None else own, reads)
    except psycopg.Error as exc:
        if reads.broken or _replica_error(exc):
            raise _ReplicaFailed(exc) from None
        raise


def _replica_error(exc: psycopg.Error) -> bool:
    """Errors of a standby: a query cancelled by recovery (40001), the server shutting down or restarting."""
    return isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.AdminShutdown |
                      psycopg.errors.CannotConnectNow | psycopg.errors.ReadOnlySqlTransaction)  # fmt: skip


def _caught_up(conn: Conn, target: int, wait: float) -> bool:
    """Whether the replica replays ``target`` within ``wait`` seconds (asked every 2 ms)."""
    deadline = time.monotonic() + wait
    while replayed(conn) < target:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def serving_session(settings: Settings) -> dict[str, str]:
    """The settings of every pooled connection of the server (the request path). Every statement it runs must stay
    linear in its input under these, generic plans included (tests/serve/test_scale.py checks them)."""
    return {
        "statement_timeout": str(settings.serve_statement_timeout_ms),
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.ef_search": str(settings.serve_ef_search),
        # the statements are the same for every request (the version is a literal): plan them once
        "plan_cache_mode": "force_generic_plan",
    }

"""What the routes share: settings, the database pool (with the serving session), the model holder, auth, the
recommender."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import psycopg

from twotower.db import Database, locks
from twotower.db.replicas import ReadReplicas, replayed, wal_position
from twotower.errors import DatabaseUnavailable, ModelUnavailable
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
M = TypeVar("M")
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
        # the database may be down: /readyz says so
        self.db = Database.open(settings, migrate=False, check=False, session=serving_session(settings),
                                autocommit=True)  # fmt: skip
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
    def models(self) -> ModelHolder:
        """The model holder (503 before the server has started)."""
        if self.holder is None:
            raise ModelUnavailable("the server is starting")
        return self.holder

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

    def read(self, own: Callable[[Conn, float | None], M] | None, reads: Callable[[Conn, M], T],
             position: int = 0) -> T:  # fmt: skip
        """A request in two phases: ``own(conn, fresh)`` reads the user's own decisions, ``reads(conn, mine)`` the
        ANN and catalog reads. Without a usable read replica (one that has replayed ``position``), both run on one
        primary connection. With one: read_your_writes=primary runs ``own`` on the primary (with ``fresh``, the
        seconds a replica may lack) and ``reads`` on the replica; wait runs both on the replica once it has
        replayed the primary's position. Whatever fails on the replica is run again on the primary. ``own`` None: a
        read of nobody's decisions (``reads`` gets None), with no primary round trip before the replica's."""

        def mine_of(conn: Conn, fresh: float | None) -> M:
            return own(conn, fresh) if own is not None else cast(M, None)  # without ``own``, M is None

        replicas = self.replicas
        replica = replicas.pick(position) if replicas is not None else None
        if replica is None:
            self.metrics.reads.labels("primary", "no_replica" if replicas is None else "replica_unusable").inc()
            return self.run(lambda conn: reads(conn, mine_of(conn, None)))
        wait = self.settings.read_your_writes == "wait"
        target = self.run(wal_position) if wait else 0
        fresh = replicas.fresh_seconds()  # type: ignore[union-attr]
        mine: M | None = None if wait or own is None else self.run(lambda conn: own(conn, fresh))
        reason = "replica_failed"
        try:
            with replica.db.connection(timeout=min(self.settings.serve_db_timeout, _REPLICA_WAIT)) as conn:
                if wait:
                    if not _caught_up(conn, target, self.settings.read_wait_ms / 1000):
                        raise _Behind
                    mine = mine_of(conn, None)
                result = reads(conn, cast(M, mine))
        except _Behind:
            reason = "replica_behind"
        except DatabaseUnavailable:  # no replica connection within the wait: busy, or down (the looks will say)
            reason = "replica_busy"
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, _ONE_QUERY):
                replica.failed(exc)  # its connection broke: skipped until a look finds it well
            else:
                reason = "replica_error"  # one query cancelled (recovery conflict, timeout): the primary retries it
        else:
            self.metrics.reads.labels(replica.name, "ok").inc()
            return result
        self.metrics.reads.labels("primary", reason).inc()
        if wait or mine is None:
            return self.run(lambda conn: reads(conn, mine_of(conn, None)))
        return self.run(lambda conn: reads(conn, mine))


_REPLICA_WAIT = 0.25  # seconds for a replica's pooled connection, then the primary answers
_ONE_QUERY = (psycopg.errors.QueryCanceled, psycopg.errors.SerializationFailure)


class _Behind(Exception):
    """The replica had not replayed the primary's position within read_wait_ms."""


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

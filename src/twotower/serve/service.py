"""What the routes share: settings, the database pool (with the serving session), the model holder, auth, the
recommender."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from twotower.db import Database
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

    def start(self) -> None:
        settings = self.settings
        self.db = Database.open(settings, migrate=False, check=False)  # the database may be down: /readyz says so
        self.db.autocommit = True  # one statement per round trip, no COMMIT round trip
        self.db.session = serving_session(settings)
        cache = settings.model_cache_dir
        self.holder = ModelHolder(self.db, open_store(settings), cache, poll_seconds=settings.serve_model_poll_seconds,
                                  threads=settings.serve_onnx_threads, on_poll=self._poll)  # fmt: skip
        self.holder.start()
        self.served = ServedLog(self.db, sample=settings.monitor_served_sample,
                                retention_days=settings.monitor_served_retention_days)  # fmt: skip
        self.served.start()

    def _poll(self, conn: psycopg.Connection[Any]) -> None:
        """The watcher's periodic work, on its own connection: the fallbacks' data."""
        if self.popularity.stale():
            self.popularity.refresh(conn)
        tags = self.recommender.tags
        if self.model is None and tags.stale():  # the linear fallback answers users with likes
            tags.refresh(conn)

    def stop(self) -> None:
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

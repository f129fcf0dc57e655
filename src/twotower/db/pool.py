"""The connection pool, with reconnection attempts at most a second apart."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff  # the pool's reconnection schedule (see _Attempt)

__all__ = ["Pool"]


class _Attempt(AttemptWithBackoff):
    """Reconnection attempts at most ``MAX_DELAY`` apart: psycopg_pool doubles the wait without a cap, so after a
    40 s outage the next attempt could be 16 s after the database is back."""

    MAX_DELAY = 1.0

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)


class Pool(ConnectionPool[psycopg.Connection[Any]]):
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _Attempt(timeout=self.reconnect_timeout), growing)

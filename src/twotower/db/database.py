"""Connections: the configured Postgres (``DATABASE_URL``) or the embedded one, behind one pool."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from twotower.db.embedded import EmbeddedServer
from twotower.errors import ConfigError, DatabaseUnavailable
from twotower.settings import Settings

__all__ = ["Database", "redact"]

log = logging.getLogger(__name__)


def redact(conninfo: str) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"{user}{host}{port}/{parts.get('dbname', '')}"


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per-connection set-up: pgvector adapters (numpy arrays <-> vector) once the extension exists."""
    from pgvector.psycopg import register_vector

    # before the first migration the extension is not there yet: `twotower db upgrade` creates it
    with contextlib.suppress(psycopg.ProgrammingError):
        register_vector(conn)
    conn.commit()


class Database:
    """The store. ``Database.open(settings)`` connects (starting the embedded server if needed)."""

    def __init__(self, conninfo: str, settings: Settings, embedded: EmbeddedServer | None = None) -> None:
        self.conninfo = conninfo
        self.settings = settings
        self.embedded = embedded
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._closed = False
        self.session: dict[str, str] = {}  # settings applied to every pooled connection (set before first use)
        self.autocommit = False  # pooled connections in autocommit mode (set before first use)

    # -- lifecycle ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, *, migrate: bool | None = None) -> Database:
        """Connect and check the connection works; start the embedded server when no URL is configured.

        ``migrate``: apply pending migrations first. Default: yes for the embedded server (zero set-up),
        no for an external database (run ``twotower db upgrade`` there, on purpose).
        """
        embedded: EmbeddedServer | None = None
        if settings.database_url is None:
            embedded = EmbeddedServer(settings.embedded_pg_dir)
            conninfo = embedded.start()
        else:
            conninfo = settings.database_url.get_secret_value()
        db = cls(conninfo, settings, embedded)
        try:
            db.check()
            if migrate is None:
                migrate = embedded is not None
            if migrate:
                from twotower.db.migrations import upgrade

                with db.direct() as conn:
                    upgrade(conn)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self._closed = True  # a late user must not open a new pool that nobody closes
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------------------------------------
    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "connect_timeout": max(1, round(self.settings.db_connect_timeout)),
            "application_name": "twotower",
        }

    def check(self) -> None:
        """Fail fast with one clear line when the database cannot be reached."""
        with self.direct():
            pass

    @contextmanager
    def direct(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A dedicated connection outside the pool (migrations, COPY-heavy imports, LISTEN)."""
        try:
            conn = psycopg.connect(self.conninfo, autocommit=autocommit, **self._connect_kwargs())
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {redact(self.conninfo)}: {_first_line(exc)}"
            ) from None
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid database URL: {_first_line(exc)}") from None
        try:
            _configure(conn)
            yield conn
        finally:
            conn.close()

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._closed:
            raise DatabaseUnavailable("the database connections are closed (shutting down)")
        if self._pool is None:
            pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
                self.conninfo,
                min_size=self.settings.db_pool_min_size,
                max_size=self.settings.db_pool_max_size,
                kwargs={**self._connect_kwargs(), "autocommit": self.autocommit},
                configure=self._configure_pooled,
                open=False,
                name="twotower",
            )
            pool.open(wait=False)
            self._pool = pool
        return self._pool

    def _configure_pooled(self, conn: psycopg.Connection[Any]) -> None:
        _configure(conn)
        for name, value in self.session.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        conn.commit()

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; the transaction commits on success and rolls back on error."""
        wait = self.settings.db_connect_timeout if timeout is None else timeout
        try:
            with self.pool.connection(timeout=wait) as conn:
                yield conn
        except PoolTimeout:
            raise DatabaseUnavailable(f"no database connection within {wait:g}s ({redact(self.conninfo)})") from None


def _first_line(exc: BaseException) -> str:
    """libpq's multi-line message as one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

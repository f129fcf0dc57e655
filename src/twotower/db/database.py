"""Connections: the configured Postgres (``DATABASE_URL``) or the embedded one, behind one pool."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from twotower.db.adapters import register_adapters
from twotower.db.conninfo import first_line, hide, invalid_url, parse_url, redact, scrub
from twotower.db.embedded import EmbeddedServer
from twotower.db.migrations import upgrade
from twotower.db.pool import Pool
from twotower.db.priority import BACKGROUND, Priority, SessionLowering
from twotower.errors import DatabaseUnavailable
from twotower.settings import Settings

__all__ = ["Database"]

log = logging.getLogger(__name__)


class Database:
    """The store. ``Database.open(settings)`` connects (starting the embedded server if needed)."""

    def __init__(
        self, conninfo: str, settings: Settings, embedded: EmbeddedServer | None = None, *,
        session: dict[str, str] | None = None, autocommit: bool = False, connect_options: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """``session``: settings applied to every pooled connection; ``autocommit``: pooled connections in
        autocommit mode (one statement per round trip, no COMMIT round trip: the request path);
        ``connect_options``: more libpq parameters of every connection (keepalives, say)."""
        self.conninfo = conninfo
        hide(conninfo)  # its password is hidden from psycopg's log lines from now on
        self.settings = settings
        self.embedded = embedded
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._closed = False
        self._unsupported: set[str] = set()  # session settings the server refused (logged once)
        self.session = dict(session or {})
        self.autocommit = autocommit
        self.connect_options = dict(connect_options or {})
        self._pool_lock = threading.Lock()
        self.lowering: SessionLowering | None = None  # background work: see ``lower_priority``

    # -- lifecycle ------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, settings: Settings, *, migrate: bool | None = None, check: bool = True,
        session: dict[str, str] | None = None, autocommit: bool = False,
    ) -> Database:  # fmt: skip
        """Connect and check the connection works; start the embedded server when no URL is configured.

        ``migrate``: apply pending migrations first. Default: yes for the embedded server (zero set-up),
        no for an external database (run ``twotower db upgrade`` there, on purpose). ``check=False`` (the server):
        only parse the URL; connections are made when first needed, and retried while the database is down.
        ``session``, ``autocommit``: the pooled connections' (see ``Database``).
        """
        embedded: EmbeddedServer | None = None
        if settings.database_url is None:
            embedded = EmbeddedServer(settings.embedded_pg_dir)
            conninfo = embedded.start()
        else:
            conninfo = parse_url(settings.database_url.get_secret_value())
        db = cls(conninfo, settings, embedded, session=session, autocommit=autocommit)
        if not check:
            return db
        try:
            db.check()
            if migrate is None:
                migrate = embedded is not None
            if migrate:
                with db.direct() as conn:
                    upgrade(conn)
        except BaseException:
            db.close()
            raise
        return db

    parse_url = staticmethod(parse_url)  # the URL checked, or a ConfigError (see ``db.conninfo.parse_url``)

    def lower_priority(self, priority: Priority) -> None:
        """Run the database's processes that serve this store's connections from now on at ``priority``, when the
        database is on this machine (a batch job on a machine that also serves: see ``db.priority``; the job's own
        process is lowered with ``priority.apply()``). Call it before the first pooled connection."""
        if self.lowering is not None:
            self.lowering.close()
            self.lowering = None
        if priority.lowered:
            self.lowering = SessionLowering(self.conninfo, priority, self._connect_kwargs)

    def close(self) -> None:
        if self.lowering is not None:
            self.lowering.close()
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
            **self.connect_options,
            "connect_timeout": max(1, round(self.settings.db_connect_timeout)),
            # a lowered store's sessions are what ``pg_stat_activity`` tells apart from the requests
            "application_name": BACKGROUND if self.lowering is not None else "twotower",
        }

    def check(self) -> None:
        """Fail fast with one clear line when the database cannot be reached."""
        with self.direct():
            pass

    @contextmanager
    def direct(self, *, autocommit: bool = False, lowered: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """A dedicated connection outside the pool (migrations, COPY-heavy imports, LISTEN). ``lowered=False``: at
        the server's priority even after ``lower_priority`` (short transactions that take locks requests wait on)."""
        try:
            conn = psycopg.connect(self.conninfo, autocommit=autocommit, **self._connect_kwargs())
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot connect to the database at {redact(self.conninfo)}: {scrub(first_line(exc), self.conninfo)}"
            ) from None
        except psycopg.ProgrammingError as exc:
            raise invalid_url(self.conninfo, exc) from None
        try:
            register_adapters(conn)
            if self.lowering is not None and lowered:
                self.lowering.session(conn)
            yield conn
        finally:
            conn.close()

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._closed:
            raise DatabaseUnavailable("the database connections are closed (shutting down)")
        with self._pool_lock:  # two first requests at once must not open two pools
            return self._pool or self._open_pool()

    def _open_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool: ConnectionPool[psycopg.Connection[Any]] = Pool(
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
        return pool

    def _configure_pooled(self, conn: psycopg.Connection[Any]) -> None:
        register_adapters(conn)
        if self.lowering is not None:
            self.lowering.session(conn)
        for name, value in self.session.items():
            try:
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            except psycopg.errors.InvalidName:  # pgvector < 0.8 has no hnsw.iterative_scan: run without it
                conn.rollback()
                if name not in self._unsupported:
                    self._unsupported.add(name)
                    log.warning("the database does not know the setting %s (pgvector < 0.8?): running without it",
                                name)  # fmt: skip
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

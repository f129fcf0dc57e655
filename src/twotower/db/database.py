"""Connections: the configured Postgres (``DATABASE_URL``) or the embedded one, behind one pool."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff  # the pool's reconnection schedule (see _Attempt)

from twotower.db.embedded import EmbeddedServer
from twotower.db.priority import BACKGROUND, Priority, SessionLowering
from twotower.errors import ConfigError, DatabaseUnavailable
from twotower.settings import Settings

__all__ = ["Database", "as_url", "redact", "scrub"]

log = logging.getLogger(__name__)


def redact(conninfo: str) -> str:
    """``user@host:port/dbname`` for messages: never the password, nor a host that holds a piece of it (a password
    with an unencoded ``@`` or ``/`` is parsed into the host)."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = str(parts.get("host") or "localhost")
    if _secrets(conninfo) & _pieces(host) or any(c in host for c in "@ "):
        host = "<malformed host>"
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return scrub(f"{user}{host}{port}/{parts.get('dbname', '')}", conninfo)


_URL_SECRET = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:(?P<secret>[^?#]*)@")
_KEYWORD_SECRET = re.compile(r"password\s*=\s*(?P<secret>'(?:[^'\\]|\\.)*'|.*)", re.IGNORECASE)


def _pieces(text: str) -> set[str]:
    """The text and its parts between separators (``@ / : % =`` and white space), those of 4 characters or more."""
    return {text} | {p for p in re.split(r"[@/:%=\s'\[\]]+", text) if len(p) >= 4}


def _secrets(conninfo: str) -> set[str]:
    """What may be (a piece of) the password in a connection string, parsed or not: the parsed password, the URL's
    user-info after the first ``:`` up to the last ``@`` before the path, a ``password=`` value to the end."""
    found: set[str] = set()
    with contextlib.suppress(psycopg.ProgrammingError):
        password = conninfo_to_dict(conninfo).get("password")
        if password:
            found |= _pieces(str(password))
    authority = conninfo.split("/", 3)[2] if "://" in conninfo and conninfo.count("/") >= 2 else ""
    if "@" in authority and ":" in authority.rsplit("@", 1)[0]:
        found |= _pieces(authority.rsplit("@", 1)[0].split(":", 1)[1])
    if (match := _URL_SECRET.match(conninfo)) is not None:
        found |= _pieces(match["secret"].rsplit("@", 1)[0])
    if (match := _KEYWORD_SECRET.search(conninfo)) is not None:
        found |= _pieces(match["secret"].strip("'"))
    return {f for f in found if f}


def scrub(message: str, conninfo: str) -> str:
    """``message`` with everything that may be a piece of the connection string's password replaced by ``***``."""
    for secret in sorted(_secrets(conninfo), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


class _ScrubSecrets(logging.Filter):
    """Hides the password's pieces in what psycopg and its pool log (a connection error can quote a host that libpq
    parsed out of a malformed password), before any handler formats the record."""

    def __init__(self) -> None:
        super().__init__()
        self.conninfos: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = message
        for conninfo in list(self.conninfos):
            clean = scrub(clean, conninfo)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_SCRUB = _ScrubSecrets()
for _name in ("psycopg", "psycopg.pool"):
    logging.getLogger(_name).addFilter(_SCRUB)


def as_url(conninfo: str) -> str:
    """A connection string as the ``postgresql://`` URL that other clients take (SUPABASE_DB_URL for the edge
    functions): user, password, host or Unix-socket directory (``?host=``), port and database."""
    from urllib.parse import quote

    info = conninfo_to_dict(conninfo)
    user = quote(str(info.get("user", "postgres")), safe="")
    if info.get("password"):
        user += ":" + quote(str(info["password"]), safe="")
    name, host, port = quote(str(info["dbname"]), safe=""), str(info.get("host", "127.0.0.1")), info.get("port")
    if host.startswith("/"):
        return f"postgresql://{user}@/{name}?host={quote(host)}" + (f"&port={port}" if port else "")
    return f"postgresql://{user}@{host}:{port or 5432}/{name}"


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
        _SCRUB.conninfos.add(conninfo)  # its password is hidden from psycopg's log lines from now on
        self.settings = settings
        self.embedded = embedded
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._closed = False
        self._unsupported: set[str] = set()  # session settings the server refused (logged once)
        self.session: dict[str, str] = {}  # settings applied to every pooled connection (set before first use)
        self.autocommit = False  # pooled connections in autocommit mode (set before first use)
        self.lowering: SessionLowering | None = None  # background work: see ``lower_priority``

    # -- lifecycle ------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, *, migrate: bool | None = None, check: bool = True) -> Database:
        """Connect and check the connection works; start the embedded server when no URL is configured.

        ``migrate``: apply pending migrations first. Default: yes for the embedded server (zero set-up),
        no for an external database (run ``twotower db upgrade`` there, on purpose). ``check=False`` (the server):
        only parse the URL; connections are made when first needed, and retried while the database is down.
        """
        embedded: EmbeddedServer | None = None
        if settings.database_url is None:
            embedded = EmbeddedServer(settings.embedded_pg_dir)
            conninfo = embedded.start()
        else:
            conninfo = cls.parse_url(settings.database_url.get_secret_value())
        db = cls(conninfo, settings, embedded)
        if not check:
            return db
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

    @staticmethod
    def parse_url(conninfo: str) -> str:
        """The URL itself when libpq can parse it into something that can be a server; else a ``ConfigError`` that
        shows no piece of the password. A host with an ``@`` is a password's unencoded ``@`` that libpq took for the
        start of the host: connecting would only quote that piece of the password in every error."""
        try:
            parts = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise _invalid_url(conninfo, exc) from None
        if any("@" in host for host in str(parts.get("host") or "").split(",")):
            raise ConfigError("invalid database URL: its host has an '@' (characters such as @ / : % in the password "
                              f"must be percent-encoded, @ as %40): {redact(conninfo)}")  # fmt: skip
        return conninfo

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
                f"cannot connect to the database at {redact(self.conninfo)}: {scrub(_first_line(exc), self.conninfo)}"
            ) from None
        except psycopg.ProgrammingError as exc:
            raise _invalid_url(self.conninfo, exc) from None
        try:
            _configure(conn)
            if self.lowering is not None and lowered:
                self.lowering.session(conn)
            yield conn
        finally:
            conn.close()

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._closed:
            raise DatabaseUnavailable("the database connections are closed (shutting down)")
        if self._pool is None:
            pool: ConnectionPool[psycopg.Connection[Any]] = _Pool(
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


class _Attempt(AttemptWithBackoff):
    """Reconnection attempts at most ``MAX_DELAY`` apart: psycopg_pool doubles the wait without a cap, so after a
    40 s outage the next attempt could be 16 s after the database is back."""

    MAX_DELAY = 1.0

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)


class _Pool(ConnectionPool[psycopg.Connection[Any]]):
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _Attempt(timeout=self.reconnect_timeout), growing)


def _invalid_url(conninfo: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"invalid database URL: {scrub(_first_line(exc), conninfo)} (characters such as @ / : % in "
                       "the password must be percent-encoded)")  # fmt: skip


def _first_line(exc: BaseException) -> str:
    """libpq's multi-line message as one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__

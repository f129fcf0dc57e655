"""Versioned SQL migrations, applied in order under an advisory lock, recorded in ``twotower_migrations``.

Files are named ``NNNN_name.sql``. An applied migration is never edited: its checksum is stored and a
changed file is refused. After the versioned files, :mod:`twotower.db.rls` adds row-level security when the
database has Supabase's ``auth.uid()`` (idempotently, so it also catches an ``auth`` schema added later).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from twotower.db import locks
from twotower.db.adapters import register_adapters
from twotower.db.pgvector import check_pgvector
from twotower.db.rls import ensure_rls
from twotower.errors import MigrationError

__all__ = ["Migration", "MigrationStatus", "UpgradeResult", "discover", "status", "upgrade"]

TABLE = "twotower_migrations"
# the advisory lock (see twotower.db.locks) every process takes to migrate
LOCK = "migrate"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class MigrationStatus:
    applied: list[tuple[int, str, datetime]]
    pending: list[Migration]

    @property
    def current(self) -> int:
        return self.applied[-1][0] if self.applied else 0


@dataclass
class UpgradeResult:
    applied: list[Migration] = field(default_factory=list)
    rls_changes: list[str] = field(default_factory=list)
    version: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.rls_changes)


def discover() -> list[Migration]:
    """The migrations shipped with this package, in version order."""
    found: list[Migration] = []
    for entry in resources.files(__package__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in package: {versions}")
    return found


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )"""
        ).format(sql.Identifier(TABLE))
    )


def _applied(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str, datetime]]:
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()
    if not exists or not exists[0]:
        return []
    query = sql.SQL("SELECT version, name, checksum, applied_at FROM {} ORDER BY version")
    rows = conn.execute(query.format(sql.Identifier(TABLE))).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows]


def _verify(applied: list[tuple[int, str, str, datetime]], known: list[Migration]) -> None:
    by_version = {m.version: m for m in known}
    for version, name, checksum, _ in applied:
        mig = by_version.get(version)
        if mig is None:
            newest = max(by_version, default=0)
            raise MigrationError(
                f"the database has migration {version:04d}_{name}, which this twotower does not know "
                f"(it knows up to {newest:04d}): upgrade twotower before using this database"
            )
        if mig.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{name} was changed after it was applied "
                f"(checksum {checksum[:12]} in the database, {mig.checksum[:12]} in the package)"
            )


def status(conn: psycopg.Connection[Any]) -> MigrationStatus:
    """What is applied and what is pending (read-only)."""
    known = discover()
    applied = _applied(conn)
    conn.rollback()
    _verify(applied, known)
    done = {v for v, *_ in applied}
    return MigrationStatus(
        applied=[(v, n, at) for v, n, _, at in applied],
        pending=[m for m in known if m.version not in done],
    )


def upgrade(conn: psycopg.Connection[Any]) -> UpgradeResult:
    """Apply pending migrations, each in its own transaction, under a session advisory lock.

    Concurrent upgrades (two processes starting on a fresh database) serialise on the lock; the second
    finds nothing left to do.
    """
    if conn.autocommit:
        conn.autocommit = False
    conn.commit()  # start from a clean slate: each migration is its own transaction
    result = UpgradeResult()
    locks.wait_lock(conn, LOCK)
    conn.commit()
    try:
        check_pgvector(conn, create=True)  # one clear line when it is missing, too old or not ours to create
        conn.commit()
        with conn.transaction():
            _ensure_table(conn)
        known = discover()
        applied = _applied(conn)
        conn.commit()
        _verify(applied, known)
        done = {v for v, *_ in applied}
        for mig in known:
            if mig.version in done:
                continue
            try:
                with conn.transaction():
                    conn.execute(mig.sql.encode())  # no parameters: simple protocol, many statements
                    conn.execute(
                        sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(
                            sql.Identifier(TABLE)
                        ),
                        (mig.version, mig.name, mig.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {mig.version:04d}_{mig.name} failed and was rolled back: "
                    f"{str(exc).strip().splitlines()[0]}"
                ) from None
            result.applied.append(mig)
        with conn.transaction():
            result.rls_changes = ensure_rls(conn)
        result.version = max([m.version for m in known], default=0)
    finally:
        if not conn.closed and not conn.broken:
            conn.rollback()
            locks.unlock(conn, LOCK)
            conn.commit()
    register_adapters(conn)  # the vector type may have just been created: its adapters on this connection too
    return result

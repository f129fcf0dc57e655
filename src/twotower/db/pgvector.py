"""The pgvector extension: present, recent enough, and what it can do.

twotower needs pgvector >= 0.7 (HNSW on expressions, ``vector_ip_ops``); 0.8 adds iterative index scans
(``hnsw.iterative_scan``), without which a recommendation whose filters exclude most of the index is topped up
by the exact backfill (correct, slower). ``twotower db upgrade`` checks before migrating; the server checks each
new connection.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from twotower.errors import PermissionDenied, StoreError

__all__ = ["MINIMUM", "PermissionDenied", "check_pgvector", "parse_version"]

log = logging.getLogger(__name__)
MINIMUM = (0, 7)
ITERATIVE_SCANS = (0, 8)


def parse_version(text: str) -> tuple[int, ...]:
    """``'0.8.0'`` -> ``(0, 8, 0)``; suffixes such as ``'0.7.4-dev'`` are ignored."""
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_pgvector(conn: psycopg.Connection[Any], *, create: bool = False) -> tuple[int, ...]:
    """The installed pgvector version (installing it when ``create``); one clear ``StoreError`` when it is missing,
    cannot be installed by this role, or is older than 0.7. Logs a warning below 0.8."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        if available is None:
            raise StoreError("the pgvector extension is not installed on this PostgreSQL server: install it (e.g. "
                             "the postgresql-NN-pgvector package, or enable `vector` in Supabase) and run "
                             "`twotower db upgrade` again")  # fmt: skip
        if not create:
            raise StoreError("the pgvector extension is not created in this database: run `twotower db upgrade`")
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege:
            user = conn.execute("SELECT current_user").fetchone()
            raise PermissionDenied(
                f"role {user[0] if user else '?'} may not create the pgvector extension: ask a superuser (or the "
                "database owner) to run `CREATE EXTENSION vector;` in this database, then run `twotower db upgrade`"
            ) from None
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert row is not None
    version = parse_version(str(row[0]))
    if version < MINIMUM:
        raise StoreError(f"pgvector {row[0]} is too old: twotower needs 0.7 or newer (`ALTER EXTENSION vector "
                         "UPDATE;` after installing a newer pgvector on the server)")  # fmt: skip
    if version < ITERATIVE_SCANS:
        log.warning("pgvector %s has no iterative index scans (0.8+): recommendations with narrow filters are "
                    "topped up by an exact scan, which is slower", row[0])  # fmt: skip
    return version

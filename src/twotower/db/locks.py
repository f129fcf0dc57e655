"""Postgres advisory locks, by name: one keying scheme for every lock twotower takes.

A name (``"deploy"``, ``"sync dmm:digital"``, ``"batch-update:v7"``) maps to a stable signed 64-bit key (the first 8
bytes of its BLAKE2b digest), the same in every process and every version of the code. Session locks belong to a
connection and are released when it closes, even by a crash; transaction locks end with their transaction.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

__all__ = ["holder", "lock_key", "try_lock", "try_xact_lock", "unlock", "wait_lock", "xact_lock"]


def lock_key(name: str) -> int:
    """The advisory-lock key of ``name``."""
    return int.from_bytes(hashlib.blake2b(f"twotower:{name}".encode(), digest_size=8).digest(), "big", signed=True)


def _one(conn: psycopg.Connection[Any], statement: str, name: str) -> bool:
    row = conn.execute(statement, (lock_key(name),)).fetchone()
    return bool(row and row[0])


def try_lock(conn: psycopg.Connection[Any], name: str) -> bool:
    """Take the session lock ``name`` if it is free; True when taken."""
    return _one(conn, "SELECT pg_try_advisory_lock(%s)", name)


def wait_lock(conn: psycopg.Connection[Any], name: str) -> None:
    """Wait for the session lock ``name``."""
    conn.execute("SELECT pg_advisory_lock(%s)", (lock_key(name),))


def unlock(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))


def xact_lock(conn: psycopg.Connection[Any], name: str) -> None:
    """Wait for the lock ``name`` until the end of the current transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))


def try_xact_lock(conn: psycopg.Connection[Any], name: str) -> bool:
    """Take the lock ``name`` until the end of the current transaction if it is free; True when taken."""
    return _one(conn, "SELECT pg_try_advisory_xact_lock(%s)", name)


def holder(conn: psycopg.Connection[Any], name: str) -> tuple[int, Any, Any] | None:
    """``(pid, backend_start, client_addr)`` of the session holding the lock ``name``, if any."""
    key = lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows the key's two halves as unsigned oids
    row = conn.execute(
        "SELECT a.pid, a.backend_start, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        (key >> 32, key & 0xFFFF_FFFF),
    ).fetchone()
    return (int(row[0]), row[1], row[2]) if row else None

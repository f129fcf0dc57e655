"""Per-connection set-up: the pgvector adapters (numpy arrays <-> vector)."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from pgvector.psycopg import register_vector

__all__ = ["register_adapters"]


def register_adapters(conn: psycopg.Connection[Any]) -> None:
    """Per-connection set-up: pgvector adapters (numpy arrays <-> vector) once the extension exists."""
    # before the first migration the extension is not there yet: `twotower db upgrade` creates it
    with contextlib.suppress(psycopg.ProgrammingError):
        register_vector(conn)
    conn.commit()

"""Where a generation's rows live: in ``video_embeddings``/``user_embeddings`` themselves, or in a child table.

A bulk re-embed (``twotower batch-update`` when most vectors change, see ``embeddings.shadow``) loads a version's
rows into a table of their own that serving does not see, indexes it, and then makes it a child of the embeddings
table (table inheritance, ``CHECK (model_version = ...)``): a query of the parent, ``WHERE model_version = v``,
reads the child through its own indexes; the planner excludes the children of other versions (constraint
exclusion). Such a child is named ``<table>_g<digest of the version>_<job id>``; at most one per version and table is
attached at a time. Writes of single rows of a generation (the catalog sync, the in-place batch, the embedding
endpoint) go to the table this module names, so that its primary key keeps one row per id.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["TABLES", "child_prefix", "drop_children", "generation_table", "hnsw_build_memory"]

TABLES = ("video_embeddings", "user_embeddings")


# the HNSW graph of one 64-d vector at m = 16 took 543 bytes in the 100k index (54.3 MB): a build whose graph
# does not fit in maintenance_work_mem goes on on disk, each insert slower (at 1M under the embedded server's 64MB
# default: 1,700 vectors/s falling to 400/s, over 25 minutes and 42% done; bench/results/scale.json)
_GRAPH_BYTES_PER_ROW = 300  # besides the vector's own 4 bytes a dimension
# the floor is what shadow builds had (a limit, not an allocation)
_BUILD_MEMORY_MIN, _BUILD_MEMORY_MAX = 512 << 20, 8 << 30


def hnsw_build_memory(rows: int, dim: int) -> str:
    """``maintenance_work_mem`` for building the HNSW index of ``rows`` vectors of ``dim``: twice the graph,
    between 512 MB and 8 GB (in MB, as Postgres takes it). A database with less memory than that builds on disk,
    much more slowly."""
    need = 2 * rows * (4 * dim + _GRAPH_BYTES_PER_ROW)
    return f"{min(max(need, _BUILD_MEMORY_MIN), _BUILD_MEMORY_MAX) >> 20}MB"


def child_prefix(table: str, version: str) -> str:
    """The name prefix of ``version``'s child tables of ``table`` (a digest: names are limited to 63 bytes)."""
    return f"{table}_g{hashlib.sha256(version.encode()).hexdigest()[:16]}_"


def _like(prefix: str) -> str:
    return prefix.replace("_", r"\_") + "%"


def generation_table(conn: psycopg.Connection[Any], table: str, version: str) -> str:
    """The table that holds ``version``'s rows of ``table``: its attached child, or ``table`` itself."""
    row = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s) AND c.relname LIKE %s ORDER BY c.relname DESC LIMIT 1",
        (table, _like(child_prefix(table, version))),
    ).fetchone()
    return str(row[0]) if row else table


def drop_children(
    conn: psycopg.Connection[Any], version: str, *, keep: str | None = None, tables: tuple[str, ...] = TABLES
) -> list[str]:
    """Drop ``version``'s child tables (attached or not) of the embeddings ``tables``, except ``keep``."""
    dropped = []
    for table in tables:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE %s ORDER BY 1",
            (_like(child_prefix(table, version)),),
        ).fetchall()
        for (name,) in rows:
            if name != keep:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
                dropped.append(str(name))
    return dropped

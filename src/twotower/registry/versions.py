"""Model versions in the database: the active one, the history, promote, rollback, and pruning generations.

A version's *generation* is its rows in ``video_embeddings``/``user_embeddings`` plus a partial HNSW index over
its video embeddings. Promote and rollback flip ``model_versions.status`` in one transaction and ``NOTIFY``
the servers; they never touch embeddings, so they take milliseconds.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from twotower.db import locks
from twotower.errors import InputError, NotFound, RollbackRefused
from twotower.registry.generations import drop_children

__all__ = [
    "NOTIFY_CHANNEL",
    "ModelVersion",
    "active_version",
    "drop_generation",
    "fail_stale_builds",
    "get_version",
    "hnsw_index_name",
    "hold_candidate",
    "list_versions",
    "promote",
    "prune_generations",
    "rollback",
    "switch",
]

NOTIFY_CHANNEL = "twotower_model"
SWITCH_LOCK = "switch"  # serialises promote/rollback (the deploy lock is held for a whole deploy)


@dataclass(frozen=True)
class ModelVersion:
    version: str
    status: str
    embedding_dim: int
    artifact_uri: str | None
    metrics: dict[str, Any]
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    generation_built_at: datetime | None
    videos_embedded: int | None
    users_embedded: int | None
    error: str | None

    @property
    def has_generation(self) -> bool:
        return self.status in ("ready", "candidate", "active", "retired")


_COLUMNS = sql.SQL(
    "version, status, embedding_dim, artifact_uri, metrics, created_at, activated_at, retired_at, "
    "generation_built_at, videos_embedded, users_embedded, error"
)


def hnsw_index_name(version: str) -> str:
    """The partial HNSW index of one generation (a digest: version names may be longer than identifiers)."""
    return f"video_embeddings_hnsw_{hashlib.sha256(version.encode()).hexdigest()[:16]}"


def list_versions(conn: psycopg.Connection[Any]) -> list[ModelVersion]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT {} FROM model_versions ORDER BY created_at DESC, version DESC").format(_COLUMNS))
        return [ModelVersion(**row) for row in cur.fetchall()]


def get_version(conn: psycopg.Connection[Any], version: str) -> ModelVersion:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT {} FROM model_versions WHERE version = %s").format(_COLUMNS), (version,))
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"model version {version!r} is not registered (see `twotower models list`)")
    return ModelVersion(**row)


def active_version(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT version FROM model_versions WHERE status = 'active'").fetchone()
    return None if row is None else str(row[0])


def process_actor() -> str:
    """``user@host`` of this process: who a command-line deploy or rollback was."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _lock_switch(conn: psycopg.Connection[Any]) -> None:
    """Take the switch lock (the caller's transaction); refuse while an experiment runs."""
    locks.xact_lock(conn, SWITCH_LOCK)
    running = conn.execute("SELECT id, candidate_version FROM experiments WHERE status = 'running'").fetchone()
    if running is not None:
        raise RollbackRefused(
            f"experiment {running[0]} is running (candidate {running[1]}): stop it first with `twotower experiment "
            "stop` (or `experiment stop --promote` to make its candidate active)"
        )


def switch(conn: psycopg.Connection[Any], version: str, action: str, actor: str | None) -> str | None:
    """Make ``version`` active in one transaction (caller's), retire the old one, record it, notify. Refused while
    an experiment runs (its control would change under it): ``experiment stop [--promote]`` first."""
    _lock_switch(conn)
    row = conn.execute("SELECT status FROM model_versions WHERE version = %s FOR UPDATE", (version,)).fetchone()
    if row is None:
        raise NotFound(f"model version {version!r} is not registered (see `twotower models list`)")
    previous = active_version(conn)
    if previous == version:
        return previous
    # a deploy promotes the 'ready' version it built and checked; a rollback returns to a version that served
    # before ('ready' ones a dead deploy left behind never passed their checks)
    if row[0] not in (("ready", "candidate", "retired") if action == "promote" else ("retired",)):
        raise RollbackRefused(_not_switchable(version, str(row[0])))
    conn.execute("UPDATE model_versions SET status = 'retired', retired_at = now() WHERE status = 'active'")
    conn.execute(
        "UPDATE model_versions SET status = 'active', activated_at = now(), retired_at = NULL WHERE version = %s",
        (version,),
    )
    conn.execute(
        "INSERT INTO model_deployments (version, previous_version, action, actor) VALUES (%s, %s, %s, %s)",
        (version, previous, action, actor or process_actor()),
    )
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, version))  # delivered at commit
    return previous


def _not_switchable(version: str, status: str) -> str:
    if status == "archived":
        return (
            f"version {version}'s embedding generation was pruned (see TWOTOWER_KEEP_GENERATIONS); "
            f"its artifacts are still in the store: deploy it again with `twotower deploy --from-store {version}`"
        )
    if status == "ready":
        return (f"version {version} was built but never promoted (its deploy stopped before its checks ended): "
                f"deploy it again")  # fmt: skip
    return f"version {version} is {status}: only a version with a complete embedding generation can be activated"


def promote(conn: psycopg.Connection[Any], version: str, actor: str | None = None) -> str | None:
    """Activate a freshly built version; returns the version it replaced. ``actor``: who (default: this
    process's ``user@host``)."""
    with conn.transaction():
        return switch(conn, version, "promote", actor)


def hold_candidate(conn: psycopg.Connection[Any], version: str) -> None:
    """Keep a freshly built and checked version as a candidate (for ``twotower experiment start``), not active.
    Returns None: no version was replaced."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE model_versions SET status = 'candidate' WHERE version = %s AND status = 'ready' RETURNING version",
            (version,),
        ).fetchone()
    if row is None:
        raise NotFound(f"model version {version!r} is not a freshly built version")


def rollback(
    conn: psycopg.Connection[Any], version: str | None = None, actor: str | None = None
) -> tuple[str, str | None]:  # fmt: skip
    """Activate ``version`` (default: the most recently retired one that still has its generation).

    Returns ``(now_active, previously_active)``. No embedding is recomputed.
    """
    with conn.transaction():
        _lock_switch(conn)
        if version is None:
            row = conn.execute(
                "SELECT version FROM model_versions WHERE status = 'retired' "
                "ORDER BY retired_at DESC NULLS LAST, activated_at DESC NULLS LAST LIMIT 1"
            ).fetchone()
            if row is None:
                archived = conn.execute(
                    "SELECT version FROM model_versions WHERE status = 'archived' ORDER BY retired_at DESC NULLS LAST "
                    "LIMIT 1"
                ).fetchone()
                if archived is not None:
                    raise RollbackRefused(_not_switchable(str(archived[0]), "archived"))
                raise RollbackRefused("no previous version with an embedding generation to roll back to")
            version = str(row[0])
        elif active_version(conn) == version:
            raise InputError(f"version {version} is already active")
        previous = switch(conn, version, "rollback", actor)
    return version, previous


def drop_generation(conn: psycopg.Connection[Any], version: str) -> None:
    """Delete a version's embeddings and its index (autocommit connection: the index is dropped concurrently),
    and the tables a bulk re-embed gave it (see ``registry.generations``)."""
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(hnsw_index_name(version))))
    with conn.transaction():
        drop_children(conn, version)
        conn.execute("DELETE FROM video_embeddings WHERE model_version = %s", (version,))
        conn.execute("DELETE FROM user_embeddings WHERE model_version = %s", (version,))


def prune_generations(conn: psycopg.Connection[Any], keep: int) -> list[str]:
    """Drop the generations of all but the ``keep`` most recently retired versions; they become 'archived'
    (their artifacts stay in the store). Needs an autocommit connection."""
    rows = conn.execute(
        "SELECT version FROM model_versions WHERE status = 'retired' "
        "ORDER BY retired_at DESC NULLS LAST, activated_at DESC NULLS LAST OFFSET %s",
        (keep,),
    ).fetchall()
    pruned = []
    for (version,) in rows:
        with conn.transaction():
            # re-check under a row lock: a rollback may have re-activated it meanwhile
            updated = conn.execute(
                "UPDATE model_versions SET status = 'archived' WHERE version = %s AND status = 'retired' "
                "RETURNING version",
                (version,),
            ).fetchone()
        if updated is not None:
            drop_generation(conn, version)
            pruned.append(str(version))
    return pruned


def fail_stale_builds(conn: psycopg.Connection[Any], reason: str) -> list[str]:
    """Versions left 'registered', 'building' or 'ready' (built, never promoted) by a deploy that died: mark them
    failed and drop their rows.

    Call it only while holding the deploy lock (then no other deploy can be building). Autocommit connection.
    """
    rows = conn.execute(
        "UPDATE model_versions SET status = 'failed', error = %s WHERE status IN ('registered', 'building') "
        "OR (status = 'ready' AND activated_at IS NULL) RETURNING version",
        (reason,),
    ).fetchall()
    for (version,) in rows:
        drop_generation(conn, version)
    return [str(v) for (v,) in rows]

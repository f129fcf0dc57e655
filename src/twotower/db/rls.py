"""Row-level security for Supabase-style databases (an ``auth`` schema with ``auth.uid()``).

A signed-in user (role ``authenticated``) reads and writes only their own swipes and reads only their own
embedding; the catalog and item embeddings are readable by ``anon`` and ``authenticated`` but writable by
neither; the engine's own tables are closed to both (the engine connects as the owner, or as a role with
BYPASSRLS such as Supabase's ``service_role``). Every step checks first, so running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["ensure_rls", "has_auth_uid"]

_CATALOG = ("videos", "tags", "video_tags", "performers", "video_performers", "video_embeddings")
_ENGINE = (
    "model_versions",
    "model_deployments",
    "jobs",
    "job_chunks",
    "quality_reports",
    "served_recommendations",
    "sync_state",
    "twotower_migrations",
)
_OWN = "user_id = (SELECT auth.uid())"  # the sub-select lets Postgres evaluate auth.uid() once per query


@dataclass(frozen=True)
class _Policy:
    table: str
    name: str
    command: str
    roles: tuple[str, ...]
    using: str | None
    check: str | None = None


_POLICIES = [
    *(_Policy(t, f"twotower_{t}_read", "SELECT", ("anon", "authenticated"), "true") for t in _CATALOG),
    _Policy("user_video_decisions", "twotower_own_decisions_read", "SELECT", ("authenticated",), _OWN),
    _Policy("user_video_decisions", "twotower_own_decisions_insert", "INSERT", ("authenticated",), None, _OWN),
    _Policy("user_video_decisions", "twotower_own_decisions_update", "UPDATE", ("authenticated",), _OWN, _OWN),
    _Policy("user_video_decisions", "twotower_own_decisions_delete", "DELETE", ("authenticated",), _OWN),
    _Policy("user_embeddings", "twotower_own_embeddings_read", "SELECT", ("authenticated",), _OWN),
]
_GRANTS = [
    *((t, "SELECT", ("anon", "authenticated")) for t in _CATALOG),
    *(("user_video_decisions", p, ("authenticated",)) for p in ("SELECT", "INSERT", "UPDATE", "DELETE")),
    ("user_embeddings", "SELECT", ("authenticated",)),
]


def has_auth_uid(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regprocedure('auth.uid()') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _roles(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated')").fetchall()
    return {r[0] for r in rows}


def ensure_rls(conn: psycopg.Connection[Any]) -> list[str]:
    """Create what is missing; return a line per change (empty when everything was already there)."""
    if not has_auth_uid(conn):
        return []
    changes: list[str] = []
    roles = _roles(conn)

    for table in (*_CATALOG, "user_video_decisions", "user_embeddings", *_ENGINE):
        row = conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (table,)).fetchone()
        if row is not None and not row[0]:
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(table)))
            changes.append(f"enabled row-level security on {table}")

    for pol in _POLICIES:
        targets = [r for r in pol.roles if r in roles] or ["public"]
        exists = conn.execute(
            "SELECT 1 FROM pg_policies WHERE schemaname = current_schema() AND tablename = %s AND policyname = %s",
            (pol.table, pol.name),
        ).fetchone()
        if exists:
            continue
        stmt = sql.SQL("CREATE POLICY {} ON {} AS PERMISSIVE FOR {} TO {}").format(
            sql.Identifier(pol.name),
            sql.Identifier(pol.table),
            sql.SQL(pol.command),
            sql.SQL(", ").join(sql.Identifier(r) if r != "public" else sql.SQL("PUBLIC") for r in targets),
        )
        if pol.using is not None:
            stmt += sql.SQL(" USING ({})").format(sql.SQL(pol.using))
        if pol.check is not None:
            stmt += sql.SQL(" WITH CHECK ({})").format(sql.SQL(pol.check))
        conn.execute(stmt)
        changes.append(f"created policy {pol.name} on {pol.table}")

    for table, privilege, grantees in _GRANTS:
        for role in grantees:
            if role not in roles:
                continue
            row = conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege)).fetchone()
            if row and row[0]:
                continue
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}").format(sql.SQL(privilege), sql.Identifier(table), sql.Identifier(role))
            )
            changes.append(f"granted {privilege} on {table} to {role}")
    return changes

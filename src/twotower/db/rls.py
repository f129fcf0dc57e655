"""Row-level security for Supabase-style databases (an ``auth`` schema with ``auth.uid()``).

A signed-in user (role ``authenticated``) reads and writes only their own swipes and reads only their own
embedding; the catalog and item embeddings are readable by ``anon`` and ``authenticated`` but writable by
neither; the engine's own tables are closed to both (the engine connects as the owner, or as a role with
BYPASSRLS such as Supabase's ``service_role``). Every step checks first, so running it again changes nothing.

Grants are exact: Supabase's default privileges give every new table ALL (TRUNCATE, REFERENCES and TRIGGER
included) to ``anon`` and ``authenticated``, and row-level security does not cover TRUNCATE, so every privilege
those roles hold on twotower's tables and sequences beyond the ones listed here is revoked first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["close_schema", "ensure_rls", "has_auth_uid"]

_CATALOG = ("videos", "tags", "video_tags", "performers", "video_performers", "video_embeddings")
_ENGINE = (
    "model_versions",
    "model_deployments",
    "jobs",
    "job_chunks",
    "quality_reports",
    "served_recommendations",
    "experiments",
    "experiment_checks",
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


_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


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

    changes += _revoke_extra(conn, roles)
    for schema in _CLOSED_SCHEMAS:
        changes += close_schema(conn, schema)
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


_CLOSED_SCHEMAS = ("optuna",)  # the engine's own schemas besides ``public``: `twotower tune`'s study storage


def close_schema(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """Close a schema of the engine's own (Optuna's study tables) to ``anon`` and ``authenticated``: no USAGE of the
    schema, no privilege on its tables, sequences and functions, and none by default on what is created in it
    later (a Supabase project may grant USAGE on every new schema and ALL on every new table to both roles)."""
    roles = sorted(_roles(conn))
    exists = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
    if not roles or not exists or not exists[0]:
        return []
    held = conn.execute(
        "SELECT r FROM unnest(%s::text[]) AS r WHERE has_schema_privilege(r, %s, 'USAGE') OR EXISTS ("
        "SELECT 1 FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'p', 'S', 'v') "
        "AND (has_table_privilege(r, c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')))",
        (roles, schema, schema),
    ).fetchall()
    names = sql.SQL(", ").join(sql.Identifier(r) for r in roles)
    target = sql.Identifier(schema)
    for statement in (
        "REVOKE ALL ON SCHEMA {schema} FROM {roles}",
        "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {roles}",
        "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {roles}",
        "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {schema} FROM {roles}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON TABLES FROM {roles}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} REVOKE ALL ON SEQUENCES FROM {roles}",
    ):
        conn.execute(sql.SQL(statement).format(schema=target, roles=names))
    return [f"closed schema {schema} to {r[0]}" for r in held]


def _revoke_extra(conn: psycopg.Connection[Any], roles: set[str]) -> list[str]:
    """Revoke from ``anon``/``authenticated`` every privilege on twotower's tables and their sequences that
    ``_GRANTS`` does not list (Supabase's default privileges grant them all)."""
    wanted = {(t, p, r) for t, p, grantees in _GRANTS for r in grantees}
    version = conn.execute("SHOW server_version_num").fetchone()
    privileges = _TABLE_PRIVILEGES + (("MAINTAIN",) if version and int(version[0]) >= 170000 else ())
    changes = []
    tables = [r[0] for r in conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
        ([*_CATALOG, "user_video_decisions", "user_embeddings", *_ENGINE],),
    ).fetchall()]  # fmt: skip
    granted = conn.execute(  # every (table, role, privilege) held, in one round trip
        "SELECT t, r, p FROM unnest(%s::text[]) AS t, unnest(%s::text[]) AS r, unnest(%s::text[]) AS p "
        "WHERE has_table_privilege(r, t, p) ORDER BY t, r, p",
        (tables, sorted(roles), list(privileges)),
    ).fetchall()
    for table, role, privilege in granted:
        if (table, privilege, role) not in wanted:
            conn.execute(sql.SQL("REVOKE {} ON {} FROM {}").format(
                sql.SQL(privilege), sql.Identifier(table), sql.Identifier(role)))  # fmt: skip
            changes.append(f"revoked {privilege} on {table} from {role}")
    sequences = conn.execute(
        "SELECT DISTINCT s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_class t ON t.oid = d.refobjid WHERE t.oid = ANY(%s::regclass[])",
        (tables,),
    ).fetchall()
    for (sequence,) in sequences:
        for role in sorted(roles):
            for privilege in ("USAGE", "SELECT", "UPDATE"):
                held = conn.execute("SELECT has_sequence_privilege(%s, %s, %s)", (role, sequence, privilege))
                if (row := held.fetchone()) and row[0]:
                    conn.execute(sql.SQL("REVOKE {} ON SEQUENCE {} FROM {}").format(
                        sql.SQL(privilege), sql.Identifier(sequence), sql.Identifier(role)))  # fmt: skip
                    changes.append(f"revoked {privilege} on sequence {sequence} from {role}")
    return changes

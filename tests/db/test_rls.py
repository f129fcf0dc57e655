"""Row-level security on a Supabase-like database: a user reads only their own swipes and embedding."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from twotower.db import upgrade

SUPABASE_AUTH = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
END $$;
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated;
"""

A = uuid.UUID("00000000-0000-4000-8000-00000000000a")
B = uuid.UUID("00000000-0000-4000-8000-00000000000b")


def _as(conn: psycopg.Connection[Any], role: str, sub: uuid.UUID | None) -> None:
    conn.execute(f"SET ROLE {role}")
    claims = json.dumps({"sub": str(sub), "role": role}) if sub else "{}"
    conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (claims,))


@pytest.fixture
def supabase_db(empty_db_url: str) -> str:
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(SUPABASE_AUTH.encode())
    with psycopg.connect(empty_db_url) as conn:
        result = upgrade(conn)
        assert any("policy" in c for c in result.rls_changes)
        assert not upgrade(conn).changed  # idempotent, policies included
        conn.execute(
            "INSERT INTO videos (id, source, external_id, title) VALUES "
            "('10000000-0000-4000-8000-000000000001', 't', '1', 'one'), "
            "('10000000-0000-4000-8000-000000000002', 't', '2', 'two')"
        )
        conn.execute("INSERT INTO model_versions (version, embedding_dim) VALUES ('v1', 3)")
        for user in (A, B):
            conn.execute(
                "INSERT INTO user_video_decisions (user_id, video_id, decision_type) SELECT %s, id, 'like' FROM videos",
                (user,),
            )
            conn.execute(
                "INSERT INTO user_embeddings (model_version, user_id, embedding) VALUES ('v1', %s, '[1,2,3]')",
                (user,),
            )
        conn.commit()
    return empty_db_url


def test_user_reads_only_own_rows(supabase_db: str) -> None:
    with psycopg.connect(supabase_db) as conn:
        _as(conn, "authenticated", A)
        users = {r[0] for r in conn.execute("SELECT user_id FROM user_video_decisions")}
        assert users == {A}
        assert conn.execute("SELECT count(*) FROM user_video_decisions WHERE user_id = %s", (B,)).fetchone() == (0,)
        assert {r[0] for r in conn.execute("SELECT user_id FROM user_embeddings")} == {A}
        # the catalog is readable
        assert conn.execute("SELECT count(*) FROM videos").fetchone() == (2,)
        # and B's rows cannot be changed either
        cur = conn.execute("UPDATE user_video_decisions SET decision_type = 'nope' WHERE user_id = %s", (B,))
        assert cur.rowcount == 0
        cur = conn.execute("DELETE FROM user_video_decisions WHERE user_id = %s", (B,))
        assert cur.rowcount == 0


def test_user_cannot_write_for_someone_else(supabase_db: str) -> None:
    with psycopg.connect(supabase_db) as conn:
        _as(conn, "authenticated", A)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "UPDATE user_video_decisions SET user_id = %s WHERE user_id = %s",
                (B, A),
            )
        conn.rollback()
        _as(conn, "authenticated", A)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO user_video_decisions (user_id, video_id, decision_type) "
                "VALUES (%s, '10000000-0000-4000-8000-000000000001', 'nope')",
                (uuid.uuid4(),),
            )


def test_anon_and_engine_tables_closed(supabase_db: str) -> None:
    with psycopg.connect(supabase_db) as conn:
        _as(conn, "anon", None)
        assert conn.execute("SELECT count(*) FROM videos").fetchone() == (2,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM user_video_decisions")
        conn.rollback()
        _as(conn, "authenticated", A)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE videos SET title = 'hacked'")
        conn.rollback()
        _as(conn, "authenticated", A)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM model_versions")


def test_no_auth_schema_no_policies(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_policies").fetchone() == (0,)


SUPABASE_DEFAULT_PRIVILEGES = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN BYPASSRLS;
    END IF;
END $$;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""
ALLOWED = {  # (table, role) -> what the policies need; everything else must be refused
    **{(t, r): {"SELECT"} for t in ("videos", "tags", "video_tags", "performers", "video_performers",
                                    "video_embeddings") for r in ("anon", "authenticated")},
    ("user_video_decisions", "authenticated"): {"SELECT", "INSERT", "UPDATE", "DELETE"},
    ("user_embeddings", "authenticated"): {"SELECT"},
}  # fmt: skip
CHECKED = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def test_supabase_default_grants_are_narrowed_to_what_the_policies_need(empty_db_url: str) -> None:
    """Supabase gives every new table ALL to anon and authenticated; RLS does not cover TRUNCATE."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(SUPABASE_AUTH.encode())
        conn.execute(SUPABASE_DEFAULT_PRIVILEGES.encode())
    with psycopg.connect(empty_db_url) as conn:
        result = upgrade(conn)
        assert any(c.startswith("revoked TRUNCATE on videos from anon") for c in result.rls_changes)
        assert not upgrade(conn).changed  # idempotent
        conn.execute("INSERT INTO videos (source, external_id, title) VALUES ('t', '1', 'one')")
        conn.commit()
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]  # fmt: skip
        assert len(tables) >= 15
        leaks = []
        for table in tables:
            for role in ("anon", "authenticated"):
                for privilege in CHECKED:
                    held = conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege))
                    if held.fetchone()[0] and privilege not in ALLOWED.get((table, role), set()):  # type: ignore[index]
                        leaks.append(f"{role} {privilege} {table}")
        sequences = conn.execute("SELECT relname FROM pg_class WHERE relkind = 'S'").fetchall()
        for (sequence,) in sequences:
            for role in ("anon", "authenticated"):
                held = conn.execute("SELECT has_sequence_privilege(%s, %s, 'USAGE')", (role, sequence))
                if held.fetchone()[0]:  # type: ignore[index]
                    leaks.append(f"{role} USAGE {sequence}")
        assert not leaks, leaks
        for role in ("anon", "authenticated"):
            for statement in ("TRUNCATE videos CASCADE", "TRUNCATE user_video_decisions",
                              "DELETE FROM videos", "TRUNCATE model_versions CASCADE"):  # fmt: skip
                _as(conn, role, A)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
                conn.rollback()
        assert conn.execute("SELECT count(*) FROM videos").fetchone() == (1,)


SUPABASE_GLOBAL_DEFAULTS = """
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated;
ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated;
ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO anon, authenticated;
"""


def test_optunas_tables_are_closed_to_anon_and_authenticated(empty_db_url: str, tmp_path: Any) -> None:
    """`twotower tune` keeps its study in the schema ``optuna``: with a Supabase project's default privileges (USAGE
    on every new schema, ALL on every new table), anon could read and truncate it."""
    from twotower.db import Database
    from twotower.settings import Settings
    from twotower.train.tune import _storage

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(SUPABASE_AUTH.encode())
        conn.execute(SUPABASE_GLOBAL_DEFAULTS.encode())
    with psycopg.connect(empty_db_url) as conn:
        upgrade(conn)
        conn.commit()
    with Database(empty_db_url, Settings(data_dir=tmp_path)) as db, _storage(db):
        pass  # the storage as tune opens it: Optuna creates its tables
    with psycopg.connect(empty_db_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'optuna'")]
        assert len(tables) >= 10
        for role in ("anon", "authenticated"):
            assert conn.execute("SELECT has_schema_privilege(%s, 'optuna', 'USAGE')", (role,)).fetchone() == (False,)
            for statement in ("SELECT count(*) FROM optuna.trial_params", "TRUNCATE optuna.trials CASCADE",
                              "INSERT INTO optuna.studies (study_name) VALUES ('x')"):  # fmt: skip
                _as(conn, role, A)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
                conn.rollback()
        conn.execute("RESET ROLE")
        assert not upgrade(conn).changed  # db upgrade finds it closed

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from twotower.db import migrations, status, upgrade
from twotower.errors import MigrationError


def _fingerprint(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Everything an upgrade could change: columns, indexes, constraints, policies, migrations applied."""
    rows: list[tuple[Any, ...]] = []
    rows += conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2"
    ).fetchall()
    rows += conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
    rows += conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint ORDER BY 1, 2").fetchall()
    rows += conn.execute("SELECT tablename, policyname FROM pg_policies ORDER BY 1, 2").fetchall()
    rows += conn.execute("SELECT version, checksum, applied_at FROM twotower_migrations ORDER BY 1").fetchall()
    return rows


def test_upgrade_twice_changes_nothing(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        assert [m.version for m in status(conn).pending] == [m.version for m in migrations.discover()]
        first = upgrade(conn)
        assert [m.version for m in first.applied] == [m.version for m in migrations.discover()]
        before = _fingerprint(conn)
        second = upgrade(conn)
        assert not second.changed
        assert _fingerprint(conn) == before
        st = status(conn)
        assert st.pending == [] and st.current == first.version
        # the schema C1 asks for is all there
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {
        "videos",
        "tags",
        "video_tags",
        "performers",
        "video_performers",
        "user_video_decisions",
        "video_embeddings",
        "user_embeddings",
        "model_versions",
        "model_deployments",
        "jobs",
        "job_chunks",
        "quality_reports",
        "sync_state",
        "twotower_migrations",
    } <= tables


def test_cli_upgrade_twice(empty_db_url: str, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "DATABASE_URL": empty_db_url}
    run = [sys.executable, "-m", "twotower", "db", "upgrade"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_init" in first.stdout
    second = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "nothing changed" in second.stdout
    st = subprocess.run([*run[:-1], "status"], env=env, capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "0 pending" in st.stdout


def test_concurrent_upgrades_serialise(empty_db_url: str) -> None:
    results: list[object] = []

    def worker() -> None:
        try:
            with psycopg.connect(empty_db_url) as conn:
                results.append(upgrade(conn))
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, migrations.UpgradeResult) for r in results), results
    assert sum(len(r.applied) for r in results if isinstance(r, migrations.UpgradeResult)) == len(migrations.discover())


def test_edited_migration_is_refused(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE twotower_migrations SET checksum = 'x' WHERE version = 1")
        conn.commit()
        with pytest.raises(MigrationError, match="changed after it was applied"):
            upgrade(conn)


def test_newer_database_is_refused(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO twotower_migrations (version, name, checksum) VALUES (9999, 'future', 'x')")
        conn.commit()
        with pytest.raises(MigrationError, match="upgrade twotower"):
            upgrade(conn)
        with pytest.raises(MigrationError):
            status(conn)


def test_advisory_lock_names_map_to_stable_distinct_keys(db_url: str) -> None:
    from twotower.db import locks

    names = ["deploy", "switch", "migrate", "prune served", "sync dmm:a", "sync dmm:b", "batch-update:v1"]
    keys = {locks.lock_key(n) for n in names}
    assert len(keys) == len(names) and all(-(2**63) <= k < 2**63 for k in keys)
    assert locks.lock_key("deploy") == locks.lock_key("deploy")
    with psycopg.connect(db_url, autocommit=True) as a, psycopg.connect(db_url, autocommit=True) as b:
        assert locks.try_lock(a, "deploy") and not locks.try_lock(b, "deploy")
        held = locks.holder(b, "deploy")
        assert held is not None and held[0] == a.info.backend_pid
        locks.unlock(a, "deploy")
        assert locks.holder(b, "deploy") is None and locks.try_lock(b, "deploy")

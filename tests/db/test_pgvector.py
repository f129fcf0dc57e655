"""The pgvector check: a role that may not create the extension gets one line saying what to ask for, exit 77."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from twotower.db import upgrade
from twotower.db.pgvector import MINIMUM, check_pgvector, parse_version


@pytest.mark.parametrize(("text", "expected"), [("0.8.0", (0, 8, 0)), ("0.7.4-dev", (0, 7, 4)), ("0.6.2", (0, 6, 2)),
                                                ("1.0", (1, 0)), ("dev", ())])  # fmt: skip
def test_versions_compare_as_numbers(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected
    assert (parse_version(text) >= MINIMUM) == (expected >= (0, 7))


def test_the_embedded_server_has_a_recent_pgvector(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        assert check_pgvector(conn) >= (0, 8)


def test_a_role_that_may_not_create_the_extension_is_told_what_to_ask(empty_db_url: str, tmp_path: Path) -> None:
    role = "tt_no_extension"
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        dbname = conninfo_to_dict(empty_db_url)["dbname"]
        conn.execute(f"REVOKE CREATE ON DATABASE {dbname} FROM PUBLIC")
    url = make_conninfo(empty_db_url, user=role)
    try:
        with psycopg.connect(url) as conn, pytest.raises(Exception, match="CREATE EXTENSION vector"):
            upgrade(conn)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
        env.update(DATABASE_URL=url, TWOTOWER_DATA_DIR=str(tmp_path))
        run = subprocess.run([sys.executable, "-m", "twotower", "db", "upgrade"], capture_output=True, text=True,
                             env=env, timeout=60)  # fmt: skip
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 77 and len(lines) == 1 and "CREATE EXTENSION vector" in lines[0], run.stderr
    finally:
        with psycopg.connect(empty_db_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")

"""A database password never reaches the terminal, whatever shape the URL has (percent signs, unencoded ``@`` or
``/``, a broken IPv6 host, a keyword string with a space): every command says one line without it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from twotower.db.conninfo import redact, scrub

# (URL, the password's distinctive pieces that must never be printed)
URLS = [
    ("postgresql://postgres:pa%zzPw@127.0.0.1:9/postgres", ("pa%zzPw", "zzPw")),
    ("postgresql://postgres:Sec@retPw@127.0.0.1:9/postgres", ("Sec@retPw", "retPw")),
    ("postgresql://postgres:ab/cdPw@127.0.0.1:9/postgres", ("ab/cdPw", "cdPw")),
    ("postgresql://postgres:Se:cr@etPw@[::1/postgres", ("Se:cr@etPw", "etPw")),
    ("host=127.0.0.1 port=9 password=Sec retPw", ("Sec retPw", "retPw")),
    ("host=127.0.0.1 port=9 password='Sq%uoted Pw'", ("Sq%uoted", "uoted Pw")),
    ("postgresql://app:s3cret-pw@127.0.0.1:9/app", ("s3cret-pw",)),
    ("postgresql://app:ok%40Encoded@127.0.0.1:9/app", ("ok@Encoded", "ok%40Encoded", "Encoded")),
]


@pytest.mark.parametrize(("url", "secrets"), URLS)
def test_redact_and_scrub_hide_every_piece(url: str, secrets: tuple[str, ...]) -> None:
    shown = redact(url) + " " + scrub(f"could not connect using {url}", url)
    assert not [s for s in secrets if s in shown], shown


def _env(url: str, tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    return {**env, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": tmp, "TWOTOWER_DB_CONNECT_TIMEOUT": "2",
            "TWOTOWER_JWT_SECRET": "a-secret-of-at-least-thirty-two-characters"}  # fmt: skip


COMMANDS = {
    "db status": (["db", "status"], URLS),
    "db upgrade": (["db", "upgrade"], URLS[:5]),
    "train": (["train", "--db-url", "{url}", "--epochs", "1"], URLS[1:3]),
    # unparseable, or an unencoded @ that libpq would take for the host (a well-formed URL serves: the DB may be down)
    "serve": (["serve", "--port", "9"], [URLS[0], URLS[1], URLS[4]]),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_prints_the_password(command: str, tmp_path: os.PathLike[str]) -> None:
    args, urls = COMMANDS[command]
    for url, secrets in urls:
        argv = [a.replace("{url}", url) for a in args]
        run = subprocess.run([sys.executable, "-m", "twotower", *argv], capture_output=True, text=True, timeout=120,
                             env=_env(url, str(tmp_path)))  # fmt: skip
        shown = run.stdout + run.stderr
        assert run.returncode != 0, (url, shown)
        assert "Traceback" not in shown and shown.strip().startswith("error:"), (url, shown)
        assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1, (url, shown)
        leaked = [s for s in secrets if s in shown]
        assert not leaked, (url, shown)


def test_psycopg_log_lines_never_carry_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """What psycopg's pool logs about a failed connection (\"failed to resolve host 'Zq7xW9kPmV3t@127.0.0.1'\" for
    a password with an unencoded @) goes through the same redaction as the CLI's messages."""
    import logging

    from twotower.db import Database
    from twotower.settings import Settings

    url = "postgresql://postgres:Ab%40Zq7xW9kPmV3t@127.0.0.1:9/postgres"
    Database(url, Settings())
    with caplog.at_level(logging.WARNING):
        logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "twotower",
                                                  "failed to resolve host 'Zq7xW9kPmV3t@127.0.0.1'")  # fmt: skip
        logging.getLogger("psycopg").warning("connection failed: password Ab@Zq7xW9kPmV3t refused")
    shown = "\n".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) == 2 and "error connecting in 'twotower'" in shown
    assert "Zq7xW9kPmV3t" not in shown, shown

"""Shared fixtures: one real embedded Postgres+pgvector server per test session, a fresh database per test."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg.conninfo import make_conninfo

from tests.support.api import Keys
from tests.support.db import (
    DEPLOYED_TEMPLATE,
    DEPLOYED_USERS,
    DEPLOYED_VIDEOS,
    database_copy,
    deploy_template,
    drop_db,
    free_port,
)
from twotower.db import Database, EmbeddedServer, upgrade
from twotower.settings import Settings


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of the session's embedded server (database ``postgres``)."""
    server = EmbeddedServer(tmp_path_factory.mktemp("embedded") / "pg")
    uri = server.start()
    yield uri
    server.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> str:
    """A database with every migration applied, copied for each test (CREATE DATABASE ... TEMPLATE)."""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS tt_template")
        conn.execute("CREATE DATABASE tt_template")
    with psycopg.connect(make_conninfo(pg_server, dbname="tt_template")) as conn:
        upgrade(conn)
    return "tt_template"


@pytest.fixture(scope="session")
def deployed(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A template database with a synthetic catalog, swipes and a deployed version "v" (trained one epoch); its
    artifacts under the returned path (store in ``store/``, fetched copies in ``models/``). Tests use copies."""
    from twotower.synth import SynthConfig

    data = tmp_path_factory.mktemp("deployed")
    config = SynthConfig(videos=DEPLOYED_VIDEOS, users=DEPLOYED_USERS, decisions=8000, seed=4)
    deploy_template(pg_server, template_db, DEPLOYED_TEMPLATE, data, config)
    yield data
    drop_db(pg_server, DEPLOYED_TEMPLATE)


@pytest.fixture
def url(pg_server: str, deployed: Path) -> Iterator[str]:
    """A copy, for this test, of the session's database with a deployed version "v" (the ``deployed`` template);
    a folder or module that needs another database defines its own ``url``."""
    with database_copy(pg_server, DEPLOYED_TEMPLATE) as copy:
        yield copy


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test."""
    with database_copy(pg_server, template_db) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh database with no schema at all."""
    with database_copy(pg_server, None) as url:
        yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path / "state")


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    with Database.open(settings, migrate=False) as database:
        yield database


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the ``twotower`` CLI as a subprocess against this test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=db_url, TWOTOWER_DATA_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    return env


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> CliRunner:
    """Run ``twotower ARGS`` through the CLI's own entry point (``main``: one line on stderr, the exit code) in
    this process: for the refusals that happen before anything connects (no interpreter and torch import per case).
    The state goes under ``tmp_path``; the database URL answers nothing, so a regression fails instead of waiting."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        import signal

        from twotower.cli.app import main
        from twotower.settings import get_settings

        monkeypatch.setenv("TWOTOWER_DATA_DIR", str(tmp_path / "state"))
        monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/never")
        # the training commands tune this process's malloc for training: not the test session's
        monkeypatch.setattr("twotower.train.allocator.reuse_freed_memory", lambda: False)
        get_settings.cache_clear()
        capsys.readouterr()
        sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own
        try:
            with pytest.raises(SystemExit) as exited:
                main(list(args))
        finally:
            get_settings.cache_clear()
            signal.signal(signal.SIGTERM, sigterm)
        captured = capsys.readouterr()
        code = exited.value.code
        return subprocess.CompletedProcess(list(args), code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


JS = Path(__file__).resolve().parents[1] / "js"  # package.json + package-lock.json: onnxruntime-node, pinned


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``node_modules`` with onnxruntime-node: ``npm ci`` of js/ into .venv/js (``make test`` does it first)."""
    import shutil
    import subprocess

    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed: the JavaScript check of the ONNX towers cannot run")
    root = Path(__file__).resolve().parents[1] / ".venv" / "js"
    target = root / "node_modules"
    lock = (JS / "package-lock.json").read_bytes()
    if not (target / "onnxruntime-node" / "package.json").is_file() or (
        not (root / "package-lock.json").is_file() or (root / "package-lock.json").read_bytes() != lock
    ):
        root.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(JS / name, root / name)
        # --ignore-scripts: the CPU binaries ship in the package; the install script only fetches GPU extras
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=root,
                       check=True, capture_output=True, timeout=600)  # fmt: skip
    return target


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's server mode) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def jwks_url(keys: Keys) -> Iterator[str]:
    """A JWKS endpoint, as Supabase Auth publishes one (a real HTTP server)."""
    body = json.dumps(keys.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/auth/v1/.well-known/jwks.json"
    server.shutdown()
    server.server_close()

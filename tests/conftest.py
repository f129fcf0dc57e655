"""Shared fixtures: one real embedded Postgres+pgvector server per test session, a fresh database per test."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from twotower.db import Database, EmbeddedServer, upgrade
from twotower.ingest.movielens import BUNDLED_MOVIELENS
from twotower.settings import Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MOVIELENS = BUNDLED_MOVIELENS  # in the repository: nothing is read from outside it
_counter = itertools.count()


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


def _create_db(pg_server: str, template: str | None) -> str:
    name = f"tt_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        tmpl = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{tmpl}")
    return name


def seed_template(pg_server: str, template: str, name: str, config: object) -> str:
    """A database ``name`` copied from ``template`` and filled by the synthetic generator (tests copy it)."""
    from twotower.synth import SynthConfig, generate

    assert isinstance(config, SynthConfig)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    with psycopg.connect(make_conninfo(pg_server, dbname=name)) as conn, conn.transaction():
        generate(conn, config)
    return name


def deploy_template(pg_server: str, template: str, name: str, data: Path, config: object) -> None:
    """``seed_template``, then train, export and deploy version "v" (artifacts under ``data``: the store in
    ``data/store``, the fetched copies in ``data/models``)."""
    from twotower.export import export_model
    from twotower.pipeline.deploy import DeployOptions, deploy
    from twotower.registry import LocalStore
    from twotower.train.run import TrainOptions, train

    seed_template(pg_server, template, name, config)
    url = make_conninfo(pg_server, dbname=name)
    with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db:
        result = train(db, TrainOptions(epochs=1, batch_size=256, output_dir=data / "trained", refit=False,
                                        version="v"))  # fmt: skip
        export_model(result.directory)
        deploy(db, LocalStore(data / "store"), DeployOptions(model_dir=result.directory, gate=False,
                                                             cache_dir=data / "models"))  # fmt: skip


DEPLOYED_TEMPLATE = "tt_deployed_seed"
DEPLOYED_VIDEOS, DEPLOYED_USERS = 600, 150


@pytest.fixture(scope="session")
def deployed(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A template database with a synthetic catalog, swipes and a deployed version "v" (trained one epoch); its
    artifacts under the returned path (store in ``store/``, fetched copies in ``models/``). Tests use copies."""
    from twotower.synth import SynthConfig

    data = tmp_path_factory.mktemp("deployed")
    config = SynthConfig(videos=DEPLOYED_VIDEOS, users=DEPLOYED_USERS, decisions=8000, seed=4)
    deploy_template(pg_server, template_db, DEPLOYED_TEMPLATE, data, config)
    yield data
    _drop_db(pg_server, DEPLOYED_TEMPLATE)


def _drop_db(pg_server: str, name: str) -> None:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def database_copy(pg_server: str, template: str | None) -> Iterator[str]:
    """URL of a new database copied from ``template`` (empty without one), dropped afterwards."""
    name = _create_db(pg_server, template)
    try:
        yield make_conninfo(pg_server, dbname=name)
    finally:
        _drop_db(pg_server, name)


@contextmanager
def synth_database(pg_server: str, template: str, config: object) -> Iterator[str]:
    """URL of a new migrated database filled by the synthetic generator with ``config``, dropped afterwards."""
    from twotower.synth import SynthConfig, generate

    assert isinstance(config, SynthConfig)
    with database_copy(pg_server, template) as url:
        with psycopg.connect(url) as conn, conn.transaction():
            generate(conn, config)
        yield url


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's server mode) on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()

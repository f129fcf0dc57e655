"""Databases for tests: one embedded server per session (``pg_server`` in tests/conftest.py), a database per test
copied from a template (``CREATE DATABASE ... TEMPLATE``), templates seeded or deployed once."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from twotower.db import Database
from twotower.ingest.movielens import BUNDLED_MOVIELENS
from twotower.settings import Settings

__all__ = [
    "DEPLOYED_TEMPLATE", "DEPLOYED_USERS", "DEPLOYED_VIDEOS", "FIXTURES", "MOVIELENS", "create_db", "database_copy",
    "deploy_template", "drop_db", "free_port", "seed_template", "synth_database",
]  # fmt: skip

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MOVIELENS = BUNDLED_MOVIELENS  # in the repository: nothing is read from outside it
_counter = itertools.count()
DEPLOYED_TEMPLATE = "tt_deployed_seed"
DEPLOYED_VIDEOS, DEPLOYED_USERS = 600, 150


def create_db(pg_server: str, template: str | None) -> str:
    name = f"tt_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        tmpl = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{tmpl}")
    return name


def drop_db(pg_server: str, name: str) -> None:
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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


@contextmanager
def database_copy(pg_server: str, template: str | None) -> Iterator[str]:
    """URL of a new database copied from ``template`` (empty without one), dropped afterwards."""
    name = create_db(pg_server, template)
    try:
        yield make_conninfo(pg_server, dbname=name)
    finally:
        drop_db(pg_server, name)


@contextmanager
def synth_database(pg_server: str, template: str, config: object) -> Iterator[str]:
    """URL of a new migrated database filled by the synthetic generator with ``config``, dropped afterwards."""
    from twotower.synth import SynthConfig, generate

    assert isinstance(config, SynthConfig)
    with database_copy(pg_server, template) as url:
        with psycopg.connect(url) as conn, conn.transaction():
            generate(conn, config)
        yield url


def free_port() -> int:

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

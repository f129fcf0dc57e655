"""A real uvicorn server on 127.0.0.1 over a real database with two deployed versions, and token helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import Served, ServerThread, serve_settings
from tests.support.db import database_copy, drop_db, seed_template
from twotower.db import Database
from twotower.export import export_model
from twotower.pipeline.deploy import DeployOptions, deploy
from twotower.registry import LocalStore
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train

SEEDED = "tt_serve_seed"


@pytest.fixture(scope="package")
def seeded(pg_server: str, template_db: str) -> Iterator[str]:
    config = SynthConfig(videos=1000, users=300, decisions=20_000, seed=11, tastes=6)
    yield seed_template(pg_server, template_db, SEEDED, config)
    drop_db(pg_server, SEEDED)


@pytest.fixture(scope="package")
def deployed(pg_server: str, seeded: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A database where versions "a" then "b" were deployed ("b" active, "a" retired with its generation)."""
    data = tmp_path_factory.mktemp("served")
    with database_copy(pg_server, seeded) as url:
        with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db:
            for version, seed in (("a", 1), ("b", 0)):
                result = train(db, TrainOptions(epochs=3, batch_size=256, output_dir=data / "trained", refit=False,
                                                version=version, seed=seed))  # fmt: skip
                export_model(result.directory)
                options = DeployOptions(model_dir=result.directory, gate=False, cache_dir=data / "models")
                deploy(db, LocalStore(data / "store"), options)
        yield url, data


@pytest.fixture(scope="package")
def served(deployed: tuple[str, Path], jwks_url: str) -> Iterator[Served]:
    url, data = deployed
    settings = serve_settings(url, data, jwks_url)
    with ServerThread(settings) as base:
        yield Served(base, url, settings, data / "store")


@pytest.fixture(scope="package")
def bare(pg_server: str, seeded: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server over a catalog with swipes but no model deployed: the fallbacks answer."""
    data = tmp_path_factory.mktemp("bare")
    with database_copy(pg_server, seeded) as url:
        settings = serve_settings(url, data)
        with ServerThread(settings) as base:
            yield Served(base, url, settings, data / "store")

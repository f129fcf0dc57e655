"""A template database with a catalog, swipes and a deployed version "v" (each test gets its own copy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import _drop_db, database_copy, seed_template
from twotower.db import Database
from twotower.export import export_model
from twotower.registry import LocalStore
from twotower.registry.deploy import DeployOptions, deploy
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train

TEMPLATE = "tt_jobs_seed"
VIDEOS, USERS = 600, 150


@pytest.fixture(scope="module")
def deployed(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A template database with a catalog, swipes and a deployed version "v"; its artifacts under the path."""
    data = tmp_path_factory.mktemp("jobs")
    seed_template(pg_server, template_db, TEMPLATE, SynthConfig(videos=VIDEOS, users=USERS, decisions=8000, seed=4))
    url = make_conninfo(pg_server, dbname=TEMPLATE)
    with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db:
        result = train(db, TrainOptions(epochs=1, batch_size=256, output_dir=data / "trained", refit=False,
                                        version="v"))  # fmt: skip
        export_model(result.directory)
        deploy(db, LocalStore(data / "store"), DeployOptions(model_dir=result.directory, gate=False,
                                                             cache_dir=data / "models"))  # fmt: skip
    yield data
    _drop_db(pg_server, TEMPLATE)


@pytest.fixture
def url(pg_server: str, deployed: Path) -> Iterator[str]:
    with database_copy(pg_server, TEMPLATE) as copy:
        yield copy

"""A database with a deployed version "v", and a second generation "v2" copied from it (ready, not active)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import _drop_db, database_copy, deploy_template
from twotower.synth import SynthConfig

TEMPLATE = "tt_monitor_seed"


@pytest.fixture(scope="module")
def deployed(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("monitor")
    deploy_template(pg_server, template_db, TEMPLATE, data, SynthConfig(videos=800, users=150, decisions=8000, seed=6))
    yield data
    _drop_db(pg_server, TEMPLATE)


@pytest.fixture
def url(pg_server: str, deployed: Path) -> Iterator[str]:
    with database_copy(pg_server, TEMPLATE) as copy, psycopg.connect(copy) as conn:
        conn.execute(
            "INSERT INTO model_versions (version, status, embedding_dim, artifact_uri, manifest, generation_built_at) "
            "SELECT 'v2', 'ready', embedding_dim, artifact_uri, manifest, now() FROM model_versions WHERE version = 'v'"
        )
        conn.execute("INSERT INTO video_embeddings (model_version, video_id, embedding) "
                     "SELECT 'v2', video_id, embedding FROM video_embeddings WHERE model_version = 'v'")  # fmt: skip
        conn.commit()
        yield copy

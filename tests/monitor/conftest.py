"""A database with a deployed version "v", and a second generation "v2" copied from it (ready, not active)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.db import DEPLOYED_TEMPLATE, database_copy


@pytest.fixture
def url(pg_server: str, deployed: Path) -> Iterator[str]:
    with database_copy(pg_server, DEPLOYED_TEMPLATE) as copy, psycopg.connect(copy) as conn:
        conn.execute(
            "INSERT INTO model_versions (version, status, embedding_dim, artifact_uri, manifest, generation_built_at) "
            "SELECT 'v2', 'ready', embedding_dim, artifact_uri, manifest, now() FROM model_versions WHERE version = 'v'"
        )
        conn.execute("INSERT INTO video_embeddings (model_version, video_id, embedding) "
                     "SELECT 'v2', video_id, embedding FROM video_embeddings WHERE model_version = 'v'")  # fmt: skip
        conn.commit()
        yield copy

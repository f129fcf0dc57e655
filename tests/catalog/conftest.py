"""A database with a deployed version "v" (trained on synthetic videos), and a fake DMM API to sync from."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import _drop_db, database_copy, deploy_template
from twotower.catalog.dmm import JST
from twotower.synth import SynthConfig

TEMPLATE = "tt_catalog_seed"
START, END = datetime(2025, 1, 1, tzinfo=JST), datetime(2026, 1, 1, tzinfo=JST)


@pytest.fixture(scope="module")
def deployed(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data = tmp_path_factory.mktemp("catalog")
    deploy_template(pg_server, template_db, TEMPLATE, data, SynthConfig(videos=300, users=80, decisions=3000, seed=5))
    yield data
    _drop_db(pg_server, TEMPLATE)


@pytest.fixture
def url(pg_server: str, deployed: Path) -> Iterator[str]:
    with database_copy(pg_server, TEMPLATE) as copy:
        yield copy


def sync_cli(
    url: str, data: Path, api_url: str, *args: str, rate: float = 50.0, max_offset: int = 50_000,
    **env_vars: str | None,
) -> subprocess.Popen[str]:  # fmt: skip
    """``twotower sync dmm ARGS`` in a subprocess against the fake at ``api_url``."""
    env = {**os.environ, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(data),
           "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_DMM_API_URL": api_url,
           "TWOTOWER_DMM_API_ID": "TEST_API_ID", "TWOTOWER_DMM_AFFILIATE_ID": "test-990",
           "TWOTOWER_DMM_RATE_LIMIT": str(rate), "TWOTOWER_DMM_TIMEOUT": "1",
           "TWOTOWER_DMM_MAX_OFFSET": str(max_offset)}  # fmt: skip
    for key, value in env_vars.items():  # TWOTOWER_X="1" sets, TWOTOWER_X=None removes
        env.pop(key, None)
        if value is not None:
            env[key] = value
    return subprocess.Popen([sys.executable, "-m", "twotower", "sync", "dmm", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

"""Each test gets its own copy of the session's database with a deployed version "v" (see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DEPLOYED_TEMPLATE, DEPLOYED_USERS, DEPLOYED_VIDEOS, database_copy

VIDEOS, USERS = DEPLOYED_VIDEOS, DEPLOYED_USERS


@pytest.fixture
def url(pg_server: str, deployed: Path) -> Iterator[str]:
    with database_copy(pg_server, DEPLOYED_TEMPLATE) as copy:
        yield copy

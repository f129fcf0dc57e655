"""The batch job's tests use ``url`` (tests/conftest.py): a copy of the session's database with a deployed "v"."""

from __future__ import annotations

from tests.support.db import DEPLOYED_USERS, DEPLOYED_VIDEOS

VIDEOS, USERS = DEPLOYED_VIDEOS, DEPLOYED_USERS

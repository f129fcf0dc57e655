"""Databases with a deployed version "v" (trained on synthetic videos) to sync into from the fake DMM API."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from twotower.catalog.dmm import JST

START, END = datetime(2025, 1, 1, tzinfo=JST), datetime(2026, 1, 1, tzinfo=JST)


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

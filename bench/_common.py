"""Shared bench helpers: a throwaway embedded database, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from twotower.db import Database, EmbeddedServer, upgrade
from twotower.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def embedded_database(prefix: str) -> Iterator[Database]:
    """A migrated database on a fresh embedded server in a temp dir, stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = EmbeddedServer(Path(tmp) / "pg")
        uri = server.start()
        try:
            with psycopg.connect(uri) as conn:
                upgrade(conn)
            db = Database(uri, Settings(data_dir=Path(tmp)))
            try:
                yield db
            finally:
                db.close()
        finally:
            server.stop()


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": round(os.getloadavg()[0], 2),
    }


def write(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    report = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path

"""The Supabase Edge Functions (supabase/functions/) served as Supabase serves them (``Deno.serve``) by a real Deno,
beside the Python API, over one real database with two deployed versions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import SECRET, ServerThread, serve_settings
from tests.support.db import database_copy, drop_db, free_port, seed_template
from twotower.db import Database
from twotower.db.conninfo import as_url
from twotower.export import export_model
from twotower.pipeline.deploy import DeployOptions, deploy
from twotower.registry import LocalStore
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "supabase" / "functions"
CONFIG = FUNCTIONS / "deno.json"
SEEDED = "tt_edge_seed"


def deno() -> Path:
    """The Deno of the virtual environment (the ``deno`` wheel of the dev extras: ``make install`` brings it)."""
    found = Path(sys.executable).parent / "deno"
    if not found.is_file():
        found = Path(shutil.which("deno") or "")
    if not found.is_file():
        pytest.fail("deno is not installed: `make install` installs it from the dev extras (pip install deno)")
    return found


def deno_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWOTOWER_", "SUPABASE_", "AWS_"))}
    env.update(NO_COLOR="1", DENO_NO_UPDATE_CHECK="1", **extra)
    return env


@dataclass
class Function:
    """One function served by ``deno run`` on a free port of 127.0.0.1."""

    name: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Function:
        entry = FUNCTIONS / self.name / "index.ts"
        command = [str(deno()), "run", "--quiet", f"--config={CONFIG}", "--allow-env", "--allow-net", "--allow-read",
                   "--allow-write=/tmp", "--allow-sys", str(entry)]  # fmt: skip
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log")
        self.process = subprocess.Popen(command, env=deno_env(PORT=str(self.port), **self.env), cwd=ROOT,
                                        stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 120  # the first run fetches the pinned npm packages
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"deno exited with {self.process.returncode}: {self.log()[-3000:]}")
            try:
                httpx.options(self.url, timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def post(self, body: object = None, *, headers: dict[str, str] | None = None, content: bytes | None = None,
             timeout: float = 30) -> httpx.Response:  # fmt: skip
        if content is None and body is not None:
            return httpx.post(self.url, json=body, headers=headers or {}, timeout=timeout)
        return httpx.post(self.url, content=content, headers=headers or {}, timeout=timeout)

    def log(self) -> str:
        """What the function printed so far (its console.info/warn/error)."""
        return Path(self._log.name).read_text(errors="replace")


@dataclass
class Edge:
    """A deployed database (versions "a" then "b"; "b" active), the Python API over it, the function's settings."""

    db_url: str  # libpq conninfo
    data: Path
    api: str  # the Python API's base URL
    settings: Settings

    def env(self, store: Path | str | None = None, **extra: str) -> dict[str, str]:
        return {"SUPABASE_DB_URL": as_url(self.db_url), "TWOTOWER_JWT_SECRET": SECRET,
                "TWOTOWER_ARTIFACT_STORE": str(store or self.data / "store"), **extra}  # fmt: skip

    def users(self, n: int) -> list[uuid.UUID]:
        import psycopg

        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute(
                "SELECT user_id FROM user_video_decisions GROUP BY user_id ORDER BY user_id LIMIT %s", (n,)
            ).fetchall()
        return [r[0] for r in rows]


@pytest.fixture(scope="package")
def edge_db(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("edge")
    seed_template(pg_server, template_db, SEEDED, SynthConfig(videos=800, users=200, decisions=12_000, seed=21))
    try:
        with database_copy(pg_server, SEEDED) as url:
            with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db:
                for version, seed in (("a", 1), ("b", 0)):
                    result = train(db, TrainOptions(epochs=1, batch_size=256, output_dir=data / "trained",
                                                    refit=False, version=version, seed=seed))  # fmt: skip
                    export_model(result.directory)
                    options = DeployOptions(model_dir=result.directory, gate=False, cache_dir=data / "models")
                    deploy(db, LocalStore(data / "store"), options)
            yield url, data
    finally:
        drop_db(pg_server, SEEDED)


@pytest.fixture(scope="package")
def edge(edge_db: tuple[str, Path], jwks_url: str) -> Iterator[Edge]:
    url, data = edge_db
    settings = serve_settings(url, data, jwks_url)
    with ServerThread(settings) as base:
        yield Edge(url, data, base, settings)


@pytest.fixture(scope="package")
def recommendations(edge: Edge, jwks_url: str) -> Iterator[Function]:
    with Function("two_tower_recommendations", edge.env(TWOTOWER_JWT_JWKS_URL=jwks_url)) as function:
        yield function

"""A real uvicorn server on 127.0.0.1 over a real database with two deployed versions, and token helpers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import _drop_db, database_copy, free_port, seed_template
from twotower.db import Database
from twotower.export import export_model
from twotower.pipeline.deploy import DeployOptions, deploy
from twotower.registry import LocalStore
from twotower.serve import create_app
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train

SECRET = "serve-tests-secret-0123456789abcdef0123"
AUDIENCE = "authenticated"
SEEDED = "tt_serve_seed"


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        return {"keys": [{**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                         {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"}]}  # fmt: skip


@pytest.fixture(scope="package")
def keys() -> Keys:
    return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="package")
def jwks_url(keys: Keys) -> Iterator[str]:
    """A JWKS endpoint, as Supabase Auth publishes one (a real HTTP server)."""
    body = json.dumps(keys.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/auth/v1/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


def token(sub: uuid.UUID | str | None, *, secret: str = SECRET, algorithm: str = "HS256", key: Any = None,
          headers: dict[str, Any] | None = None, **claims: Any) -> str:  # fmt: skip
    payload: dict[str, Any] = {"aud": AUDIENCE, "exp": int(time.time()) + 3600, "role": "authenticated", **claims}
    if sub is not None:
        payload["sub"] = str(sub)
    return jwt.encode(payload, key if key is not None else secret, algorithm=algorithm, headers=headers)


def bearer(sub: uuid.UUID | str | None, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **kwargs)}"}


def service_headers() -> dict[str, str]:
    """Supabase's service-role key: role service_role, no sub, no audience."""
    claims = {"role": "service_role", "iss": "supabase", "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@dataclass
class Served:
    url: str  # the API's base URL
    db_url: str
    settings: Settings
    store: Path


@pytest.fixture(scope="package")
def seeded(pg_server: str, template_db: str) -> Iterator[str]:
    config = SynthConfig(videos=1000, users=300, decisions=20_000, seed=11, tastes=6)
    yield seed_template(pg_server, template_db, SEEDED, config)
    _drop_db(pg_server, SEEDED)


class ServerThread:
    """uvicorn serving ``create_app(settings)`` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, settings: Settings, *, wait_ready: bool = True) -> None:
        self.wait_ready = wait_ready
        self.port = free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port, log_level="error",
                                access_log=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{self.port}"
        if self.wait_ready:  # the model loads in the background: wait until /readyz says it answers
            while httpx.get(f"{base}/readyz", timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready: {httpx.get(f'{base}/readyz').text}")
                time.sleep(0.05)
        return base

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_settings(db_url: str, data_dir: Path, jwks_url: str | None = None, **extra: Any) -> Settings:
    return Settings(
        database_url=db_url, data_dir=data_dir, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_jwks_url=jwks_url,
        # the safety-net poll far beyond any test: a hot swap seen by a test came through LISTEN/NOTIFY
        artifact_store=str(data_dir / "store"), **{"serve_model_poll_seconds": 600.0, "monitor_served_sample": 1.0,
                                                   **extra},
    )  # fmt: skip


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

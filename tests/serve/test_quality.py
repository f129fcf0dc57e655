"""What the API served is logged for the live like-rate; GET /v1/admin/quality reports it with the checks."""

from __future__ import annotations

import time
import uuid

import httpx
import psycopg

from tests.support.api import Served, bearer, service_headers


def test_served_videos_are_logged_and_the_like_rate_is_reported(served: Served) -> None:
    user = uuid.uuid4()
    with psycopg.connect(served.db_url) as conn:  # a user with some history, so the two-tower model answers
        liked = [r[0] for r in conn.execute("SELECT id FROM videos ORDER BY id LIMIT 3").fetchall()]
        for video in liked:
            conn.execute("INSERT INTO user_video_decisions (user_id, video_id, decision_type) VALUES (%s, %s, 'like')",
                         (user, video))  # fmt: skip
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answer = client.post("/v1/recommendations", json={"limit": 10}, headers=bearer(user)).json()
        shown = [r["id"] for r in answer["recommendations"]]
        assert len(shown) == 10
        deadline = time.monotonic() + 10  # the log is written in the background, about once a second
        rows: list[tuple[list[str], str | None, str]] = []
        while time.monotonic() < deadline and not rows:
            time.sleep(0.2)
            with psycopg.connect(served.db_url) as conn:
                rows = conn.execute(
                    "SELECT video_ids::text[], model_version, algorithm FROM served_recommendations WHERE user_id = %s",
                    (user,),
                ).fetchall()
        assert rows == [(shown, answer["model_version"], "two_tower")]  # one row per answer, the videos in order
        for i, video in enumerate(shown[:4]):  # swipes on what was served: 1 like, 3 nopes
            r = client.post("/v1/decisions", json={"video_id": video, "decision_type": "like" if i == 0 else "nope"},
                            headers=bearer(user))  # fmt: skip
            assert r.status_code == 201

        quality = client.get("/v1/admin/quality", headers=service_headers())
        assert quality.status_code == 200, quality.text
        body = quality.json()
        assert body["model_version"] == answer["model_version"]
        assert body["latest"]["passed"] is True  # the deploy checked the generation before promoting it
        live = body["live"]
        assert live["served"] >= 10 and live["decided"] >= 4 and live["liked"] >= 1 and 0 < live["like_rate"] < 1

        assert client.get("/v1/admin/quality", headers=bearer(user)).status_code == 403
        assert client.get("/v1/admin/quality").status_code == 401
        missing = client.get("/v1/admin/quality", params={"model_version": "nope"}, headers=service_headers())
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        for hostile in ("'; DROP TABLE videos; --", "x" * 500):
            r = client.get("/v1/admin/quality", params={"model_version": hostile}, headers=service_headers())
            assert r.status_code == 422 and set(r.json()) == {"error", "message"}
        r = client.get("/v1/admin/quality", params={"history_limit": -1}, headers=service_headers())
        assert r.status_code == 422

"""The serving API over HTTP: real-time recommendations, exactness, auth, hot reload, bad input, the app's client."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import jwt
import psycopg
from cryptography.hazmat.primitives import serialization

from tests.support.api import SECRET, Keys, Served, bearer, service_headers, token
from twotower.registry.versions import rollback


def _videos_by_taste(db_url: str) -> dict[int, list[uuid.UUID]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT (raw->'synthetic'->>'taste')::int, id FROM videos WHERE is_active ORDER BY external_id"
        ).fetchall()
    out: dict[int, list[uuid.UUID]] = {}
    for taste, vid in rows:
        out.setdefault(taste, []).append(vid)
    return out


def _taste_of(db_url: str) -> dict[uuid.UUID, int]:
    return {v: t for t, vs in _videos_by_taste(db_url).items() for v in vs}


def _recommend(client: httpx.Client, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/recommendations", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_supabase_client_invokes_the_edge_function(served: Served) -> None:
    from supabase import ClientOptions, create_client

    user = uuid.uuid4()
    anon_key = jwt.encode({"role": "anon", "iss": "supabase", "exp": int(time.time()) + 3600}, SECRET)
    with httpx.Client(timeout=30) as http:  # our client, so that it gets closed
        client = create_client(served.url, anon_key, options=ClientOptions(httpx_client=http))
        client.functions.set_auth(token(user))
        raw = client.functions.invoke("two_tower_recommendations", invoke_options={"body": {"limit": 7}})
    answer = json.loads(raw)
    assert answer["total_count"] == 7 and len(answer["recommendations"]) == 7
    assert answer["algorithm"] == "popularity"  # a brand-new user
    first = answer["recommendations"][0]
    assert set(first) == {"id", "title", "thumbnail_url", "maker", "price", "performers", "tags", "similarity_score"}


def test_new_user_gets_their_taste_in_real_time(served: Served) -> None:
    tastes = _videos_by_taste(served.db_url)
    taste_of = _taste_of(served.db_url)
    user = uuid.uuid4()
    headers = bearer(user)
    liked = tastes[2][:5]
    noped = tastes[4][:3]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        before = _recommend(client, headers, limit=20)
        assert before["algorithm"] == "popularity"
        for vid, kind in [(v, "like") for v in liked] + [(v, "nope") for v in noped]:
            r = client.post("/v1/decisions", json={"video_id": str(vid), "decision_type": kind}, headers=headers)
            assert r.status_code == 201 and r.json()["decision_type"] == kind
        after = _recommend(client, headers, limit=20)
    assert after["algorithm"] == "two_tower" and after["model_version"] == "b" and after["total_count"] == 20
    ids = [uuid.UUID(v["id"]) for v in after["recommendations"]]
    share = Counter(taste_of[i] for i in ids)[2] / len(ids)
    assert share > 0.5, Counter(taste_of[i] for i in ids)
    assert not set(ids) & set(liked + noped)  # nothing the user already swiped
    scores = [v["similarity_score"] for v in after["recommendations"]]
    assert scores == sorted(scores, reverse=True)


def test_user_who_has_seen_most_of_the_catalog_gets_exactly_limit(served: Served) -> None:
    user = uuid.uuid4()
    with psycopg.connect(served.db_url) as conn, conn.transaction():
        ids = [r[0] for r in conn.execute("SELECT id FROM videos WHERE is_active ORDER BY id").fetchall()]
        seen = ids[: int(len(ids) * 0.9)]
        with conn.cursor().copy("COPY user_video_decisions (user_id, video_id, decision_type) FROM STDIN") as copy:
            for i, vid in enumerate(seen):
                copy.write_row((user, vid, "like" if i % 3 else "nope"))
    unseen = set(ids) - set(seen)
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answer = _recommend(client, bearer(user), limit=50)
        assert answer["algorithm"] == "two_tower" and answer["total_count"] == 50
        got = {uuid.UUID(v["id"]) for v in answer["recommendations"]}
        assert len(got) == 50 and got <= unseen
        everything = _recommend(client, bearer(user), limit=100)  # fewer unseen than asked: all of them
        assert everything["total_count"] == len(unseen) == len(everything["recommendations"])
        filtered = _recommend(client, bearer(user), limit=100, filters={"makers": ["No Such Maker"]})
        assert filtered["total_count"] == 0  # nothing matches: an empty list, not an error


def test_filters_apply(served: Served) -> None:
    user = uuid.uuid4()
    with psycopg.connect(served.db_url) as conn:
        maker = conn.execute(
            "SELECT maker FROM videos WHERE maker IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()[0]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answer = _recommend(client, bearer(user), limit=10, filters={"makers": [maker], "max_price": 2000})
        assert answer["total_count"] > 0
        assert all(v["maker"] == maker and v["price"] <= 2000 for v in answer["recommendations"])
        tags = answer["recommendations"][0]["tags"]
        excluded = _recommend(client, bearer(user), limit=30, filters={"exclude_tags": tags[:1]})
        assert all(tags[0] not in v["tags"] for v in excluded["recommendations"])


def test_auth_rejects_bad_tokens(served: Served, keys: Keys) -> None:
    user = uuid.uuid4()
    public_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unsigned = jwt.encode({"sub": str(user), "aud": "authenticated", "exp": int(time.time()) + 60}, None,
                          algorithm="none")  # fmt: skip
    cases = {
        "no token": {},
        "not bearer": {"Authorization": f"Basic {token(user)}"},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "expired": bearer(user, exp=int(time.time()) - 10),
        "wrong audience": bearer(user, aud="someone-else"),
        "no audience": {
            "Authorization": "Bearer " + jwt.encode({"sub": str(user), "exp": int(time.time()) + 60}, SECRET)
        },
        "alg none": {"Authorization": f"Bearer {unsigned}"},
        "forged signature": bearer(user, secret="another-secret-0123456789abcdef0123456789"),
        # HS256 signed with the RSA public key as the secret: must not verify as RS256 nor HS256
        "hs/rs confusion": {"Authorization": "Bearer " + _hs_with_key(public_pem, user)},
        "unknown kid": bearer(user, algorithm="RS256", key=keys.rsa, headers={"kid": "nope"}),
        "alg/key mismatch": bearer(user, algorithm="ES256", key=keys.ec, headers={"kid": "rsa-1"}),
        "sub not a uuid": bearer("admin"),
    }
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for name, headers in cases.items():
            r = client.post("/v1/recommendations", json={"limit": 3}, headers=headers)
            assert r.status_code == 401, (name, r.status_code, r.text)
            assert r.json()["error"] == "unauthorized" and r.json()["message"], name
        for alg, key, kid in (("RS256", keys.rsa, "rsa-1"), ("ES256", keys.ec, "ec-1")):
            r = client.post("/v1/recommendations", json={"limit": 3},
                            headers=bearer(user, algorithm=alg, key=key, headers={"kid": kid}))  # fmt: skip
            assert r.status_code == 200, (alg, r.text)


def _hs_with_key(pem: bytes, user: uuid.UUID) -> str:
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps({"sub": str(user), "aud": "authenticated", "exp": int(time.time()) + 60}).encode())
    signature = b64(hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


def test_users_only_see_their_own_data_and_admin_needs_the_service_role(served: Served) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    video = _videos_by_taste(served.db_url)[1][0]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        # the user id comes from the token only: a body naming someone else is refused outright
        r = client.post("/v1/decisions", json={"video_id": str(video), "decision_type": "like", "user_id": str(b)},
                        headers=bearer(a))  # fmt: skip
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        assert client.post("/v1/decisions", json={"video_id": str(video), "decision_type": "like"},
                           headers=bearer(a)).status_code == 201  # fmt: skip
        emb_a = client.post("/v1/embeddings/user", headers=bearer(a)).json()
        emb_b = client.post("/v1/embeddings/user", headers=bearer(b)).json()
        assert emb_a["embedding"] != emb_b["embedding"] and emb_a["dimension"] == 64
        for path, method in (("/v1/admin/models", "GET"), ("/v1/admin/reload", "POST")):
            assert client.request(method, path, headers=bearer(a)).status_code == 403
            assert client.request(method, path).status_code == 401
            assert client.request(method, path, headers=service_headers()).status_code == 200
        items = {"videos": [{"title": "x", "tags": ["Amber Palace"], "maker": "Orbit Pictures", "price": 1200}]}
        assert client.post("/v1/embeddings/items", json=items, headers=bearer(a)).status_code == 403
        r = client.post("/v1/embeddings/items", json=items, headers=service_headers())
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 64
    with psycopg.connect(served.db_url) as conn:
        owners = conn.execute("SELECT user_id FROM user_video_decisions WHERE user_id IN (%s, %s)", (a, b)).fetchall()
        stored = conn.execute("SELECT user_id FROM user_embeddings WHERE user_id IN (%s, %s) ORDER BY 1", (a, b))
        assert owners == [(a,)] and len(stored.fetchall()) == 2


def test_bad_input_gets_4xx_with_error_and_message(served: Served) -> None:
    user = uuid.uuid4()
    headers = bearer(user)
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/v1/recommendations", {"limit": 101}, 422),
        ("POST", "/v1/recommendations", {"limit": 0}, 422),
        ("POST", "/v1/recommendations", {"limit": "ten"}, 422),
        ("POST", "/v1/recommendations", {"filters": {"max_price": -1}}, 422),
        ("POST", "/v1/recommendations", {"filters": {"makers": ["x"] * 1000}}, 422),
        ("POST", "/v1/recommendations", {"unexpected": 1}, 422),
        ("POST", "/v1/recommendations", [1, 2], 422),
        ("POST", "/v1/decisions", {"video_id": str(uuid.uuid4()), "decision_type": "like"}, 404),
        ("POST", "/v1/decisions", {"video_id": "not-a-uuid", "decision_type": "like"}, 422),
        ("POST", "/v1/decisions", {"video_id": str(uuid.uuid4()), "decision_type": "love"}, 422),
        ("GET", f"/v1/videos/{uuid.uuid4()}/similar", None, 404),
        ("GET", "/v1/videos/nope/similar", None, 422),
        ("GET", "/v1/nowhere", None, 404),
        ("DELETE", "/v1/recommendations", None, 405),
    ]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for method, path, body, status in cases:
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == status, (method, path, body, r.status_code, r.text)
            assert set(r.json()) == {"error", "message"}, r.text
        malformed = client.post("/v1/recommendations", content=b'{"limit": 5', headers={**headers,
                                "Content-Type": "application/json"})  # fmt: skip
        assert malformed.status_code == 400 and malformed.json()["error"] == "malformed_json"
        huge = client.post("/v1/recommendations", content=b"[" + b"1," * 600_000 + b"1]",
                           headers={**headers, "Content-Type": "application/json"})  # fmt: skip
        assert huge.status_code == 413 and huge.json()["error"] == "payload_too_large"
        chunked = client.post("/v1/recommendations", content=(b"1," * 1000 for _ in range(1000)),
                              headers={**headers, "Content-Type": "application/json"})  # fmt: skip
        assert chunked.status_code == 413 and chunked.json()["error"] == "payload_too_large"
        odd_dates = {"videos": [{"title": "x", "product_released_at": d} for d in
                                ("0001-01-01T00:00:00", "9999-12-31T23:59:59", "2020-01-01T00:00:00Z")]}  # fmt: skip
        r = client.post("/v1/embeddings/items", json=odd_dates, headers=service_headers())
        assert r.status_code == 200 and len(r.json()["embeddings"]) == 3
        too_many = {"videos": [{"title": "x"}] * 1001}
        assert client.post("/v1/embeddings/items", json=too_many, headers=service_headers()).status_code == 422


def test_json_types_are_not_coerced_and_bad_bodies_are_malformed_json(served: Served) -> None:
    headers = bearer(uuid.uuid4())
    lax = [  # each was answered 200 when pydantic coerced it
        ("/v1/recommendations", {"limit": True}, headers),
        ("/v1/recommendations", {"limit": 5.5}, headers),
        ("/v1/recommendations", {"exclude_liked": 0}, headers),
        ("/v1/recommendations", {"limit": "5"}, headers),
        ("/v1/recommendations", {"filters": {"released_after": 0}}, headers),
        ("/v1/recommendations", {"filters": {"max_price": True}}, headers),
        ("/v1/recommendations", {"filters": {"include_tags": [" "]}}, headers),
        ("/functions/v1/two_tower_recommendations", {"exclude_liked": 0}, headers),
        ("/functions/v1/two_tower_recommendations", {"limit": True}, headers),
        ("/v1/embeddings/items", {"videos": [{"title": "x", "review_average": False}]}, service_headers()),
        ("/v1/embeddings/items", {"videos": [{"title": "x", "duration_seconds": "60"}]}, service_headers()),
    ]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for path, body, who in lax:
            r = client.post(path, json=body, headers=who)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", (path, body, r.text)
        fine = client.post("/v1/recommendations", json={"limit": 3, "filters": {"max_price": 2000,
                           "released_after": "2020-01-01T00:00:00Z"}}, headers=headers)  # fmt: skip
        assert fine.status_code == 200, fine.text
        for query in ("20.0", "2e1", "-1", "x"):
            r = client.get(f"/v1/videos/{uuid.uuid4()}/similar?limit={query}", headers=headers)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", (query, r.text)
        json_headers = {**headers, "Content-Type": "application/json"}
        for body in (b'{"limit": "\xff\xfe"}', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000):
            r = client.post("/v1/recommendations", content=body, headers=json_headers)
            assert r.status_code in (400, 413) and r.json()["error"] in ("malformed_json", "payload_too_large"), r.text
        deep = client.post("/v1/recommendations", content=b"[" * 50_000 + b"]" * 50_000, headers=json_headers)
        assert deep.status_code == 400 and deep.json()["error"] == "malformed_json", deep.text
        big = client.post("/v1/recommendations", json={}, headers={"Authorization": "Bearer " + "x" * 100_000})
        assert big.status_code == 431 and big.json()["error"] == "headers_too_large", big.text
        schema = client.get("/openapi.json").json()
        responses = schema["paths"]["/v1/recommendations"]["post"]["responses"]
        assert {"200", "400", "401", "413", "422", "431", "503"} <= set(responses)


def test_similar_videos(served: Served) -> None:
    tastes = _videos_by_taste(served.db_url)
    taste_of = _taste_of(served.db_url)
    video = tastes[3][0]
    with httpx.Client(base_url=served.url, timeout=30) as client:
        r = client.get(f"/v1/videos/{video}/similar", params={"limit": 10}, headers=bearer(uuid.uuid4()))
    assert r.status_code == 200, r.text
    ids = [uuid.UUID(v["id"]) for v in r.json()["recommendations"]]
    assert len(ids) == 10 and video not in ids
    assert Counter(taste_of[i] for i in ids)[3] > 5


def test_promote_under_load_fails_no_request(served: Served) -> None:
    users = [uuid.uuid4() for _ in range(6)]
    tastes = _videos_by_taste(served.db_url)
    with psycopg.connect(served.db_url) as conn, conn.transaction():
        for i, user in enumerate(users):
            for vid in tastes[i % 6][:4]:
                conn.execute("INSERT INTO user_video_decisions (user_id, video_id, decision_type) VALUES "
                             "(%s, %s, 'like')", (user, vid))  # fmt: skip
    stop = threading.Event()
    seen: list[tuple[float, str | None]] = []
    failures: list[str] = []

    def hammer(user: uuid.UUID) -> None:
        with httpx.Client(base_url=served.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    r = client.post("/v1/recommendations", json={"limit": 10}, headers=bearer(user))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200 or r.json()["total_count"] != 10:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen.append((time.monotonic(), r.json()["model_version"]))

    threads = [threading.Thread(target=hammer, args=(u,)) for u in users]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        with psycopg.connect(served.db_url) as conn:
            switched_at = time.monotonic()
            assert rollback(conn, "a") == ("a", "b")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(v == "a" and t > switched_at for t, v in seen[-5:]):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        with psycopg.connect(served.db_url) as conn:
            rollback(conn, "b")
    assert not failures, failures[:5]
    assert len(seen) > 50
    assert {v for _, v in seen} == {"a", "b"}
    assert seen[-1][1] == "a"


def test_operations_routes(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["model_version"] in ("a", "b")
        _recommend(client, bearer(uuid.uuid4()), limit=2)
        metrics = client.get("/metrics").text
        assert 'twotower_http_requests_total{method="POST",route="/v1/recommendations",status="200"}' in metrics
        assert "twotower_recommendations_total" in metrics
        schema = client.get("/openapi.json").json()
        assert "/functions/v1/two_tower_recommendations" in schema["paths"]
        assert client.get("/docs").status_code == 200


def test_fallbacks_without_a_model(bare: Served) -> None:
    tastes = _videos_by_taste(bare.db_url)
    taste_of = _taste_of(bare.db_url)
    cold, warm = uuid.uuid4(), uuid.uuid4()
    with httpx.Client(base_url=bare.url, timeout=30) as client:
        assert client.get("/readyz").json()["algorithm"] == "fallback"
        first = _recommend(client, bearer(cold), limit=20)
        second = _recommend(client, bearer(cold), limit=20)
        assert first["algorithm"] == "popularity" and first["model_version"] is None and first["total_count"] == 20
        assert [v["id"] for v in first["recommendations"]] != [v["id"] for v in second["recommendations"]]  # explores
        for vid in tastes[5][:5]:
            client.post("/v1/decisions", json={"video_id": str(vid), "decision_type": "like"}, headers=bearer(warm))
        linear = _recommend(client, bearer(warm), limit=20)
        assert linear["algorithm"] == "linear" and linear["total_count"] == 20
        ids = [uuid.UUID(v["id"]) for v in linear["recommendations"]]
        assert Counter(taste_of[i] for i in ids)[5] > 10 and not set(ids) & set(tastes[5][:5])
        r = client.post("/v1/embeddings/user", headers=bearer(warm))
        assert r.status_code == 503 and r.json()["error"] == "model_unavailable" and r.headers["Retry-After"]

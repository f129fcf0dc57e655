"""The Edge Functions against the Python API over the same database: the same answers, errors and fallbacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import jwt
import numpy as np
import psycopg
import pytest

from tests.edge.conftest import Edge, Function
from tests.support.api import SECRET, Keys, bearer, service_headers
from twotower.registry import LocalStore, S3Store
from twotower.registry.versions import rollback

EDGE_ROUTE = "/functions/v1/two_tower_recommendations"


def _python(edge: Edge, user: uuid.UUID, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{edge.api}{EDGE_ROUTE}", json=body, headers=bearer(user), timeout=30)


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [v["id"] for v in response.json()["recommendations"]]


def test_fifty_users_get_the_python_apis_answers_in_the_same_order(edge: Edge, recommendations: Function) -> None:
    users = edge.users(50)
    assert len(users) == 50
    same, algorithms = 0, []
    for user in users:
        expected = _python(edge, user, {"limit": 20})
        got = recommendations.post({"limit": 20}, headers=bearer(user))
        algorithms.append(got.json()["algorithm"])
        assert got.json()["model_version"] == expected.json()["model_version"] == "b"
        assert _ids(got) == _ids(expected), f"user {user}"
        scores = [v["similarity_score"] for v in got.json()["recommendations"]]
        assert scores == pytest.approx([v["similarity_score"] for v in expected.json()["recommendations"]], abs=1e-5)
        same += 1
    assert same == 50
    assert algorithms == ["two_tower"] * 50  # no fallback did the work


@pytest.mark.parametrize("runtime", ["ts", "web"])
def test_user_vectors_match_python_within_1e_5(edge: Edge, runtime: str) -> None:
    """The stored and returned vector, from either ONNX runtime of the function (TWOTOWER_EDGE_ONNX)."""
    with Function("user_embedding", edge.env(TWOTOWER_EDGE_ONNX=runtime)) as function:
        for user in edge.users(10):
            expected = httpx.post(f"{edge.api}/v1/embeddings/user", headers=bearer(user), timeout=30).json()
            got = function.post(content=b"", headers=bearer(user)).json()
            assert got["model_version"] == expected["model_version"] == "b"
            assert got["dimension"] == expected["dimension"] == len(got["embedding"])
            np.testing.assert_allclose(got["embedding"], expected["embedding"], atol=1e-5)
        assert f"(ONNX runtime: {runtime})" in function.log()


def test_filters_exclusion_and_exact_limit(edge: Edge, recommendations: Function) -> None:
    user = edge.users(3)[2]
    with psycopg.connect(edge.db_url) as conn:
        tag = conn.execute("SELECT name FROM tags ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
        maker = conn.execute("SELECT maker FROM videos WHERE maker IS NOT NULL LIMIT 1").fetchone()[0]  # type: ignore[index]
        decided = conn.execute("SELECT video_id, decision_type FROM user_video_decisions WHERE user_id = %s", (user,))
        swipes = [(str(video), kind) for video, kind in decided]
    seen = {video for video, _ in swipes}
    liked = {video for video, kind in swipes if kind == "like"}
    bodies: list[dict[str, object]] = [
        {"limit": 100},
        {"limit": 37, "exclude_liked": False},
        {"limit": 15, "filters": {"include_tags": [tag]}},
        {"limit": 15, "filters": {"exclude_tags": [tag], "max_price": 2000}},
        {"limit": 10, "filters": {"makers": [maker], "released_after": "2015-01-01T00:00:00Z"}},
        {"limit": 5, "filters": {"include_tags": ["'; DROP TABLE videos; --"]}},
    ]
    for body in bodies:
        expected, got = _python(edge, user, body), recommendations.post(body, headers=bearer(user))
        assert _ids(got) == _ids(expected), body
        ids = set(_ids(got))
        assert not ids & (seen if body.get("exclude_liked", True) else seen - liked)
    assert len(_ids(recommendations.post({"limit": 100}, headers=bearer(user)))) == 100
    newcomer = uuid.uuid4()  # no decisions: popular videos, as from the Python API
    for body in ({"limit": 20}, {"limit": 7, "filters": {"include_tags": [tag]}}):
        got, expected = recommendations.post(body, headers=bearer(newcomer)), _python(edge, newcomer, body)
        assert got.json()["algorithm"] == expected.json()["algorithm"] == "popularity"
        assert len(_ids(got)) == len(_ids(expected)) == body["limit"]


def _error(response: httpx.Response) -> tuple[int, str]:
    assert set(response.json()) == {"error", "message"}, response.text
    return response.status_code, response.json()["error"]


def test_auth_matrix_answers_as_the_python_api(edge: Edge, recommendations: Function, keys: Keys) -> None:
    user = str(edge.users(1)[0])
    hour = int(time.time()) + 3600
    claims = {"sub": user, "aud": "authenticated", "exp": hour}
    cases = {
        "none": {},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer"},
        "garbage": {"Authorization": "Bearer not.a.jwt"},
        "wrong secret": bearer(user, secret="another-secret-0123456789abcdef0123456"),
        "expired": bearer(user, exp=int(time.time()) - 10),
        "not yet valid": bearer(user, nbf=hour),
        "no exp": {"Authorization": "Bearer " + jwt.encode({"sub": user, "aud": "authenticated"}, SECRET)},
        "other audience": bearer(user, aud="somebody-else"),
        "no audience": {"Authorization": "Bearer " + jwt.encode({"sub": user, "exp": hour}, SECRET)},
        "sub not a uuid": bearer("alice"),
        "no sub": bearer(None),
        "alg none": {"Authorization": "Bearer " + jwt.encode(claims, None, algorithm="none")},
        "HS512": bearer(user, algorithm="HS512", secret="s" * 64),
        "service role": service_headers(),
        "RS256 from JWKS": bearer(user, algorithm="RS256", key=keys.rsa, headers={"kid": "rsa-1"}),
        "ES256 from JWKS": bearer(user, algorithm="ES256", key=keys.ec, headers={"kid": "ec-1"}),
        "unknown kid": bearer(user, algorithm="RS256", key=keys.rsa, headers={"kid": "nope"}),
        "ES256 claiming the RSA key": bearer(user, algorithm="ES256", key=keys.ec, headers={"kid": "rsa-1"}),
    }
    for name, headers in cases.items():
        expected = httpx.post(f"{edge.api}{EDGE_ROUTE}", json={"limit": 3}, headers=headers, timeout=30)
        got = recommendations.post({"limit": 3}, headers=headers)
        if expected.status_code == 200:
            assert got.status_code == 200 and _ids(got) == _ids(expected), name
            continue
        assert _error(got) == _error(expected), f"{name}: {got.text} vs {expected.text}"
        if got.status_code == 401:
            assert got.headers.get("www-authenticate") == "Bearer"


def test_malformed_oversized_and_hostile_bodies_are_4xx_json(edge: Edge, recommendations: Function) -> None:
    headers = {**bearer(edge.users(1)[0]), "Content-Type": "application/json"}
    raw: list[bytes] = [b"{", b"not json", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b"", b"null", b"[]", b"7",
                        b'{"limit": 0}', b'{"limit": 101}', b'{"limit": "5"}', b'{"limit": true}', b'{"limit": 5.5}',
                        b'{"limit": null}', b'{"exclude_liked": "yes"}', b'{"exclude_liked": 1}',
                        b'{"filters": []}', b'{"filters": {"evil": 1}}', b'{"filters": {"max_price": -1}}',
                        b'{"filters": {"include_tags": ["\\u0000"]}}', b'{"filters": {"include_tags": ["  "]}}',
                        b'{"filters": {"makers": ["x"]}}',
                        b'{"filters": {"released_after": 20200101}}', b'{"filters": {"released_after": "yesterday"}}',
                        b'{"filters": {"include_tags": [' + b'"t",' * 100 + b'"t"]}}',
                        b'{"limit": 3, "unknown": {"deep": [1, 2, 3]}}']  # fmt: skip
    for content in raw:
        expected = httpx.post(f"{edge.api}{EDGE_ROUTE}", content=content, headers=headers, timeout=30)
        got = recommendations.post(content=content, headers=headers)
        if expected.status_code == 200:
            assert got.status_code == 200, (content[:60], got.text)
            continue
        assert 400 <= got.status_code < 500, (content[:60], got.text)
        assert got.status_code == expected.status_code, (content[:60], got.text, expected.text)
        assert _error(got)[0] == got.status_code
    big = b'{"limit": 3, "pad": "' + b"x" * (2 << 20) + b'"}'
    assert _error(recommendations.post(content=big, headers=headers)) == (413, "payload_too_large")
    assert _error(httpx.get(recommendations.url, headers=headers)) == (405, "method_not_allowed")
    huge_header = {**headers, "X-Pad": "y" * (20 << 10)}
    assert _error(recommendations.post({"limit": 3}, headers=huge_header)) == (431, "headers_too_large")


def test_a_promote_and_a_rollback_are_picked_up_without_a_failed_request(edge: Edge, recommendations: Function) -> None:
    user = edge.users(1)[0]
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            response = recommendations.post({"limit": 5}, headers=bearer(user))
            if response.status_code != 200:
                failures.append(response.text)
            else:
                versions.append(response.json()["model_version"])

    def switch_to(version: str) -> float:
        with psycopg.connect(edge.db_url, autocommit=True) as conn:
            rollback(conn, version, actor="test")
        started = time.monotonic()
        while time.monotonic() - started < 30:
            if recommendations.post({"limit": 5}, headers=bearer(user)).json()["model_version"] == version:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"version {version} was not picked up within 30 s")

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        assert switch_to("a") < 30  # a rollback
        expected = _python(edge, user, {"limit": 20})
        deadline = time.monotonic() + 15  # the Python server picks it up through NOTIFY
        while expected.json()["model_version"] != "a" and time.monotonic() < deadline:
            time.sleep(0.1)
            expected = _python(edge, user, {"limit": 20})
        assert _ids(recommendations.post({"limit": 20}, headers=bearer(user))) == _ids(expected)
        assert switch_to("b") < 30  # and the newer version promoted again
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert {"a", "b"} <= set(versions)


def test_a_corrupt_artifact_answers_from_a_fallback_and_says_so(edge: Edge, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(edge.data / "store", store)
    tower = store / "b" / "user_tower.onnx"
    data = bytearray(tower.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tower.write_bytes(bytes(data))
    user = edge.users(1)[0]
    with Function("two_tower_recommendations", edge.env(store)) as function:
        for _ in range(3):
            got = function.post({"limit": 8}, headers=bearer(user))
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["algorithm"] == "linear" and body["model_version"] is None
            assert "checksum mismatch" in body["fallback_reason"]
            assert got.headers["x-twotower-fallback"] == "1"
            assert body["total_count"] == len(body["recommendations"]) == 8


def test_the_towers_come_from_an_s3_compatible_store(edge: Edge, s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # fmt: skip
    client.create_bucket(Bucket="edge-models")
    source = LocalStore(edge.data / "store")
    s3 = S3Store("edge-models", "twotower", client=client)
    for version in ("a", "b"):
        s3.put(version, source.get(version, tmp_path / version))
    env = edge.env("s3://edge-models/twotower", TWOTOWER_S3_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", TWOTOWER_S3_REGION="us-east-1")  # fmt: skip
    user = edge.users(5)[4]
    with Function("two_tower_recommendations", env) as function:
        got = function.post({"limit": 20}, headers=bearer(user))
        assert got.json()["algorithm"] == "two_tower", got.text
        assert _ids(got) == _ids(_python(edge, user, {"limit": 20}))


def test_item_embeddings_match_python_and_need_the_service_role(edge: Edge) -> None:
    videos = [
        {"title": "新作", "tags": ["tag-1", "unknown tag"], "performers": ["p-1"], "maker": "m-1", "price": 1980,
         "duration_seconds": 7200, "product_released_at": "2024-05-01T10:00:00.123456+09:00", "review_count": 12,
         "review_average": 4.5},
        {"title": "bare"},
    ]  # fmt: skip
    with psycopg.connect(edge.db_url) as conn:
        known = conn.execute("SELECT id FROM videos ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
    videos.append({"id": str(known), "title": "known id", "tags": ["tag-2"]})
    with Function("item_embedding", edge.env()) as function:
        expected = httpx.post(f"{edge.api}/v1/embeddings/items", json={"videos": videos}, headers=service_headers(),
                              timeout=30).json()  # fmt: skip
        got = function.post({"videos": videos}, headers=service_headers())
        assert got.status_code == 200, got.text
        assert got.json()["model_version"] == expected["model_version"]
        np.testing.assert_allclose(got.json()["embeddings"], expected["embeddings"], atol=1e-5)
        user = edge.users(1)[0]
        assert _error(function.post({"videos": videos}, headers=bearer(user))) == (403, "forbidden")
        for bad in ({"videos": []}, {"videos": [{"title": "x", "evil": 1}]}, {"videos": [{"price": -1}]}, []):
            expected_bad = httpx.post(f"{edge.api}/v1/embeddings/items", json=bad, headers=service_headers())
            assert _error(function.post(bad, headers=service_headers())) == _error(expected_bad), bad


def test_a_rollback_while_the_promoted_version_loads_keeps_the_rolled_back_one(edge: Edge) -> None:
    """The holder swaps in only the version the database says is active: a load that a rollback overtook is dropped
    (it used to be installed when it finished, and answered as the retired version)."""
    from tests.edge.conftest import CONFIG, FUNCTIONS, deno, deno_env

    command = [str(deno()), "run", "--quiet", f"--config={CONFIG}", "--allow-read", "--allow-env",
               str(FUNCTIONS / "tests" / "holder_cli.ts"), str(edge.data / "store")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=deno_env(), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])  # after the load's log line
    models = {s["step"]: s["model"] for s in result["seen"]}
    assert models == {"a active": "a", "b promoted": "a", "rolled back to a": "a", "later": "a", "none active": None}
    assert result["loads"] == 1  # a alone: b's finished load was not installed

"""An experiment as the Edge Functions run it, beside the Python API over the same database: the same arm and model
for every user, what they served logged with its experiment and arm, everyone back on the active version once it
stops."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import psycopg

from tests.edge.conftest import FUNCTIONS, Edge, Function
from tests.support.api import bearer
from twotower.db.locks import lock_key
from twotower.registry import experiments as exp

EDGE_ROUTE = "/functions/v1/two_tower_recommendations"


def _python(edge: Edge, user: uuid.UUID) -> dict[str, Any]:
    response = httpx.post(f"{edge.api}{EDGE_ROUTE}", json={"limit": 10}, headers=bearer(user), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _edge(function: Function, user: uuid.UUID) -> dict[str, Any]:
    response = function.post({"limit": 10}, headers=bearer(user))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _rows(conn: psycopg.Connection[Any], users: list[uuid.UUID], experiment: int | None) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT user_id, video_ids::text[], model_version, algorithm, experiment_id, arm FROM served_recommendations "
        "WHERE user_id = ANY(%s) AND experiment_id IS NOT DISTINCT FROM %s ORDER BY served_at",
        (users, experiment),
    ).fetchall()


def test_the_functions_follow_an_experiment_and_log_what_they_serve(edge: Edge, recommendations: Function) -> None:
    users = edge.users(40)
    compared, edge_only = users[:30], users[30:]
    with psycopg.connect(edge.db_url, autocommit=True) as conn:
        active = conn.execute("SELECT version FROM model_versions WHERE status = 'active'").fetchone()[0]  # type: ignore[index]
        candidate = "a" if active == "b" else "b"  # the retired one, with its generation
        started = exp.start(conn, candidate, 0.5, actor="edge test")
        try:
            probe = next(u for u in compared if exp.assign(started.hash_key, u, 0.5))
            # the candidate loads in the background on both sides (NOTIFY for Python, the next request here)
            _until(lambda: _python(edge, probe)["experiment_arm"] == "candidate", "Python did not load the candidate")
            _until(lambda: _edge(recommendations, probe)["experiment_arm"] == "candidate", "the edge did not")
            arms = set()
            for user in compared:
                expected, got = _python(edge, user), _edge(recommendations, user)
                arm = "candidate" if exp.assign(started.hash_key, user, 0.5) else "control"
                assert got["experiment_arm"] == expected["experiment_arm"] == arm, user
                version = candidate if arm == "candidate" else active
                assert got["model_version"] == expected["model_version"] == version
                assert [v["id"] for v in got["recommendations"]] == [v["id"] for v in expected["recommendations"]]
                arms.add(arm)
            assert arms == {"control", "candidate"}

            served = {user: _edge(recommendations, user) for user in edge_only}  # the edge alone answers these
            _until(lambda: len(_rows(conn, edge_only, started.id)) == len(edge_only), "the edge's rows", timeout=10)
            for user_id, video_ids, version, algorithm, experiment_id, arm in _rows(conn, edge_only, started.id):
                answer = served[user_id]
                assert experiment_id == started.id and arm == answer["experiment_arm"] is not None
                assert (version, algorithm) == (answer["model_version"], answer["algorithm"])
                assert [str(v) for v in video_ids] == [v["id"] for v in answer["recommendations"]]
        finally:
            if (running := exp.current(conn)) is not None and running.id == started.id:
                exp.stop(conn, reason="edge test")
        # stopped: everyone from the active version at the next request, outside any experiment
        for user in users[:10]:
            got = _edge(recommendations, user)
            assert (got["model_version"], got["experiment_arm"]) == (active, None), user
        # outside an experiment the log keeps the monitor's sample (10% of the users by id): one in, one out
        sampled = uuid.UUID(int=(uuid.uuid4().int // 10_000) * 10_000 + 999)
        unsampled = uuid.UUID(int=(uuid.uuid4().int // 10_000) * 10_000 + 1000)
        for user in (unsampled, sampled):  # in this order: once the second is written, so would be the first
            assert _edge(recommendations, user)["experiment_arm"] is None
        _until(lambda: len(_rows(conn, [sampled], None)) == 1, "the sampled user's answer was not written", timeout=10)
        assert _rows(conn, [unsampled], None) == []


def test_the_functions_prune_under_the_python_servers_lock() -> None:
    """served.ts PRUNE_LOCK is locks.lock_key("prune served"): one pruner at a time among every process."""
    source = (FUNCTIONS / "_shared" / "served.ts").read_text()
    found = re.search(r'PRUNE_LOCK = "(-?\d+)"', source)
    assert found is not None and int(found.group(1)) == lock_key("prune served")

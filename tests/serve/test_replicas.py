"""Read replicas: a real streaming standby of an embedded Postgres (``pg_basebackup`` and the same binaries), its
replay held back by ``recovery_min_apply_delay``, behind a real server (``TWOTOWER_READ_DATABASE_URL``).

Each test checks which database answered (the ``twotower_reads`` counter) and that the replica really lagged
when it answered: a swipe must change the very next answer although the replica does not have it yet.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support.api import ServerThread, bearer, serve_settings
from tests.support.db import deploy_template
from twotower.db import Database, EmbeddedServer, upgrade
from twotower.db.standby import EmbeddedStandby
from twotower.pipeline.deploy import DeployOptions, deploy
from twotower.registry import LocalStore
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train

DELAY_MS = 1000  # the standby applies each transaction this long after the primary committed it
APP = "app"
LIMIT = 10


@dataclass
class Replicated:
    primary: str  # the app database on the primary
    standby: EmbeddedStandby
    data: Path

    @property
    def replica(self) -> str:
        return self.standby.url(APP)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    """A primary with a deployed version "v" and a standby of it, lagging by DELAY_MS."""
    root = tmp_path_factory.mktemp("replicas")
    server = EmbeddedServer(root / "pg")
    uri = server.start()
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("CREATE DATABASE tt_template")
        with psycopg.connect(make_conninfo(uri, dbname="tt_template")) as conn:
            upgrade(conn)
        config = SynthConfig(videos=600, users=150, decisions=8000, seed=4)
        deploy_template(uri, "tt_template", APP, root / "data", config)
        standby = EmbeddedStandby(server, root / "standby", apply_delay_ms=DELAY_MS)
        standby.start()
        try:
            yield Replicated(make_conninfo(uri, dbname=APP), standby, root / "data")
        finally:
            standby.remove()
    finally:
        server.stop()


def _settings(replicated: Replicated, **extra: Any) -> Settings:
    return serve_settings(replicated.primary, replicated.data, read_database_url=replicated.replica,
                          read_check_seconds=0.2, **extra)  # fmt: skip


def _reads(base: str) -> Counter[tuple[str, str]]:
    """The server's ``twotower_reads`` counter: (database, reason) -> count."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = r'twotower_reads_total\{database="([^"]+)",reason="([^"]+)"\} ([0-9.e+]+)'
    return Counter({(db, reason): int(float(n)) for db, reason, n in re.findall(pattern, text)})


def _replica_state(base: str) -> dict[str, Any]:
    replicas = httpx.get(f"{base}/readyz", timeout=10).json()["replicas"]
    assert [r["name"] for r in replicas] == ["replica-1"]
    return dict(replicas[0])


def _caught_up(base: str) -> None:
    """Wait until the server uses the replica and the replica has replayed everything (the model's rows too)."""
    _wait(lambda: (s := _replica_state(base))["usable"] and s["lag_bytes"] == 0, "the replica to catch up")


def _wait(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _users(primary: str, n: int) -> list[uuid.UUID]:
    """Users with history who have seen the fewest videos (some of the synthetic ones have seen all 600)."""
    with psycopg.connect(primary) as conn:
        rows = conn.execute("SELECT user_id FROM user_video_decisions GROUP BY 1 HAVING count(*) >= 5 "
                            "ORDER BY count(*), 1 LIMIT %s", (n,)).fetchall()  # fmt: skip
    return [r[0] for r in rows]


def _recommend(client: httpx.Client, user: uuid.UUID) -> dict[str, Any]:
    r = client.post("/v1/recommendations", json={"limit": LIMIT}, headers=bearer(user))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["algorithm"] == "two_tower" and len(body["recommendations"]) == LIMIT, body
    return body


def _on_standby(replicated: Replicated, user: uuid.UUID, video: str) -> bool:
    with psycopg.connect(replicated.replica, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM user_video_decisions WHERE user_id = %s AND video_id = %s",
                           (user, video)).fetchone()  # fmt: skip
    return row is not None


def _swipes_change_the_next_answer(replicated: Replicated, base: str, rounds: int) -> int:
    """``rounds`` times: a user swipes the first video of their answer, and their very next answer must not hold
    it and must come from a changed user vector. Returns how often the replica lacked the swipe at that moment."""
    lacking = 0
    rng = random.Random(5)
    users = _users(replicated.primary, 20)
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(rounds):
            user = users[i % len(users)]
            before = _recommend(client, user)
            video = before["recommendations"][0]["id"]
            kind = rng.choice(["like", "nope"])
            r = client.post("/v1/decisions", json={"video_id": video, "decision_type": kind}, headers=bearer(user))
            assert r.status_code == 201, r.text
            after = _recommend(client, user)
            assert video not in {v["id"] for v in after["recommendations"]}, f"round {i}: the swiped video came back"
            scores = {v["id"]: v["similarity_score"] for v in before["recommendations"]}
            common = [(scores[v["id"]], v["similarity_score"]) for v in after["recommendations"] if v["id"] in scores]
            assert any(abs(a - b) > 1e-6 for a, b in common) or not common, f"round {i}: the user vector did not move"
            lacking += not _on_standby(replicated, user, video)
    return lacking


def test_a_swipe_changes_the_next_answer_from_a_lagging_replica(replicated: Replicated) -> None:
    """read_your_writes=primary: 100 times a swipe and at once a recommendation, answered by the replica while it
    does not have the swipe yet."""
    with ServerThread(_settings(replicated)) as base:
        _caught_up(base)
        state = _replica_state(base)
        assert state["state"] == "ok" and state["lag_seconds"] is not None
        start = _reads(base)
        lacking = _swipes_change_the_next_answer(replicated, base, 100)
        reads = _reads(base) - start
    assert reads[("replica-1", "ok")] == 200, reads  # every recommendation was answered by the replica
    assert sum(n for (db, _), n in reads.items() if db == "primary") == 0, reads
    assert lacking >= 90, f"the replica had the swipe already in {100 - lacking} of 100 rounds: it did not lag"


def test_wait_mode_reads_the_replica_once_it_has_the_swipe(replicated: Replicated) -> None:
    """read_your_writes=wait: with a bound longer than the delay, the replica answers after replaying the swipe;
    with a shorter one, the primary answers. Right either way."""
    with ServerThread(_settings(replicated, read_your_writes="wait", read_wait_ms=3000)) as base:
        _caught_up(base)
        start = _reads(base)
        started = time.monotonic()
        _swipes_change_the_next_answer(replicated, base, 3)
        waited = time.monotonic() - started
        reads = _reads(base) - start
    assert reads[("replica-1", "ok")] == 6, reads
    assert waited >= 3 * DELAY_MS / 1000, "each answer after a swipe waited for the replica to replay it"
    with ServerThread(_settings(replicated, read_your_writes="wait", read_wait_ms=50)) as base:
        _caught_up(base)
        start = _reads(base)
        _swipes_change_the_next_answer(replicated, base, 5)
        reads = _reads(base) - start
    assert reads[("primary", "replica_behind")] >= 5, reads  # at least each answer right after a swipe


def test_replica_stopped_mid_traffic_gives_no_errors(replicated: Replicated) -> None:
    """Four clients swipe and ask; the standby is killed (no shutdown) mid-traffic, then started again: every
    request succeeds with a full answer, the primary answers while the replica is down, and the replica again
    once it is back."""
    users = _users(replicated.primary, 40)
    failures: list[str] = []
    stop = threading.Event()
    answered = Counter[str]()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=10) as c:
            while not stop.is_set():
                user = rng.choice(users)
                r = c.post("/v1/recommendations", json={"limit": LIMIT}, headers=bearer(user))
                if r.status_code != 200 or len(r.json()["recommendations"]) != LIMIT:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                answered[r.json()["algorithm"]] += 1
                video = r.json()["recommendations"][-1]["id"]
                d = c.post("/v1/decisions", json={"video_id": video, "decision_type": "nope"}, headers=bearer(user))
                if d.status_code != 201:
                    failures.append(f"decision {d.status_code} {d.text[:200]}")

    with ServerThread(_settings(replicated)) as base:
        _caught_up(base)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.5)
            before = _reads(base)
            replicated.standby.stop("immediate")
            _wait(lambda: _replica_state(base)["state"] == "down", "the replica to be seen down")
            time.sleep(1.0)
            down = _reads(base)
            replicated.standby.start()
            _wait(lambda: _replica_state(base)["usable"], "the replica to be usable again")
            back = _reads(base)
            _wait(lambda: (_reads(base) - back)[("replica-1", "ok")] >= 20, "the replica to answer again")
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert failures == [], failures[:5]
    assert before[("replica-1", "ok")] > 0, before
    while_down = down - before
    assert sum(n for (db, _), n in while_down.items() if db == "primary") > 0, while_down
    assert set(answered) == {"two_tower"}, answered


def test_a_version_promoted_on_the_primary_is_served_once_the_replica_has_it(replicated: Replicated) -> None:
    """The standby's replay is paused; a new version is deployed on the primary. Every server answers with it at
    once, from the primary (the replica is within its lag bound but lacks the version's embeddings); once replay
    resumes, the replica answers with it."""
    data = replicated.data
    with ServerThread(_settings(replicated, read_max_lag_seconds=120)) as base:
        _caught_up(base)
        with psycopg.connect(replicated.replica, autocommit=True) as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            try:
                with Database.open(Settings(database_url=replicated.primary, data_dir=data), migrate=False) as db:
                    result = train(db, TrainOptions(epochs=1, batch_size=256, output_dir=data / "trained-w",
                                                    refit=False, version="w", seed=3))  # fmt: skip
                    from twotower.export import export_model

                    export_model(result.directory)
                    deploy(db, LocalStore(data / "store"), DeployOptions(model_dir=result.directory, gate=False,
                                                                         cache_dir=data / "models"))  # fmt: skip
                _wait(lambda: httpx.get(f"{base}/readyz", timeout=10).json().get("model_version") == "w",
                      "the server to load w")  # fmt: skip
                start = _reads(base)
                with httpx.Client(base_url=base, timeout=10) as client:
                    for user in _users(replicated.primary, 20):
                        assert _recommend(client, user)["model_version"] == "w"
                paused = _reads(base) - start
                state = _replica_state(base)
                assert state["state"] == "ok" and state["lag_bytes"] > 0, state  # lagging, within the bound
            finally:
                standby.execute("SELECT pg_wal_replay_resume()")
        _wait(lambda: _replica_state(base)["lag_bytes"] == 0, "the replica to replay the deploy")
        start = _reads(base)
        with httpx.Client(base_url=base, timeout=10) as client:
            for user in _users(replicated.primary, 20):
                assert _recommend(client, user)["model_version"] == "w"
        resumed = _reads(base) - start
    assert paused == Counter({("primary", "replica_unusable"): 20}), paused
    assert resumed == Counter({("replica-1", "ok"): 20}), resumed


def test_a_replica_behind_at_start_is_not_used_until_its_lag_is_known(replicated: Replicated) -> None:
    """A process that starts while the replica is behind knows only the primary's position now: the replica's lag
    is unknown (it may be hours), so it takes no reads until it has replayed a position this process saw written."""
    from twotower.db.replicas import ReadReplicas

    settings = _settings(replicated, read_max_lag_seconds=120)
    with psycopg.connect(replicated.replica, autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            with psycopg.connect(replicated.primary, autocommit=True) as primary:
                primary.execute("UPDATE videos SET updated_at = updated_at WHERE id = (SELECT id FROM videos LIMIT 1)")
            _wait(lambda: _standby_received(standby), "the standby to receive the write")
            with Database(replicated.primary, settings) as db:
                replicas = ReadReplicas(db, settings, {})
                try:
                    replicas.look()
                    [state] = replicas.status()
                    assert state["state"] == "lagging" and state["lag_seconds"] is None and not state["usable"]
                    assert replicas.pick() is None
                finally:
                    replicas.stop()
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def _standby_received(standby: psycopg.Connection[Any]) -> bool:
    row = standby.execute("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()").fetchone()
    return bool(row and row[0])

"""The closed loop: synthetic users ask the real API for feeds, swipe every served video by their planted taste, and
post each swipe through ``/v1/decisions``; what they liked, by swipe index, per arm and cohort.

Each user signs in with their own JWT (the server's secret, as Supabase Auth would sign it). *New* users start
with no history; *existing* users first post ``history`` swipes of videos they met elsewhere (synth's draw), then
are measured the same way. Users run concurrently (``concurrency`` at a time), each one's feeds and swipes in
order, as one phone would.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from twotower.errors import InputError, UpstreamError
from twotower.monitor.stats import arm_stats
from twotower.simulate.oracle import Oracle
from twotower.synth.swipes import Users

__all__ = ["SimulationConfig", "Swipe", "simulate", "summarise"]


@dataclass(frozen=True)
class SimulationConfig:
    users: int = 100  # new users
    existing: int = 0  # existing users (with a history posted first)
    swipes: int = 30  # measured swipes per user
    history: int = 20  # swipes an existing user brings
    feed: int = 10  # videos per feed request
    seed: int = 0
    concurrency: int = 8
    bucket: int = 10  # swipe-index buckets: 1-10, 11-20, ...
    namespace: uuid.UUID | None = None  # user i is uuid5(namespace, str(i)); None: a new namespace every run

    def user_id(self, namespace: uuid.UUID, user: int) -> uuid.UUID:
        return uuid.uuid5(namespace, str(user))

    def validate(self) -> None:
        checks = {"--users": (self.users, 0), "--existing-users": (self.existing, 0), "--swipes": (self.swipes, 1),
                  "--history": (self.history, 1), "--feed": (self.feed, 1), "--concurrency": (self.concurrency, 1),
                  "--seed": (self.seed, 0)}  # fmt: skip
        for flag, (value, low) in checks.items():
            if value < low:
                raise InputError(f"{flag} must be at least {low}, got {value}")
        if self.users + self.existing == 0:
            raise InputError("nothing to simulate: give --users or --existing-users")
        if self.feed > 100:
            raise InputError(f"--feed must be at most 100 (the API's limit), got {self.feed}")


@dataclass(frozen=True)
class Swipe:
    user: int
    cohort: str  # new | existing
    arm: str  # control | candidate | none (no experiment)
    algorithm: str
    index: int  # 1-based swipe number of the measured session
    liked: bool
    cold: bool  # the video had no swipe before the simulation


@dataclass
class _Tally:
    swipes: list[Swipe] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _post(client: httpx.Client, path: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise UpstreamError(f"the API at {client.base_url} did not answer {path}: {exc}") from None
    if response.status_code >= 400:
        raise UpstreamError(f"{path} answered {response.status_code}: {response.text[:300]}")
    out: dict[str, Any] = response.json()
    return out


def _session(
    client: httpx.Client, oracle: Oracle, people: Users, config: SimulationConfig, user: int, cohort: str,
    token: str, tally: _Tally,
) -> None:  # fmt: skip
    rng = np.random.default_rng([config.seed, user])
    if cohort == "existing":
        seen = oracle.history(rng, people, user, config.history)
        for video, p in zip(seen, oracle.p_like(people, user, seen), strict=True):
            kind = "like" if rng.random() < p else "nope"
            _post(client, "/v1/decisions", token, {"video_id": str(video), "decision_type": kind})
    done: list[Swipe] = []
    while len(done) < config.swipes:
        feed = _post(client, "/v1/recommendations", token, {"limit": config.feed})
        videos = [uuid.UUID(v["id"]) for v in feed["recommendations"]]
        if not videos:
            break  # the user has seen the whole catalog
        arm = feed.get("experiment_arm") or "none"
        for video, p in zip(videos, oracle.p_like(people, user, videos), strict=True):
            liked = bool(rng.random() < p)
            _post(
                client, "/v1/decisions", token, {"video_id": str(video), "decision_type": "like" if liked else "nope"}
            )
            index = oracle.index.get(video, -1)
            done.append(Swipe(user, cohort, arm, str(feed["algorithm"]), len(done) + 1, liked,
                              bool(index >= 0 and oracle.cold[index])))  # fmt: skip
            if len(done) >= config.swipes:
                break
    with tally.lock:
        tally.swipes.extend(done)


def simulate(
    api: str, oracle: Oracle, config: SimulationConfig, sign: Callable[[uuid.UUID], str],
    on_user: Callable[[], None] | None = None,
) -> list[Swipe]:  # fmt: skip
    """Run every user's session against ``api``; ``sign(user_id)`` gives the user's access token."""
    config.validate()
    total = config.users + config.existing
    people = oracle.users(np.random.default_rng(config.seed), total)
    namespace = config.namespace or uuid.uuid4()  # new users are new in every run (their tastes follow the seed)
    tally = _Tally()
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    with httpx.Client(base_url=api, timeout=30, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=config.concurrency) as pool:  # fmt: skip

        def one(user: int) -> None:
            cohort = "new" if user < config.users else "existing"
            token = sign(config.user_id(namespace, user))
            _session(client, oracle, people, config, user, cohort, token, tally)
            if on_user:
                on_user()

        for future in [pool.submit(one, u) for u in range(total)]:
            future.result()  # the first failure stops the run, with its message
    return tally.swipes


def summarise(swipes: list[Swipe], bucket: int = 10) -> dict[str, Any]:
    """Per arm and cohort: like-rate by swipe-index bucket (with a 95% interval clustered by user), the share of
    cold videos among exposures, the algorithms that answered."""
    out: dict[str, Any] = {}
    for arm in sorted({s.arm for s in swipes}):
        mine = [s for s in swipes if s.arm == arm]
        row: dict[str, Any] = {"swipes": len(mine), "users": len({s.user for s in mine}),
                               "cold_exposure": sum(s.cold for s in mine) / len(mine) if mine else None,
                               "algorithms": {a: sum(s.algorithm == a for s in mine)
                                              for a in sorted({s.algorithm for s in mine})}}  # fmt: skip
        for cohort in ("new", "existing"):
            group = [s for s in mine if s.cohort == cohort]
            if not group:
                continue
            buckets = []
            for start in range(1, max(s.index for s in group) + 1, bucket):
                part = [s for s in group if start <= s.index < start + bucket]
                per_user: dict[int, list[int]] = {}
                for s in part:
                    counts = per_user.setdefault(s.user, [0, 0])
                    counts[0] += 1
                    counts[1] += s.liked
                n = np.array(list(per_user.values()), dtype=np.float64).reshape(-1, 2)
                stats = arm_stats(n[:, 0], n[:, 0], n[:, 1])
                half = None if stats.like_rate_se is None else 1.96 * stats.like_rate_se
                buckets.append({"swipes": f"{start}-{start + bucket - 1}", "n": len(part), "users": len(per_user),
                                "like_rate": stats.like_rate, "ci95": half})  # fmt: skip
            row[cohort] = buckets
        out[arm] = row
    return out

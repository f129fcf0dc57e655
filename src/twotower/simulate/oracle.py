"""The simulator's planted truth: the catalog's tastes (written by ``twotower synth`` into each video's ``raw``), and
users drawn from synth's own taste model, who like a video with synth's like probability."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from twotower.errors import InputError
from twotower.synth.swipes import Users, like_probability, make_users

__all__ = ["Oracle"]

_CATALOG = """
SELECT v.id, (v.raw -> 'synthetic' ->> 'taste')::int AS taste, coalesce(v.maker, '') AS maker,
       coalesce(d.n, 0) AS decisions
FROM videos v
LEFT JOIN (SELECT video_id, count(*) AS n FROM user_video_decisions GROUP BY video_id) d ON d.video_id = v.id
WHERE v.is_active AND v.raw -> 'synthetic' ? 'taste'
ORDER BY v.id
"""


@dataclass
class Oracle:
    ids: list[uuid.UUID]
    index: dict[uuid.UUID, int]
    taste: npt.NDArray[np.int64]  # [videos]
    maker: npt.NDArray[np.int64]  # [videos] an index per distinct maker
    popularity: npt.NDArray[np.float64]  # [videos] decisions so far + 1, normalised: what a user meets elsewhere
    cold: npt.NDArray[np.bool_]  # [videos] no decision before the simulation
    tastes: int

    @classmethod
    def load(cls, conn: psycopg.Connection[Any]) -> Oracle:
        rows = conn.execute(_CATALOG).fetchall()
        if not rows:
            raise InputError("the catalog has no videos from `twotower synth` (their planted tastes are the "
                             "simulated users' truth): run `twotower synth` first")  # fmt: skip
        ids = [r[0] for r in rows]
        makers = {name: i for i, name in enumerate(sorted({r[2] for r in rows}))}
        counts = np.array([r[3] for r in rows], dtype=np.float64)
        taste = np.array([r[1] for r in rows], dtype=np.int64)
        maker = np.array([makers[r[2]] for r in rows], dtype=np.int64)
        return cls(ids, {v: i for i, v in enumerate(ids)}, taste, maker, (counts + 1) / (counts + 1).sum(), counts == 0,
                   int(taste.max()) + 1)  # fmt: skip

    def users(self, rng: np.random.Generator, n: int) -> Users:
        return make_users(rng, self.taste, self.tastes, int(self.maker.max()) + 1, n)

    def p_like(self, users: Users, user: int, videos: list[uuid.UUID]) -> npt.NDArray[np.float64]:
        """Like probabilities of one user for ``videos`` (a video outside the synthetic catalog: 0)."""
        idx = np.array([self.index.get(v, -1) for v in videos], dtype=np.int64)
        known = idx >= 0
        safe = np.where(known, idx, 0)
        p = like_probability(users, np.full(idx.shape[0], user, dtype=np.int64), self.taste[safe], self.maker[safe])
        return np.where(known, p, 0.0)

    def history(self, rng: np.random.Generator, users: Users, user: int, count: int) -> list[uuid.UUID]:
        """``count`` distinct videos the user met before (synth's draw: their tastes by popularity, else anything
        by popularity)."""
        share = np.where(self.taste == users.taste[user, 0], users.primary[user], 0.0)
        share += np.where(self.taste == users.taste[user, 1], 1.0 - users.primary[user], 0.0)
        within = self.popularity**0.8
        weight = users.focus[user] * share * within / max(float((share * within).sum()), 1e-12)
        weight += (1.0 - users.focus[user]) * self.popularity
        keys = np.log(np.maximum(weight, 1e-300)) - np.log(-np.log(rng.random(weight.shape[0])))
        top = np.argpartition(-keys, min(count, weight.shape[0]) - 1)[:count]
        return [self.ids[i] for i in top[np.argsort(-keys[top])]]

"""evaluate() at the spec's scale: 10,000 users x 100,000 videos in tens of seconds."""

from __future__ import annotations

import time
import uuid

import numpy as np
import numpy.typing as npt
import pytest

from twotower.evaluation import evaluate
from twotower.evaluation.split import Split, temporal_split
from twotower.features.decisions import DecisionLog


class RandomScorer:
    name = "random"

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def fit(self, split: Split) -> None:
        pass

    def score(self, users: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        return np.random.default_rng(int(users[0])).random((len(users), self.n_items), dtype=np.float32)


@pytest.mark.slow
def test_ten_thousand_users_by_a_hundred_thousand_videos() -> None:
    users, items, likes = 10_000, 100_000, 50
    rng = np.random.default_rng(0)
    user = np.repeat(np.arange(users, dtype=np.int32), likes)
    log = DecisionLog(
        user_ids=[uuid.UUID(int=u) for u in range(users)],
        user=user,
        item=rng.integers(0, items, size=user.size, dtype=np.int32),
        like=np.ones(user.size, dtype=bool),
        ts=np.tile(np.arange(likes, dtype=np.float64), users),
    )
    started = time.perf_counter()
    result = evaluate(RandomScorer(items), temporal_split(log))
    seconds = time.perf_counter() - started
    assert result.users["all"] == users
    assert result.auc_method.startswith("sampled")
    assert result.metrics["all"]["auc"] == pytest.approx(0.5, abs=0.01)  # random scores
    assert result.metrics["all"]["recall@20"] == pytest.approx(20 / items, rel=0.5)
    assert seconds < 90, f"evaluate took {seconds:.1f}s"

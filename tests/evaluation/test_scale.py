"""evaluate() at the spec's scale: 10,000 users x 100,000 videos in tens of seconds."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from twotower.evaluation import evaluate
from twotower.evaluation.scorers import RandomScorer
from twotower.evaluation.split import temporal_split
from twotower.features.decisions import DecisionLog


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
    split = temporal_split(log)
    scorer = RandomScorer(items)
    scorer.fit(split)
    started = time.perf_counter()
    result = evaluate(scorer, split)
    seconds = time.perf_counter() - started
    assert result.users["all"] == users
    assert result.auc_method.startswith("sampled")
    assert result.metrics["all"]["auc"] == pytest.approx(0.5, abs=0.01)  # random scores
    assert result.metrics["all"]["recall@20"] == pytest.approx(20 / items, rel=0.5)
    assert seconds < 90, f"evaluate took {seconds:.1f}s"

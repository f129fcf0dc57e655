"""One linear model: the baseline the deploy gate and ``evaluate`` measure is the fallback the API serves.

The API scores it two ways — in memory (``serve/linear.py``, while no model is loaded) and in SQL (before that
index exists) — and both must give the scores of ``served_linear`` up to a per-user constant, on the same
videos, for users with fewer and with more likes than the profile reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from tests.support.db import synth_database
from twotower.evaluation import served_linear
from twotower.evaluation.split import Split
from twotower.features.catalog import load_catalog
from twotower.features.decisions import load_decision_log
from twotower.serve.linear import TagIndex
from twotower.serve.recommend import _LINEAR_CANDIDATES
from twotower.synth import SynthConfig

K = 60


@pytest.fixture(scope="module")
def conn(pg_server: str, template_db: str) -> Iterator[psycopg.Connection]:
    config = SynthConfig(videos=800, users=120, decisions=16_000, seed=5, tastes=4)
    with synth_database(pg_server, template_db, config) as url, psycopg.connect(url) as c:
        yield c


def test_the_served_fallback_is_the_gated_linear_model(conn: psycopg.Connection) -> None:
    catalog = load_catalog(conn)
    log = load_decision_log(conn, catalog.ids)
    everything = np.ones(len(log), dtype=bool)
    split = Split(log=log, train=everything, test=~everything, valid=~everything, after_valid=~everything)
    scorer = served_linear(catalog.tags)
    scorer.fit(split)
    index = TagIndex()
    index.refresh(conn)
    row_of = {video: i for i, video in enumerate(catalog.ids)}
    likes = np.bincount(log.user[log.like], minlength=log.n_users)
    users = np.flatnonzero(likes > 0)
    assert (likes[users] > 50).any() and (likes[users] <= 50).any()  # both sides of the 50-like profile
    for u in users[:40]:
        ours = scorer.score(np.array([u]))[0]
        best = np.sort(ours)[::-1][:K]
        user = log.user_ids[u]
        in_memory = index.candidates(conn, user, K)
        in_sql = [(video, float(score)) for video, score in conn.execute(_LINEAR_CANDIDATES, {"user": user, "k": K})]
        for served in (in_memory, in_sql):
            _same_model(served, ours, best, row_of)


def _same_model(
    served: list[tuple[uuid.UUID, float]], ours: np.ndarray, best: np.ndarray, row_of: dict[uuid.UUID, int]
) -> None:
    scores = np.array([s for _, s in served])
    mine = ours[[row_of[v] for v, _ in served]]
    scale = scores[0] / mine[0]
    assert np.allclose(scores, mine * scale, rtol=1e-5), "a different scoring function"
    # the same videos: the served top K are our top K (the ranking may differ only among equal scores)
    assert np.allclose(np.sort(mine)[::-1], best[: len(mine)], rtol=1e-5)

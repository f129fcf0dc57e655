"""The baselines and the ranking primitive they are measured with."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from tests.evaluation.helpers import make_split
from twotower.errors import InputError, TwoTowerError
from twotower.evaluation import EASEScorer, LinearScorer, PopularityScorer, Scorer, evaluate, tag_matrix, top_k


@pytest.mark.parametrize("n", [7, 500, 30_000])
def test_top_k_breaks_ties_by_lower_index(n: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 4, size=(25, n)).astype(np.float32)  # ties everywhere
    scores[3] = 0.0
    scores[4, : n // 2] = -np.inf
    expected = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)
    assert np.array_equal(top_k(scores, 20), expected[:, :20])
    assert np.array_equal(top_k(scores, 2 * n), expected)  # K beyond the catalog: everything, in order


def test_top_k_large_catalog_with_distinct_scores() -> None:
    scores = np.random.default_rng(1).random((40, 50_000), dtype=np.float32)
    assert np.array_equal(top_k(scores, 30), np.argsort(-scores, axis=1, kind="stable")[:, :30])


def test_popularity_counts_training_likes_only() -> None:
    # user 0: likes 0 and 1, nope on 2; user 1: likes 1; test likes (never counted): 2, 2
    split = make_split(2, {0: [0, 1], 1: [1]}, {0: [2], 1: [2]}, nopes={0: [2]})
    scorer = PopularityScorer(n_items=4)
    scorer.fit(split)
    assert isinstance(scorer, Scorer)
    assert scorer.score(np.array([1, 0])).tolist() == [[1, 2, 0, 0], [1, 2, 0, 0]]


def test_linear_is_cosine_to_the_mean_of_liked_features() -> None:
    features = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32)
    split = make_split(2, {0: [0, 1]}, {0: [2], 1: [3]})
    dense, sparse = LinearScorer(features), LinearScorer(sp.csr_matrix(features))
    for scorer in (dense, sparse):
        scorer.fit(split)
    expected = [1 / np.sqrt(2), 1 / np.sqrt(2), 1.0, 0.0]  # user vector (0.5, 0.5, 0)
    np.testing.assert_allclose(dense.score(np.array([0]))[0], expected, rtol=1e-6)
    np.testing.assert_allclose(sparse.score(np.array([0]))[0], expected, rtol=1e-6)
    # a user with no training likes: every video scores 0
    assert dense.score(np.array([1])).tolist() == [[0, 0, 0, 0]]
    assert dense.score(np.array([0])).dtype == np.float32


def _ease_reference(x: npt.NDArray[np.float64], lam: float) -> npt.NDArray[np.float64]:
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b: npt.NDArray[np.float64] = np.eye(x.shape[1]) - p / np.diag(p)
    return np.asarray(x @ b, dtype=np.float64)


def test_ease_matches_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    likes = {u: sorted(rng.choice(8, size=3, replace=False).tolist()) for u in range(12)}
    split = make_split(12, likes, {})
    x = np.zeros((12, 10))  # videos 8 and 9 have no likes
    for u, items in likes.items():
        x[u, items] = 1
    scorer = EASEScorer(n_items=10, lam=2.0)
    scorer.fit(split)
    got = scorer.score(np.arange(12))
    expected = _ease_reference(x[:, :8], 2.0)
    np.testing.assert_allclose(got[:, :8], expected, rtol=1e-4, atol=1e-6)
    assert (got[:, 8:] == 0).all()


def test_ease_finds_co_liked_videos() -> None:
    # videos 0 and 1 are always liked together, as are 2 and 3; user 9 has liked only 0 and 2 so far
    likes = {u: [0, 1] if u % 2 else [2, 3] for u in range(8)}
    likes[8] = [0, 1, 2, 3]
    split = make_split(10, {**likes, 9: [0]}, {9: [1]})
    ease = EASEScorer(n_items=4, lam=1.0)
    ease.fit(split)
    assert evaluate(ease, split, ks=(1,)).metrics["all"]["recall@1"] == 1


def test_ease_refuses_large_catalogs() -> None:
    with pytest.raises(InputError, match=r"20,001 videos, at most 20,000"):
        EASEScorer(n_items=20_001)
    EASEScorer(n_items=50, max_items=50)
    with pytest.raises(InputError, match="lam must be > 0"):
        EASEScorer(n_items=5, lam=0)


def test_scoring_before_fit_says_so() -> None:
    with pytest.raises(TwoTowerError, match=r"call fit\(split\) before score"):
        PopularityScorer(n_items=3).score(np.array([0]))


def test_scorers_check_the_inputs() -> None:
    split = make_split(1, {0: [5]}, {})
    with pytest.raises(InputError, match="item index 5, catalog has 3 items"):
        PopularityScorer(n_items=3).fit(split)
    with pytest.raises(InputError, match="NaN"):
        LinearScorer(np.array([[np.nan, 1.0]]))
    scorer = PopularityScorer(n_items=6)
    scorer.fit(split)
    with pytest.raises(InputError, match=r"user indices in \[0, 1\)"):
        scorer.score(np.array([1]))


def test_tag_matrix_is_l2_normalised_multi_hot() -> None:
    m = tag_matrix([["Drama", "pixar"], [], ["pixar", "pixar"]])
    assert m.shape == (3, 2)
    dense = m.toarray()
    np.testing.assert_allclose(dense, [[1 / np.sqrt(2), 1 / np.sqrt(2)], [0, 0], [0, 1]], rtol=1e-6)

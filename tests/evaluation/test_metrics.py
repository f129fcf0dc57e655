"""The metrics on cases small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from tests.evaluation.helpers import FixedScorer, make_split
from twotower.errors import InputError
from twotower.evaluation import SLICES, EvalResult, evaluate, metric_names

L2, L3 = 1.0, 1.0 / math.log2(3)  # discounts of ranks 1 and 2; rank 3 is 1/2

# Six videos. Training likes make videos 0, 1, 2, 5 warm; 3 and 4 are cold.
#   user 0: liked 0; test likes 2 (warm) and 4 (cold)  ranking 1, 2, 3, 4, 5     -> 2 at rank 2, 4 at rank 4
#   user 1: liked 1; test like 3 (cold); all scores tie  ranking 0, 2, 3, 4, 5    -> 3 at rank 3 (index order)
#   user 2: liked 0, 1, 2, 5 (a warm user); test like 4     ranking 3, 4            -> 4 at rank 2
SCORES: list[list[float]] = [
    [9, 5, 4, 3, 2, 1],
    [0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0.5, 0.25, 1],
]
TRAIN = {0: [0], 1: [1], 2: [0, 1, 2, 5]}
TEST = {0: [2, 4], 1: [3], 2: [4]}


@pytest.fixture
def result() -> EvalResult:
    return evaluate(FixedScorer(SCORES), make_split(3, TRAIN, TEST), ks=(1, 3))


def test_all_users(result: EvalResult) -> None:
    m = result.metrics["all"]
    assert result.users["all"] == 3
    assert m["recall@1"] == 0 and m["hit_rate@1"] == 0 and m["precision@1"] == 0
    assert m["recall@3"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["hit_rate@3"] == 1
    ndcg = [L3 / (L2 + L3), 0.5, L3]
    assert m["ndcg@3"] == pytest.approx(sum(ndcg) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    # negatives: user 0 {1, 3, 5}: video 2 beats 3 and 5, video 4 beats 5 -> (2/3 + 1/3) / 2;
    # user 1 {0, 2, 4, 5}: all tied -> 1/2; user 2 {3}: video 4 scores lower -> 0
    assert m["auc"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    # top 3: {1, 2, 3}, {0, 2, 3}, {3, 4} (user 2 has only two rankable videos)
    assert m["coverage@1"] == pytest.approx(3 / 6)  # 1, 0, 3
    assert m["coverage@3"] == pytest.approx(5 / 6)
    assert list(m) == metric_names((1, 3))


def test_item_slices(result: EvalResult) -> None:
    warm, cold = result.metrics["warm_items"], result.metrics["cold_items"]
    assert result.users["warm_items"] == 1 and result.users["cold_items"] == 3
    # warm: user 0 with target 2 only (rank 2)
    assert warm["recall@3"] == 1 and warm["mrr"] == 0.5
    assert warm["ndcg@3"] == pytest.approx(L3)
    assert warm["auc"] == pytest.approx(2 / 3)
    assert warm["coverage@3"] == pytest.approx(3 / 6)
    # cold: user 0 target 4 (rank 4, outside the top 3), user 1 target 3 (rank 3), user 2 target 4 (rank 2)
    assert cold["recall@3"] == pytest.approx(2 / 3)
    assert cold["mrr"] == pytest.approx((1 / 4 + 1 / 3 + 1 / 2) / 3)
    assert cold["auc"] == pytest.approx((1 / 3 + 1 / 2 + 0) / 3)


def test_cold_catalog_ranks_only_the_cold_videos(result: EvalResult) -> None:
    # cold videos 3 and 4 only: user 0 ranks 3 (3), 4 (2) -> target 4 at rank 2; user 1 ties -> 3 at rank 1;
    # user 2 ranks 3 (0.5), 4 (0.25) -> target 4 at rank 2
    m = result.metrics["cold_catalog"]
    assert result.users["cold_catalog"] == result.users["cold_items"] == 3
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@3"] == 1
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["auc"] == pytest.approx((0 + 1 / 2 + 0) / 3)  # the only negative is the other cold video
    assert m["coverage@1"] == pytest.approx(1 / 6) and m["coverage@3"] == pytest.approx(2 / 6)


def test_user_slices(result: EvalResult) -> None:
    assert result.users["new_users"] == 2 and result.users["warm_users"] == 1
    assert result.metrics["new_users"]["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    assert result.metrics["new_users"]["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result.metrics["warm_users"]["mrr"] == pytest.approx(1 / 2)
    assert result.metrics["warm_users"]["coverage@3"] == pytest.approx(2 / 6)
    assert set(result.metrics) == set(SLICES)


def test_batches_do_not_change_the_numbers(result: EvalResult) -> None:
    one_by_one = evaluate(FixedScorer(SCORES), make_split(3, TRAIN, TEST), ks=(1, 3), batch_users=1)
    assert one_by_one.metrics == result.metrics and one_by_one.users == result.users


def test_training_likes_are_excluded_but_nopes_are_not() -> None:
    # the scorer puts the training like (0) first and the training nope (1) second; the test like is 2
    split = make_split(1, {0: [0]}, {0: [2]}, nopes={0: [1]})
    result = evaluate(FixedScorer([[5, 4, 3, 2]]), split, ks=(1, 2))
    m = result.metrics["all"]
    assert m["recall@1"] == 0 and m["recall@2"] == 1  # ranking 1, 2, 3: the nope takes rank 1
    assert m["mrr"] == 0.5
    assert m["auc"] == pytest.approx(0.5)  # negatives: the nope 1 (scores higher) and 3 (lower)
    assert m["coverage@2"] == pytest.approx(2 / 4)


def test_a_video_liked_in_training_and_test_is_not_a_target() -> None:
    split = make_split(2, {0: [0], 1: [1]}, {0: [0, 2], 1: [1]})
    result = evaluate(FixedScorer(np.zeros((2, 4))), split, ks=(2,))
    assert result.users["all"] == 1  # user 1's only test like was also a training like
    assert result.metrics["all"]["recall@2"] == 1  # user 0: target 2 only; ranking 1, 2, 3


def test_users_without_test_likes_are_not_scored() -> None:
    split = make_split(3, {0: [0], 1: [1]}, {1: [2]})
    assert evaluate(FixedScorer(np.zeros((3, 3))), split).users["all"] == 1


def test_empty_slice_is_nan_with_zero_users() -> None:
    split = make_split(1, {0: [0]}, {0: [0, 1]})  # 1 is cold; no warm test likes besides the excluded 0
    result = evaluate(FixedScorer([[0, 1]]), split, ks=(1,))
    assert result.users["warm_items"] == 0
    assert all(math.isnan(v) for v in result.metrics["warm_items"].values())
    assert result.to_dict()["metrics"]["warm_items"]["recall@1"] is None


def test_sampled_auc_for_large_catalogs() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((20, 300))
    split = make_split(20, {u: [u] for u in range(20)}, {u: [100 + u, 200 + u] for u in range(20)})
    exact = evaluate(FixedScorer(scores), split)
    sampled = evaluate(FixedScorer(scores), split, exact_auc_max_items=100, auc_negatives=1000, seed=3)
    again = evaluate(FixedScorer(scores), split, exact_auc_max_items=100, batch_users=7, seed=3)
    assert exact.auc_method == "exact"
    assert sampled.auc_method.startswith("sampled: 1000 negatives")
    assert sampled.metrics["all"]["auc"] == pytest.approx(exact.metrics["all"]["auc"], abs=0.02)
    assert again.metrics["all"]["auc"] == sampled.metrics["all"]["auc"]  # the sample is per user, not per batch
    assert sampled.metrics["all"]["recall@20"] == exact.metrics["all"]["recall@20"]


def test_scores_must_have_the_catalog_shape_and_be_finite() -> None:
    split = make_split(1, {0: [0]}, {0: [1]})

    class Wrong(FixedScorer):
        def score(self, users: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
            return super().score(users)[:, :2]

    with pytest.raises(InputError, match=r"shape \(1, 2\), expected \(1, 3\)"):
        evaluate(Wrong([[0, 1, 2]]), split)
    with pytest.raises(InputError, match="NaN or infinite"):
        evaluate(FixedScorer([[0, np.nan, 2]]), split)
    with pytest.raises(InputError, match="positive"):
        evaluate(FixedScorer([[0, 1, 2]]), split, ks=(0,))

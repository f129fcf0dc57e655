"""The experiment's statistics against computations by hand: the keyed assignment, the clustered (delta-method)
variance against a bootstrap over users, the mSPRT interval against its defining inequality, and the reason it is
used: an A/A comparison looked at after every batch of users keeps its false-positive rate with the always-valid
interval and loses it with the fixed-horizon one."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from scipy import optimize, stats

from twotower.monitor.stats import ArmStats, always_valid_halfwidth, arm_stats, compare, msprt_statistic
from twotower.registry.experiments import assign, bucket


def test_assignment_shares_within_half_a_percent_over_a_million_ids() -> None:
    raw = np.random.default_rng(7).integers(0, 256, size=(1_000_000, 16), dtype=np.uint8).tobytes()
    ids = [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]
    place = np.array([bucket("key-1", u) for u in ids])
    for share in (0.01, 0.1, 0.5):
        got = float((place < share).mean())
        assert abs(got - share) <= 0.005, (share, got)
    assert [assign("key-1", u, 0.1) for u in ids[:1000]] == list(place[:1000] < 0.1)


def test_assignment_is_stable_and_differs_between_experiments() -> None:
    ids = [uuid.uuid5(uuid.NAMESPACE_URL, str(i)) for i in range(20_000)]
    first = [assign("key-a", u, 0.5) for u in ids]
    assert first == [assign("key-a", u, 0.5) for u in ids]  # same key: same arms, every time
    other = [assign("key-b", u, 0.5) for u in ids]
    both = sum(a and b for a, b in zip(first, other, strict=True)) / len(ids)
    assert abs(both - 0.25) < 0.02  # another experiment's arms are independent of this one's
    # a user in the 10% arm is in the 20% arm too (the hash is compared with the share)
    assert all(assign("key-a", u, 0.2) for u in ids if assign("key-a", u, 0.1))


def _users(rng: np.random.Generator, n: int, rate_mean: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Heterogeneous users: exposures per user long-tailed, each user's own like probability."""
    decisions = rng.integers(1, 60, size=n).astype(np.float64)
    p = rng.beta(4 * rate_mean, 4 * (1 - rate_mean), size=n)
    likes = rng.binomial(decisions.astype(np.int64), p).astype(np.float64)
    return decisions, likes


def test_the_delta_method_matches_a_bootstrap_over_users() -> None:
    rng = np.random.default_rng(3)
    d, lk = _users(rng, 800)
    got = arm_stats(d, d, lk)
    boot = []
    for _ in range(2000):
        pick = rng.integers(0, d.shape[0], size=d.shape[0])
        boot.append(lk[pick].sum() / d[pick].sum())
    assert got.like_rate == pytest.approx(lk.sum() / d.sum())
    assert got.like_rate_se == pytest.approx(float(np.std(boot, ddof=1)), rel=0.1)
    # treating swipes as independent would understate it: users differ, and their swipes go together
    naive = math.sqrt(got.like_rate * (1 - got.like_rate) / d.sum())
    assert got.like_rate_se > 1.5 * naive


def test_the_always_valid_interval_is_where_the_mixture_ratio_stays_below_one_over_alpha() -> None:
    for variance, tau, alpha in ((1e-4, 0.05, 0.05), (4e-3, 0.02, 0.05), (2.5e-5, 0.1, 0.01)):
        half = always_valid_halfwidth(variance, tau, alpha)
        edge = optimize.brentq(lambda d: msprt_statistic(d, variance, tau) - math.log(1 / alpha), 0, 10)  # noqa: B023
        assert half == pytest.approx(edge, rel=1e-9)
        # always wider than the fixed-horizon interval of the same level
        assert half > stats.norm.ppf(1 - alpha / 2) * math.sqrt(variance)


def _aa_false_positives(rng: np.random.Generator, runs: int, looks: int, per_look: int) -> tuple[float, float]:
    """Share of A/A runs declared significant at some look: (always-valid, fixed-horizon 95%)."""
    always = fixed = 0
    for _ in range(runs):
        d, lk = _users(rng, looks * per_look * 2)
        arm = rng.random(d.shape[0]) < 0.5
        hit_always = hit_fixed = False
        for look in range(1, looks + 1):
            upto = look * per_look * 2
            a = arm_stats(d[:upto][~arm[:upto]], d[:upto][~arm[:upto]], lk[:upto][~arm[:upto]])
            b = arm_stats(d[:upto][arm[:upto]], d[:upto][arm[:upto]], lk[:upto][arm[:upto]])
            c = compare(a, b, tau=0.05, alpha=0.05, min_users=20, min_decisions=1)
            if c.verdict in ("candidate_better", "candidate_worse"):
                hit_always = True
            if c.ci95 is not None and (c.ci95[0] > 0 or c.ci95[1] < 0):
                hit_fixed = True
        always += hit_always
        fixed += hit_fixed
    return always / runs, fixed / runs


def test_looking_often_keeps_the_false_positive_rate_of_the_always_valid_interval() -> None:
    always, fixed = _aa_false_positives(np.random.default_rng(11), runs=300, looks=30, per_look=20)
    assert always <= 0.05  # 30 looks, still at most 5% of identical pairs called different
    assert fixed >= 0.12  # what a fixed-horizon interval looked at 30 times does


def test_no_verdict_below_the_minimum_sample_and_a_clear_one_above() -> None:
    rng = np.random.default_rng(5)
    d1, l1 = _users(rng, 400, 0.55)
    d2, l2 = _users(rng, 400, 0.30)
    good, weak = arm_stats(d1, d1, l1), arm_stats(d2, d2, l2)
    assert compare(good, weak, min_users=500).verdict == "collecting"
    assert compare(good, weak, min_decisions=10**7).verdict == "collecting"
    worse = compare(good, weak, min_users=100)
    assert worse.verdict == "candidate_worse" and worse.always_valid is not None and worse.always_valid[1] < 0
    assert compare(weak, good, min_users=100).verdict == "candidate_better"
    empty = ArmStats(0, 0, 0, 0, None, None, None, None)
    assert compare(empty, weak).verdict == "collecting"

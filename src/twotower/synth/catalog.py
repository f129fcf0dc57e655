"""The synthetic catalog as numpy arrays: every video belongs to one planted taste, and its content shows it.

A taste owns a pool of tags, performers, makers and directors; a video draws mostly from its taste's pools
and a little from the shared ones, so content is predictive of taste but not a label. Popularity is
Zipf-like over a random order, so it is a real but beatable baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from twotower.synth.names import GENERIC_TAGS, TAG_NAME_SPACE

__all__ = [
    "MAX_PERFORMERS",
    "MAX_TAGS",
    "RELEASE_SPAN_S",
    "SPAN_S",
    "TAG_POOL",
    "Catalog",
    "make_catalog",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

SPAN_S = 3 * 365 * 86_400  # the catalog's time range: three years from the epoch
RELEASE_SPAN_S = int(SPAN_S * 0.97)  # releases stop a little early, so every video can still be swiped
TAG_POOL = 10  # tags owned by each taste
MAX_TAGS = 8
MAX_PERFORMERS = 3
_MAKERS_PER_TASTE = 3
_SHARED_MAKERS = 6
_ZIPF = 1.0  # popularity exponent: a long tail, as in real catalogs


@dataclass(frozen=True)
class Catalog:
    """Column arrays, one row per video (index ``i`` is the video ``syn-{seed}-{i:07d}``)."""

    tastes: int
    taste: IntArray  # [videos]
    popularity: FloatArray  # [videos], sums to 1
    tags: IntArray  # [videos, MAX_TAGS] tag ids, -1 padded; ids < tastes*TAG_POOL belong to a taste
    tag_word: IntArray  # [tastes*TAG_POOL] which name each taste tag gets: pools differ by seed
    performers: IntArray  # [videos, MAX_PERFORMERS] performer ids, -1 padded (may repeat: dedup on use)
    maker: IntArray  # [videos]
    label: IntArray  # [videos] 0..1, the maker's label
    series: IntArray  # [videos] 0..7 within the maker, -1 for none
    volume: IntArray  # [videos] volume number within the series
    director: IntArray  # [videos], -1 for none
    title_word: IntArray  # [videos]
    price: IntArray  # [videos] yen, 0 = free
    duration_s: IntArray  # [videos]
    released_s: IntArray  # [videos] seconds after the epoch
    review_count: IntArray  # [videos]
    review_average: FloatArray  # [videos], NaN when there is no review

    @property
    def videos(self) -> int:
        return int(self.taste.shape[0])

    @property
    def tag_count(self) -> int:
        return self.tastes * TAG_POOL + len(GENERIC_TAGS)


def _gumbel_order(rng: np.random.Generator, rows: int, weights: FloatArray) -> IntArray:
    """Per row, a weighted random order of ``range(len(weights))`` (sampling without replacement)."""
    keys = np.log(weights)[None, :] - np.log(-np.log(rng.random((rows, weights.shape[0]))))
    return np.argsort(-keys, axis=1).astype(np.int64)


def _skewed(rng: np.random.Generator, sizes: IntArray, power: float) -> IntArray:
    """An index in ``[0, size)`` per row, biased to small indices (a few stars, many occasional names)."""
    index: IntArray = (sizes * rng.random(sizes.shape[0]) ** power).astype(np.int64)
    return np.minimum(index, sizes - 1)


def _pools(sizes: IntArray, per_video: float, minimum: int) -> tuple[IntArray, IntArray]:
    """Per-taste pool sizes proportional to the taste's size, and where each pool starts."""
    count = np.maximum(minimum, np.ceil(sizes / per_video).astype(np.int64))
    return count, np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)


def _tags(rng: np.random.Generator, taste: IntArray, tastes: int) -> IntArray:
    n = taste.shape[0]
    generic = len(GENERIC_TAGS)
    total = rng.integers(3, MAX_TAGS + 1, size=n)
    cross = np.logical_and(rng.random(n) < 0.25, tastes > 1)  # at most one tag from another taste's pool
    n_generic = np.minimum(rng.binomial(total - cross, 0.2), total - cross - 1)
    n_own = total - cross - n_generic  # at least one
    own_weight: FloatArray = 1.0 / np.arange(1, TAG_POOL + 1, dtype=np.float64) ** 0.7
    shared_weight: FloatArray = 1.0 / np.arange(1, generic + 1, dtype=np.float64) ** 0.5
    own = _gumbel_order(rng, n, own_weight) + (taste * TAG_POOL)[:, None]
    shared = _gumbel_order(rng, n, shared_weight) + tastes * TAG_POOL
    other = (taste + rng.integers(1, max(tastes, 2), size=n)) % tastes
    stray = other * TAG_POOL + rng.integers(0, TAG_POOL, size=n)
    slots = np.concatenate([own, shared, stray[:, None]], axis=1)
    col = np.arange(slots.shape[1])[None, :]
    used = np.concatenate(
        [
            col[:, :TAG_POOL] < n_own[:, None],
            col[:, TAG_POOL:-1] - TAG_POOL < n_generic[:, None],
            cross[:, None],
        ],
        axis=1,
    )
    packed = np.argsort(~used, axis=1, kind="stable")[:, :MAX_TAGS]  # used slots first, in order
    tags = np.take_along_axis(slots, packed, axis=1)
    return np.where(np.take_along_axis(used, packed, axis=1), tags, -1)


def _people(
    rng: np.random.Generator, taste: IntArray, sizes: IntArray, per_video: float, own_share: float, width: int
) -> IntArray:
    """``width`` people per video drawn from the taste's pool (mostly) or from everyone; shape [videos, width]."""
    count, start = _pools(sizes, per_video, 2)
    n = taste.shape[0]
    everyone = int(count.sum())
    own = start[taste][:, None] + _skewed(rng, np.repeat(count[taste], width), 2.0).reshape(n, width)
    anyone = rng.integers(0, everyone, size=(n, width))
    return np.where(rng.random((n, width)) < own_share, own, anyone)


def _tag_words(rng: np.random.Generator, count: int) -> IntArray:
    """Distinct name indices for the taste tags, spread over all word pairs (so pools mix their words)."""
    return rng.choice(max(TAG_NAME_SPACE, count), size=count, replace=False).astype(np.int64)


def make_catalog(rng: np.random.Generator, videos: int, tastes: int) -> Catalog:
    # taste sizes differ (Dirichlet weights); the first ``tastes`` rows guarantee none is empty
    weights = rng.dirichlet(np.full(tastes, 3.0))
    taste = np.concatenate([np.arange(tastes), rng.choice(tastes, size=videos - tastes, p=weights)])
    taste = rng.permutation(taste).astype(np.int64)
    sizes = np.bincount(taste, minlength=tastes).astype(np.int64)

    popularity: FloatArray = (1.0 / (rng.permutation(videos) + 1.0) ** _ZIPF).astype(np.float64)
    popularity /= popularity.sum()

    n_perf = rng.choice(np.arange(1, MAX_PERFORMERS + 1), size=videos, p=[0.5, 0.3, 0.2])
    performers = _people(rng, taste, sizes, 40.0, 0.9, MAX_PERFORMERS)
    performers = np.where(np.arange(MAX_PERFORMERS)[None, :] < n_perf[:, None], performers, -1)
    director = _people(rng, taste, sizes, 300.0, 0.85, 1)[:, 0]
    director = np.where(rng.random(videos) < 0.08, -1, director)

    own_maker = taste * _MAKERS_PER_TASTE + _skewed(rng, np.full(videos, _MAKERS_PER_TASTE), 1.5)
    shared_maker = tastes * _MAKERS_PER_TASTE + rng.integers(0, _SHARED_MAKERS, size=videos)
    maker = np.where(rng.random(videos) < 0.8, own_maker, shared_maker)
    label = (rng.random(videos) < 0.3).astype(np.int64)
    series = np.where(rng.random(videos) < 0.35, rng.integers(0, 8, size=videos), -1)
    volume = rng.integers(1, 21, size=videos)

    free = rng.random(videos) < 0.03
    price = np.round(np.clip(rng.lognormal(np.log(1200.0), 0.5, size=videos), 300, 3000), -1)
    price_yen: IntArray = np.where(free, 0, price).astype(np.int64)
    minutes = np.clip(rng.normal(105.0, 30.0, size=videos), 20, 240).astype(np.int64)
    duration_s = minutes * 60 + rng.integers(0, 60, size=videos)
    # more releases in recent months, as catalogs grow
    released_s = (RELEASE_SPAN_S * np.sqrt(rng.random(videos))).astype(np.int64)

    review_count = rng.poisson(popularity * videos * 3.0).astype(np.int64)
    quality = rng.normal(3.6, 0.6, size=videos)
    review_average = np.where(review_count > 0, np.round(np.clip(quality, 1.0, 5.0), 2), np.nan)

    return Catalog(
        tastes=tastes,
        taste=taste,
        popularity=popularity,
        tags=_tags(rng, taste, tastes),
        tag_word=_tag_words(rng, tastes * TAG_POOL),
        performers=performers,
        maker=maker.astype(np.int64),
        label=label,
        series=series.astype(np.int64),
        volume=volume.astype(np.int64),
        director=director.astype(np.int64),
        title_word=rng.integers(0, 1 << 30, size=videos).astype(np.int64),
        price=price_yen,
        duration_s=duration_s.astype(np.int64),
        released_s=released_s,
        review_count=review_count,
        review_average=review_average.astype(np.float64),
    )

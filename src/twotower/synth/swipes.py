"""Synthetic users with planted tastes and their swipes, as numpy arrays.

Each user has one or two tastes. They are shown videos drawn mostly from their tastes (popular ones more
often) and otherwise from the whole catalog by popularity; they like their tastes' videos with high
probability and others rarely. Everything is sampled in bulk: per round, all users' draws at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from twotower.synth.catalog import SPAN_S, Catalog

__all__ = ["Swipes", "Users", "allocate", "like_probability", "make_swipes", "make_users"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_DENSE_SHARE = 0.25  # a user who sees more than this share of the catalog is sampled exactly, not by rounds
_ROUNDS = 8
_FRESH = 0.3  # share of swipes that come soon after the video's release


@dataclass(frozen=True)
class Swipes:
    """One row per decision, sorted by user then time; ``user`` indexes ``user_tastes``."""

    user_tastes: list[list[int]]
    user: IntArray  # [decisions]
    video: IntArray  # [decisions]
    like: BoolArray  # [decisions]
    at_s: IntArray  # [decisions] seconds after the epoch; strictly increasing within a user


@dataclass(frozen=True)
class Users:
    taste: IntArray  # [users, 2]; a one-taste user has it twice
    primary: FloatArray  # [users] share of taste draws from the first taste
    focus: FloatArray  # [users] share of draws from their tastes (the rest: popularity)
    like_hi: FloatArray  # [users] like probability for their tastes' videos
    like_lo: FloatArray  # [users] ... and for everything else
    maker: IntArray  # [users] a favourite maker: the small personal preference beyond tastes
    joined_s: IntArray  # [users]
    pace_s: FloatArray  # [users] typical delay between a release and this user swiping it


def allocate(rng: np.random.Generator, total: int, users: int, cap: int) -> IntArray:
    """Long-tailed decisions per user summing to exactly ``total``, each at most ``cap``.

    Everyone gets at least one when ``total >= users``.
    """
    weight = rng.lognormal(0.0, 1.1, size=users)
    counts = np.zeros(users, dtype=np.int64)
    if total >= users:
        counts[:] = 1
    else:
        counts[np.argsort(-weight, kind="stable")[:total]] = 1
    left = total - int(counts.sum())
    while left > 0:
        room = cap - counts
        open_ = room > 0
        share = np.where(open_, weight, 0.0)
        add = np.minimum(np.floor(left * share / share.sum()).astype(np.int64), room)
        if add.sum() == 0:  # the remainder is smaller than one per user: the heaviest open users take it
            order = np.argsort(-share, kind="stable")[: min(left, int(open_.sum()))]
            add = np.zeros(users, dtype=np.int64)
            add[order] = 1
        counts += add
        left -= int(add.sum())
    return counts


def _make_users(rng: np.random.Generator, catalog: Catalog, users: int) -> Users:
    return make_users(rng, catalog.taste, catalog.tastes, int(catalog.maker.max()) + 1, users)


def make_users(rng: np.random.Generator, video_taste: IntArray, tastes: int, makers: int, users: int) -> Users:
    """``users`` users with planted tastes over a catalog whose videos have ``video_taste`` (the simulator draws
    its users with the same model)."""
    k = tastes
    sizes = np.bincount(video_taste, minlength=k)
    p = 0.5 * sizes / sizes.sum() + 0.5 / k  # big tastes have more fans, small ones still have some
    first = rng.choice(k, size=users, p=p)
    two = (rng.random(users) < 0.35) & (k > 1)
    second = np.where(two, (first + rng.integers(1, max(k, 2), size=users)) % k, first)
    return Users(
        taste=np.stack([first, second], axis=1).astype(np.int64),
        primary=np.where(two, rng.uniform(0.5, 0.8, size=users), 1.0),
        focus=rng.uniform(0.6, 0.85, size=users),
        like_hi=rng.uniform(0.7, 0.85, size=users),
        like_lo=rng.uniform(0.05, 0.15, size=users),
        maker=rng.integers(0, makers, size=users).astype(np.int64),
        joined_s=(rng.random(users) * 0.8 * SPAN_S).astype(np.int64),
        pace_s=rng.lognormal(np.log(30 * 86_400.0), 0.7, size=users),
    )


def like_probability(users: Users, user: IntArray, video_taste: IntArray, video_maker: IntArray) -> FloatArray:
    """The planted truth: how likely each ``user`` likes the video of ``video_taste`` by ``video_maker`` (high for
    their tastes' videos, low otherwise, more for their favourite maker)."""
    mine = (video_taste == users.taste[user, 0]) | (video_taste == users.taste[user, 1])
    p_like = np.where(mine, users.like_hi[user], users.like_lo[user])
    out: FloatArray = np.minimum(p_like + np.where(video_maker == users.maker[user], 0.2, 0.0), 0.95)
    return out


class _Sampler:
    """Draws videos for users from the mixture "their tastes by popularity" + "everything by popularity"."""

    def __init__(self, catalog: Catalog, users: Users) -> None:
        self.users = users
        self.videos = catalog.videos
        self.by_taste = np.argsort(catalog.taste, kind="stable")  # videos grouped by taste
        # inside a taste popularity matters less than across the catalog: a fan digs into the long tail
        within = catalog.popularity**0.8
        self.within = within / np.bincount(catalog.taste, within)[catalog.taste]  # sums to 1 per taste
        self.taste_cum = np.cumsum(self.within[self.by_taste])
        ends = np.cumsum(np.bincount(catalog.taste, minlength=catalog.tastes))
        self.block_end = ends.astype(np.int64)
        self.block_start = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self.cum_start = np.concatenate([[0.0], self.taste_cum])[self.block_start]
        self.cum_end = self.taste_cum[self.block_end - 1]
        self.pop = catalog.popularity
        self.pop_cum = np.cumsum(catalog.popularity)
        self.taste = catalog.taste

    def draw(self, rng: np.random.Generator, user: IntArray) -> IntArray:
        """One video per entry of ``user``, with replacement."""
        n = user.shape[0]
        u = self.users
        t = np.where(rng.random(n) < u.primary[user], u.taste[user, 0], u.taste[user, 1])
        lo, hi = self.cum_start[t], self.cum_end[t]
        pos = np.searchsorted(self.taste_cum, lo + rng.random(n) * (hi - lo), side="right")
        pos = np.clip(pos, self.block_start[t], self.block_end[t] - 1)
        in_taste = self.by_taste[pos]
        anywhere = np.searchsorted(self.pop_cum, rng.random(n) * self.pop_cum[-1], side="right")
        anywhere = np.minimum(anywhere, self.videos - 1)
        video: IntArray = np.where(rng.random(n) < u.focus[user], in_taste, anywhere).astype(np.int64)
        return video

    def dense(self, rng: np.random.Generator, user: int, count: int, seen: IntArray) -> IntArray:
        """``count`` distinct videos for one user, none in ``seen``: exact, costs one pass over the catalog."""
        u = self.users
        share = np.where(self.taste == u.taste[user, 0], u.primary[user], 0.0)
        share += np.where(self.taste == u.taste[user, 1], 1.0 - u.primary[user], 0.0)
        weight = u.focus[user] * share * self.within + (1.0 - u.focus[user]) * self.pop
        keys = np.log(weight) - np.log(-np.log(rng.random(self.videos)))
        keys[seen] = -np.inf
        top = np.argpartition(-keys, count - 1)[:count]
        return top[np.argsort(-keys[top], kind="stable")].astype(np.int64)


def _first_per_user(keys: IntArray, videos: int, counts: IntArray) -> IntArray:
    """Distinct (user, video) keys, at most ``counts[user]`` per user, the earliest in ``keys`` kept."""
    _, first = np.unique(keys, return_index=True)
    uniq = keys[np.sort(first)]
    owner = uniq // videos
    order = np.argsort(owner, kind="stable")
    owner = owner[order]
    rank = np.arange(owner.shape[0]) - np.searchsorted(owner, owner, side="left")
    return uniq[order][rank < counts[owner]]


def _pick(rng: np.random.Generator, sampler: _Sampler, counts: IntArray) -> IntArray:
    """Distinct (user, video) keys ``user * videos + video``: exactly ``counts[user]`` per user."""
    videos = sampler.videos
    heavy = counts > _DENSE_SHARE * videos
    need = np.where(heavy, 0, counts)
    keys = np.zeros(0, dtype=np.int64)
    factor = 1.2
    for _ in range(_ROUNDS):
        have = np.bincount(keys // videos, minlength=counts.shape[0])
        deficit = need - have
        if not deficit.any():
            break
        draws = np.ceil(deficit * factor).astype(np.int64) + (deficit > 0)
        user = np.repeat(np.arange(counts.shape[0]), draws)
        before = keys.shape[0]
        keys = _first_per_user(np.concatenate([keys, user * videos + sampler.draw(rng, user)]), videos, need)
        # draw more next time when duplicates ate this round (a fan running out of their taste's videos)
        factor = 1.1 / max((keys.shape[0] - before) / max(user.shape[0], 1), 0.05)
    owner = keys // videos  # sorted: _first_per_user groups keys by user
    have = np.bincount(owner, minlength=counts.shape[0])
    extra = [keys]
    for user_id in np.flatnonzero(have < counts).tolist():
        lo, hi = np.searchsorted(owner, [user_id, user_id + 1])
        seen = keys[lo:hi] % videos
        picked = sampler.dense(rng, user_id, int(counts[user_id] - have[user_id]), seen)
        extra.append(user_id * videos + picked)
    return np.concatenate(extra)


def make_swipes(rng: np.random.Generator, catalog: Catalog, users: int, decisions: int) -> Swipes:
    u = _make_users(rng, catalog, users)
    counts = allocate(rng, decisions, users, catalog.videos)
    keys = _pick(rng, _Sampler(catalog, u), counts)
    user, video = keys // catalog.videos, keys % catalog.videos

    p_like = like_probability(u, user, catalog.taste[video], catalog.maker[video])
    like = rng.random(user.shape[0]) < p_like

    # a user swipes a video after it is out and after they joined, never past the catalog's end: some soon
    # after release (fresh videos), most any time later (the back catalogue), so popularity stays useful
    start = np.maximum(catalog.released_s[video], u.joined_s[user])
    room = (SPAN_S - start).astype(np.float64)
    soon = -np.expm1(-rng.exponential(1.0, size=user.shape[0]) * u.pace_s[user] / room)
    later = rng.random(user.shape[0])
    fresh = rng.random(user.shape[0]) < _FRESH
    at_s = start + np.floor(room * np.where(fresh, soon, later)).astype(np.int64)
    order = np.lexsort((at_s, user))
    user, video, like, at_s = user[order], video[order], like[order], at_s[order]
    # break ties within a user (one second apart) so every user's history is strictly ordered in time
    rank = np.arange(user.shape[0]) - np.searchsorted(user, user, side="left")
    offset = user * (SPAN_S + catalog.videos + 1)  # keeps the running maximum inside each user
    at_s = np.maximum.accumulate(offset + at_s - rank) - offset + rank

    return Swipes(
        user_tastes=[sorted({int(a), int(b)}) for a, b in u.taste.tolist()],
        user=user.astype(np.int64),
        video=video.astype(np.int64),
        like=like,
        at_s=at_s.astype(np.int64),
    )

"""Ranking primitives on a batch of score rows: exact top-K, full ranks and AUC against negatives.

One total order everywhere: higher score first, ties broken by the lower catalog index. ``argpartition``
alone would break ties arbitrarily, and tie-heavy scorers (popularity counts, cosine on a few tags) would
then get numbers that depend on the numpy version.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["auc_per_target", "rank_of", "top_k"]

Scores = npt.NDArray[np.floating]
Index = npt.NDArray[np.intp]


def top_k(scores: Scores, k: int) -> Index:
    """``[batch, min(k, n)]`` item indices of each row's best items, best first, ties by lower index."""
    b, n = scores.shape
    k = min(k, n)
    if k <= 0 or b == 0:
        return np.zeros((b, 0), dtype=np.intp)
    if n < 64 * k or n < 8192:
        return _top_k_exact(scores, k)
    # Large catalogs: a threshold from a strided sample of each row keeps a few hundred candidates, several
    # times cheaper than argpartition over every score. Still exact: rows where fewer than k scores pass
    # (or far too many, e.g. massive ties) take the full path, and every score tied with the k-th passes.
    sample = scores[:, :: n // 2048]
    above = min(sample.shape[1] - 1, 4 * k * sample.shape[1] // n + 16)
    threshold = np.partition(sample, sample.shape[1] - 1 - above, axis=1)[:, -1 - above]
    candidate = scores >= threshold[:, None]
    count = np.count_nonzero(candidate, axis=1)
    cheap = (count >= k) & (count <= 256 * k)
    top = np.empty((b, k), dtype=np.intp)
    if (~cheap).any():
        top[~cheap] = _top_k_exact(scores[~cheap], k)
    if cheap.any():
        flat = np.flatnonzero(candidate)  # row-major: columns ascending within a row, so ties keep index order
        flat = flat[cheap[flat // n]]
        row, col = np.divmod(flat, n)
        counts = np.where(cheap, count, 0)
        slot = np.arange(flat.size) - (np.cumsum(counts) - counts)[row]
        values = np.full((b, int(counts.max())), -np.inf, dtype=scores.dtype)
        items = np.zeros(values.shape, dtype=np.intp)
        values[row, slot] = scores.ravel()[flat]
        items[row, slot] = col
        top[cheap] = np.take_along_axis(items[cheap], _top_k_exact(values[cheap], k), axis=1)
    return top


def _top_k_exact(scores: Scores, k: int) -> Index:
    n = scores.shape[1]
    part = np.argpartition(scores, n - k, axis=1)[:, n - k :]  # the k largest, ties at the border arbitrary
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    tied = np.flatnonzero(np.count_nonzero(scores >= kth[:, None], axis=1) > k)
    if tied.size:  # rows where the border value has more copies than fit: keep the lowest indices
        sub, border = scores[tied], kth[tied, None]
        above = sub > border
        at = sub == border
        room = k - np.count_nonzero(above, axis=1)
        keep = above | (at & (np.cumsum(at, axis=1) <= room[:, None]))
        part[tied] = np.nonzero(keep)[1].reshape(tied.size, k)
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.intp, copy=False)


def rank_of(scores: Scores, rows: Index, items: Index) -> npt.NDArray[np.int64]:
    """1-based rank of ``items[i]`` in row ``rows[i]`` under the total order: one pass over each row."""
    rank = np.ones(rows.size, dtype=np.int64)
    for i, (r, item) in enumerate(zip(rows.tolist(), items.tolist(), strict=True)):
        row = scores[r]
        value = row[item]
        # before the item, equal scores rank above it (lower index); after it only higher scores do
        rank[i] += np.count_nonzero(row[:item] >= value) + np.count_nonzero(row[item + 1 :] > value)
    return rank


def auc_per_target(
    scores: Scores,
    indptr: npt.NDArray[np.integer],
    targets: npt.NDArray[np.integer],
    excluded: list[Index],
    negatives: int | None,
    seeds: npt.NDArray[np.integer],
    seed: int,
    blocked: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float64]:
    """Per target: P(target scores above a negative), ties count one half.

    Row ``r``'s targets are ``targets[indptr[r]:indptr[r+1]]`` (sorted); its negatives are every item that
    is neither excluded, nor blocked (``blocked[i]``: item ``i`` is no negative for any row), nor a target.
    ``negatives=None``: all of them (exact). Otherwise that many are drawn uniformly with replacement from a
    generator seeded by ``(seed, seeds[r])``, so the sample of a user does not depend on the batch they land in.
    NaN where a row has no negatives.
    """
    b, n = scores.shape
    out = np.full(targets.size, np.nan)
    n_blocked = int(np.count_nonzero(blocked)) if blocked is not None else 0
    for r in range(b):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        if lo == hi:
            continue
        pos = targets[lo:hi]
        forbidden = np.union1d(excluded[r], pos)
        also_blocked = int(np.count_nonzero(blocked[forbidden])) if blocked is not None else 0
        if forbidden.size + n_blocked - also_blocked >= n:
            continue
        row = scores[r]
        if negatives is None:
            keep = ~blocked if blocked is not None else np.ones(n, dtype=bool)
            keep[forbidden] = False
            neg = np.sort(row[keep])
        else:
            rng = np.random.default_rng((seed, int(seeds[r])))
            drawn = rng.integers(0, n, size=negatives)
            bad = _not_negative(drawn, forbidden, blocked)
            while bad.any():  # resample the few that hit a liked item; the candidate set is non-empty
                drawn[bad] = rng.integers(0, n, size=int(bad.sum()))
                bad = _not_negative(drawn, forbidden, blocked)
            neg = np.sort(row[drawn])
        value = row[pos]
        below = np.searchsorted(neg, value, side="left")
        not_above = np.searchsorted(neg, value, side="right")
        out[lo:hi] = (below + 0.5 * (not_above - below)) / neg.size
    return out


def _not_negative(
    drawn: Index, forbidden: npt.NDArray[np.integer], blocked: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.bool_]:
    bad = _member(drawn, forbidden)
    return bad | blocked[drawn] if blocked is not None else bad


def _member(values: npt.NDArray[np.integer], sorted_set: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
    """``np.isin`` for a sorted, non-empty set, without re-sorting it on every call."""
    at = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return np.asarray(sorted_set[at] == values)

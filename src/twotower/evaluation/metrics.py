"""``evaluate``: ranking metrics of a fitted scorer on the temporal split, overall and per slice.

Protocol (every number in twotower, so they compare): each user with at least one test like ranks the
whole catalog minus their training likes (nopes stay rankable); ties go to the lower catalog index.
The targets are the user's test likes. Per user, then averaged over the slice's users:

- ``recall@K`` = hits in the top K / min(K, targets); ``precision@K`` = hits / K; ``hit_rate@K``;
- ``ndcg@K`` with binary gains, ideal = all targets first;
- ``mrr`` = 1 / full rank of the best-ranked target (not cut at K);
- ``auc`` = P(a target outranks a negative), ties ½; negatives are the videos neither liked in training nor
  in the test set: all of them when the catalog has ≤ ``exact_auc_max_items`` videos, otherwise
  ``auc_negatives`` drawn per user from a fixed seed;
- ``coverage@K`` = share of the catalog in at least one of the slice's users' top K.

Slices: ``all``; ``warm_items`` / ``cold_items``: only the test likes on videos with / without a like in the
training rows are targets (users with at least one such target; the ranking is still over the whole
catalog); ``cold_catalog``: the same users and targets as ``cold_items``, but they rank only the cold videos
(those without a training like), so it measures how well a model orders what it has never seen liked, apart
from how it weighs cold against warm; ``new_users`` (≤ 3 training likes) and ``warm_users`` (> 3), with all
their targets.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from twotower.errors import InputError
from twotower.evaluation.ranking import auc_per_target, rank_of, top_k
from twotower.evaluation.scorers import Scorer, train_likes_matrix
from twotower.evaluation.split import Split

__all__ = ["ITEM_SLICES", "SLICES", "EvalResult", "evaluate", "metric_names", "test_likes_matrix"]

ITEM_SLICES = ("all", "warm_items", "cold_items", "cold_catalog")  # slices that change the targets or ranking
SLICES = (*ITEM_SLICES, "new_users", "warm_users")  # the last two select users of `all`
NEW_USER_MAX_LIKES = 3
_CELLS = 1 << 24  # scores per batch (64 MiB of float32) when batch_users is not given

Vector = npt.NDArray[np.float64]


@dataclass
class EvalResult:
    name: str
    metrics: dict[str, dict[str, float]]  # slice -> metric -> value (NaN for an empty slice)
    users: dict[str, int]  # slice -> users averaged over
    ks: tuple[int, ...] = (10, 20)
    n_items: int = 0
    auc_method: str = "exact"
    seconds: float = 0.0  # scoring and ranking, not fitting

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``."""
        out = asdict(self)
        out["ks"] = list(self.ks)
        out["metrics"] = {
            s: {m: (None if math.isnan(v) else v) for m, v in values.items()} for s, values in self.metrics.items()
        }
        return out


def metric_names(ks: tuple[int, ...]) -> list[str]:
    at_k = [f"{m}@{k}" for m in ("recall", "precision", "ndcg", "hit_rate") for k in ks]
    return [*at_k, "mrr", "auc", *(f"coverage@{k}" for k in ks)]


def test_likes_matrix(split: Split, n_items: int, train: sp.csr_matrix) -> sp.csr_matrix:
    """Binary ``[n_users, n_items]`` CSR of the test likes, minus any the user also liked in training."""
    log = split.log
    rows = split.test & log.like
    x = sp.csr_matrix(
        (np.ones(int(rows.sum()), dtype=np.float32), (log.user[rows], log.item[rows])), shape=(log.n_users, n_items)
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    x = (x - x.multiply(train)).tocsr()  # a training like is excluded from the ranking: it cannot be a target
    x.eliminate_zeros()
    x.sort_indices()
    return x


def evaluate(
    scorer: Scorer,
    split: Split,
    ks: tuple[int, ...] = (10, 20),
    batch_users: int | None = None,
    seed: int = 0,
    *,
    exact_auc_max_items: int = 20_000,
    auc_negatives: int = 1_000,
) -> EvalResult:
    """Rank with an already fitted ``scorer`` and measure it on ``split.test`` (see the module docstring)."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise InputError(f"ks must be positive cut-offs, got {ks}")
    started = time.perf_counter()
    n = int(scorer.n_items)
    train = train_likes_matrix(split, n)
    test = test_likes_matrix(split, n, train)
    warm_item = np.diff(train.tocsc().indptr) > 0
    n_train = np.diff(train.indptr)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    exact = n <= exact_auc_max_items
    batch = batch_users or max(1, _CELLS // max(n, 1))

    names = metric_names(ks)
    averaged = [m for m in names if not m.startswith("coverage@")]
    per_user: dict[str, list[dict[str, Vector]]] = {kind: [] for kind in ITEM_SLICES}
    covered = {(s, k): np.zeros(n, dtype=bool) for s in SLICES for k in ks}
    is_new = n_train[users] <= NEW_USER_MAX_LIKES
    for start in range(0, users.size, batch):
        ub = users[start : start + batch]
        scores = _scores(scorer, ub, n)
        excl, tgt = train[ub], test[ub]
        scores[np.repeat(np.arange(ub.size), np.diff(excl.indptr)), excl.indices] = -np.inf
        top = top_k(scores, ks[-1])
        rankable = np.isfinite(np.take_along_axis(scores, top, axis=1))
        negatives = None if exact else auc_negatives
        excluded = np.split(excl.indices, excl.indptr[1:-1])
        auc = auc_per_target(scores, tgt.indptr, tgt.indices, excluded, negatives, ub, seed)
        new_rows = is_new[start : start + batch]
        for kind in ITEM_SLICES:
            if kind == "cold_catalog":  # rank the cold videos only: the warm ones leave the ranking
                scores[:, warm_item] = -np.inf
                top = top_k(scores, ks[-1])
                rankable = np.isfinite(np.take_along_axis(scores, top, axis=1))
                auc = auc_per_target(scores, tgt.indptr, tgt.indices, excluded, negatives, ub, seed, warm_item)
            values = _batch_metrics(scores, top, tgt, warm_item, kind, ks, auc)
            per_user[kind].append(values)
            has = ~np.isnan(values["mrr"])
            rows_of = {kind: has} if kind != "all" else {"all": has, "new_users": new_rows, "warm_users": ~new_rows}
            for s, rows in rows_of.items():
                for k in ks:  # fewer rankable videos than K: the excluded filler is not recommended
                    covered[(s, k)][top[rows, :k][rankable[rows, :k]]] = True

    metrics: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for s in SLICES:
        parts = per_user[s if s in ITEM_SLICES else "all"]
        column = {m: np.concatenate([p[m] for p in parts]) if parts else np.zeros(0) for m in averaged}
        present = ~np.isnan(column["mrr"])
        if s in ("new_users", "warm_users"):
            present &= is_new if s == "new_users" else ~is_new
        counts[s] = int(present.sum())
        summary = {m: _mean(column[m][present]) for m in averaged}
        summary.update({f"coverage@{k}": float(covered[(s, k)].mean()) if counts[s] else math.nan for k in ks})
        metrics[s] = {m: summary[m] for m in names}
    method = "exact" if exact else f"sampled: {auc_negatives} negatives per user, seed {seed}"
    return EvalResult(scorer.name, metrics, counts, ks, n, method, time.perf_counter() - started)


def _scores(scorer: Scorer, users: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.floating]:
    raw = np.asarray(scorer.score(users))
    if raw.shape != (users.size, n):
        raise InputError(f"{scorer.name}.score returned shape {raw.shape}, expected {(users.size, n)}")
    if np.issubdtype(raw.dtype, np.floating) and raw.flags.owndata and raw.flags.writeable and raw.flags.c_contiguous:
        scores = raw  # the Scorer contract: a fresh array, ours to overwrite (saves a copy per batch)
    else:
        scores = np.array(raw, dtype=raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.float32)
    if not np.isfinite(scores).all():
        raise InputError(f"{scorer.name}.score returned NaN or infinite scores")
    return scores


def _batch_metrics(
    scores: npt.NDArray[np.floating],
    top: npt.NDArray[np.intp],
    tgt: sp.csr_matrix,
    warm_item: npt.NDArray[np.bool_],
    kind: str,
    ks: tuple[int, ...],
    auc: Vector,
) -> dict[str, Vector]:
    """Per-user metrics of one batch for one target kind; NaN for users without such targets."""
    b = scores.shape[0]
    row = np.repeat(np.arange(b), np.diff(tgt.indptr))
    col = tgt.indices.astype(np.intp)
    keep = np.ones(col.size, dtype=bool) if kind == "all" else warm_item[col] == (kind == "warm_items")
    row, col, auc = row[keep], col[keep], auc[keep]
    n_targets = np.bincount(row, minlength=b).astype(np.float64)
    has = n_targets > 0

    is_target = np.zeros(scores.shape, dtype=bool)
    is_target[row, col] = True
    hits = np.take_along_axis(is_target, top, axis=1)  # [batch, max K], best first

    out: dict[str, Vector] = {}
    discount = 1.0 / np.log2(np.arange(top.shape[1]) + 2.0)
    ideal = np.cumsum(discount)
    for k in ks:
        found = hits[:, :k].sum(axis=1)
        cut = min(k, top.shape[1])
        best = ideal[np.minimum(n_targets, cut).astype(np.intp) - 1] if cut else np.ones(b)
        out[f"recall@{k}"] = found / np.maximum(np.minimum(n_targets, k), 1)
        out[f"precision@{k}"] = found / k
        out[f"ndcg@{k}"] = (hits[:, :k] * discount[:k]).sum(axis=1) / best
        out[f"hit_rate@{k}"] = (found > 0).astype(np.float64)

    rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0).astype(np.float64)
    missing = np.flatnonzero(has & (rank == 0))
    if missing.size:  # best target below the top K: find it (highest score, lowest index) and count
        value = scores[row, col]
        order = np.lexsort((col, -value, row))
        first = order[np.r_[True, row[order][1:] != row[order][:-1]]]
        best_item = np.zeros(b, dtype=np.intp)
        best_item[row[first]] = col[first]
        rank[missing] = rank_of(scores, missing, best_item[missing])
    out["mrr"] = 1.0 / np.where(has, rank, 1.0)
    out["auc"] = np.bincount(row, weights=auc, minlength=b) / np.maximum(n_targets, 1)
    for v in out.values():
        v[~has] = np.nan
    return out


def _mean(values: Vector) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan

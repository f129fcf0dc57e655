"""Evaluation results for people (rich tables) and for files (JSON)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.table import Table

from twotower.evaluation.metrics import NEW_USER_MAX_LIKES, SLICES, EvalResult, metric_names, test_likes_matrix
from twotower.evaluation.scorers import train_likes_matrix
from twotower.evaluation.split import Split

__all__ = ["PROTOCOL", "describe_split", "render_slices", "render_table", "to_json"]

PROTOCOL = (
    "Temporal split: per user with likes, sorted by time, the last 20% of likes (from index floor(0.8 n)) are "
    "the test set, earlier likes and the nopes before the first test like are training. Each user with a test "
    "like ranks the whole catalog minus their training likes (nopes stay rankable); ties go to the lower "
    "catalog index. Recall@K = hits / min(K, test likes); NDCG with binary gains; MRR over the full ranking; "
    "AUC against all videos neither liked in training nor in the test set (ties 1/2); coverage@K = share of "
    "the catalog in at least one top K. Slices: warm_items / cold_items = only the test likes on videos with / "
    "without a training like are targets; cold_catalog = the same targets ranked among the cold videos only; "
    f"new_users = at most {NEW_USER_MAX_LIKES} training likes."
)


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def render_table(results: list[EvalResult], slice: str = "all", metrics: Sequence[str] | None = None) -> Table:
    """One row per model, one column per metric (all of them, or ``metrics``), on one slice."""
    if slice not in SLICES:
        raise ValueError(f"unknown slice {slice!r}, expected one of {', '.join(SLICES)}")
    names = list(metrics) if metrics is not None else metric_names(results[0].ks if results else (10, 20))
    users = results[0].users.get(slice, 0) if results else 0
    table = Table(title=f"Evaluation: {slice} ({users:,} users)")
    table.add_column("model", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("seconds", justify="right")
    for r in results:
        values = r.metrics.get(slice, {})
        table.add_row(r.name, *(_fmt(values.get(m, math.nan)) for m in names), f"{r.seconds:.1f}")
    return table


def render_slices(results: list[EvalResult], metric: str = "recall@20") -> Table:
    """One row per model, one column per slice (with its number of users), for one metric."""
    table = Table(title=f"{metric} per slice")
    table.add_column("model", style="bold")
    for s in SLICES:
        users = results[0].users.get(s, 0) if results else 0
        table.add_column(f"{s}\n({users:,} users)", justify="right")
    for r in results:
        table.add_row(r.name, *(_fmt(r.metrics.get(s, {}).get(metric, math.nan)) for s in SLICES))
    return table


def describe_split(split: Split, n_items: int) -> dict[str, int]:
    """The sizes a report needs to be read: users, videos, training rows, likes, test likes."""
    train = train_likes_matrix(split, n_items)
    test = test_likes_matrix(split, n_items, train)
    log = split.log
    return {
        "users": log.n_users,
        "items": n_items,
        "decisions": len(log),
        "train_decisions": int(split.train.sum()),
        "train_likes": int(train.nnz),
        "train_nopes": int((split.train & ~log.like).sum()),
        "test_likes": int(test.nnz),
        "users_evaluated": int((np.diff(test.indptr) > 0).sum()),
        "items_with_train_likes": int((np.diff(train.tocsc().indptr) > 0).sum()),
    }


def to_json(results: list[EvalResult], split_info: dict[str, Any]) -> dict[str, Any]:
    """JSON-serialisable: the protocol, the split sizes and, per model, metrics per slice."""
    return {
        "protocol": PROTOCOL,
        "split": split_info,
        "models": {r.name: r.to_dict() for r in results},
    }

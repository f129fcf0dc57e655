"""Hand-made splits and a scorer with fixed scores: cases small enough to compute the metrics by hand."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from twotower.evaluation.split import Split
from twotower.features.decisions import DecisionLog


def make_split(
    n_users: int,
    train: Mapping[int, Sequence[int]],
    test: Mapping[int, Sequence[int]],
    nopes: Mapping[int, Sequence[int]] | None = None,
) -> Split:
    """Training likes, test likes and training nopes per user, as a Split (rows sorted by user, then time)."""
    rows: list[tuple[int, int, bool, str]] = []
    for u in range(n_users):
        rows += [(u, i, True, "train") for i in train.get(u, ())]
        rows += [(u, i, False, "train") for i in (nopes or {}).get(u, ())]
        rows += [(u, i, True, "test") for i in test.get(u, ())]
    log = DecisionLog(
        user_ids=[uuid.UUID(int=u) for u in range(n_users)],
        user=np.array([r[0] for r in rows], dtype=np.int32),
        item=np.array([r[1] for r in rows], dtype=np.int32),
        like=np.array([r[2] for r in rows], dtype=bool),
        ts=np.arange(len(rows), dtype=np.float64),
    )
    kind = np.array([r[3] for r in rows])
    none = np.zeros(len(rows), dtype=bool)
    return Split(log=log, train=kind == "train", test=kind == "test", valid=none, after_valid=none.copy())


class FixedScorer:
    """Scores given up front: ``scores[user]`` is that user's row."""

    def __init__(self, scores: npt.ArrayLike, name: str = "fixed") -> None:
        self.scores: npt.NDArray[np.float32] = np.asarray(scores, dtype=np.float32)
        self.n_items = int(self.scores.shape[1])
        self.name = name
        self.fitted = False

    def fit(self, split: Split) -> None:
        self.fitted = True

    def score(self, users: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        return np.array(self.scores[users], dtype=np.float32)

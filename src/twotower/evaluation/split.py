"""The temporal split every number in twotower is measured on.

For each user with likes, sorted by time, the last 20% (from index ``floor(0.8 n)``) are the test set and the
rest is training. The user's nopes before their first test like are training data; later nopes are dropped
(they are the future). A validation set for early stopping is carved the same way out of the training likes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from twotower.features.decisions import DecisionLog

__all__ = ["Split", "temporal_split"]


@dataclass
class Split:
    log: DecisionLog
    train: npt.NDArray[np.bool_]  # decisions the model may learn from (likes and nopes)
    test: npt.NDArray[np.bool_]  # held-out likes
    valid: npt.NDArray[np.bool_]  # held-out likes for early stopping, carved out of `train`
    after_valid: npt.NDArray[np.bool_]  # training nopes at or after a user's validation cutoff

    @property
    def fit(self) -> npt.NDArray[np.bool_]:
        """What training may use while validating: train minus validation and what follows it."""
        return self.train & ~self.valid & ~self.after_valid


def _holdout(
    log: DecisionLog, candidates: npt.NDArray[np.bool_], fraction: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Per user, the last ``fraction`` of the candidate likes; and each user's cutoff time (inf if none)."""
    idx = np.flatnonzero(candidates & log.like)
    users = log.user[idx]
    counts = np.bincount(users, minlength=log.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(idx.size) - starts[users]  # log is sorted by (user, time)
    first_held = np.floor((1.0 - fraction) * counts).astype(np.int64)
    held = rank >= first_held[users]
    mask = np.zeros(len(log), dtype=bool)
    mask[idx[held]] = True
    cutoff = np.full(log.n_users, np.inf)
    first_rows = idx[held & (rank == first_held[users])]
    cutoff[log.user[first_rows]] = log.ts[first_rows]
    return mask, cutoff


def temporal_split(log: DecisionLog, test_fraction: float = 0.2, valid_fraction: float = 0.1) -> Split:
    everything = np.ones(len(log), dtype=bool)
    test, cutoff = _holdout(log, everything, test_fraction)
    before = log.ts < cutoff[log.user]
    train = (log.like & ~test) | (~log.like & before)
    valid, vcut = _holdout(log, train, valid_fraction)
    # users need some history left to be validated on: drop validation for users with < 5 training likes
    train_likes = np.bincount(log.user[train & log.like], minlength=log.n_users)
    valid &= train_likes[log.user] >= 5
    vcut[train_likes < 5] = np.inf
    after_valid = train & ~log.like & (log.ts >= vcut[log.user])
    return Split(log=log, train=train, test=test, valid=valid, after_valid=after_valid)

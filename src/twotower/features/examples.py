"""Training examples and user histories as index arrays (numpy only: training, batch jobs and serving share it).

Every training like is one example: the user's history is what they did *before* it (most recent first),
exactly what the API will know when it computes their embedding at request time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from twotower.features.decisions import DecisionLog
from twotower.features.history import HistoryConfig, user_stats

__all__ = ["Histories", "UserBatch"]


@dataclass
class UserBatch:
    """Rows into the item-feature table (its last row is padding) and masks, most recent first."""

    like_rows: npt.NDArray[np.int64]  # [B, H]
    like_mask: npt.NDArray[np.float32]
    nope_rows: npt.NDArray[np.int64]  # [B, Hn]
    nope_mask: npt.NDArray[np.float32]
    stats: npt.NDArray[np.float32]  # [B, S]

    def __len__(self) -> int:
        return int(self.like_rows.shape[0])

    def slice(self, start: int, stop: int) -> UserBatch:
        return UserBatch(
            self.like_rows[start:stop], self.like_mask[start:stop], self.nope_rows[start:stop],
            self.nope_mask[start:stop], self.stats[start:stop],
        )  # fmt: skip


def _sequences(
    log: DecisionLog, rows: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Items and times of the selected rows, grouped by user (log order), with per-user start and count."""
    idx = np.flatnonzero(rows)
    counts = np.bincount(log.user[idx], minlength=log.n_users).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return log.item[idx].astype(np.int64), log.ts[idx], starts, counts


class Histories:
    """Each user's likes and nopes among the rows a model may see (e.g. ``split.fit``)."""

    def __init__(self, log: DecisionLog, rows: npt.NDArray[np.bool_], n_items: int, cfg: HistoryConfig) -> None:
        self.log = log
        self.cfg = cfg
        self.pad_row = n_items  # the padding row of the item-feature table
        self.like_items, self.like_ts, self.like_start, self.like_count = _sequences(log, rows & log.like)
        self.nope_items, self.nope_ts, self.nope_start, self.nope_count = _sequences(log, rows & ~log.like)

    # -- examples -------------------------------------------------------------------------------------------
    def examples(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(user, item, likes before, nopes before) for every like: the training examples."""
        users = np.repeat(np.arange(self.log.n_users), self.like_count)
        pos = np.arange(users.size) - self.like_start[users]
        # nopes strictly before each like: search the like's time in the user's nope times (sorted per user)
        key_scale = float(max(np.abs(self.log.ts).max(initial=0.0), 1.0)) * 4.0
        nope_users = np.repeat(np.arange(self.log.n_users), self.nope_count)
        nope_keys = nope_users * key_scale + self.nope_ts
        like_keys = users * key_scale + self.like_ts
        before = np.searchsorted(nope_keys, like_keys, side="left") - self.nope_start[users]
        return users, self.like_items, pos, before.astype(np.int64)

    def item_counts(self, n_items: int) -> npt.NDArray[np.int64]:
        return np.bincount(self.like_items, minlength=n_items).astype(np.int64)

    # -- user inputs ----------------------------------------------------------------------------------------
    def _window(
        self, items: npt.NDArray[np.int64], starts: npt.NDArray[np.int64], upto: npt.NDArray[np.int64], width: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        back = np.arange(width)[None, :]
        valid = back < upto[:, None]
        idx = starts[:, None] + upto[:, None] - 1 - back
        rows = np.where(valid, items[np.clip(idx, 0, max(items.size - 1, 0))] if items.size else 0, self.pad_row)
        return rows.astype(np.int64), valid.astype(np.float32)

    def batch(
        self,
        users: npt.NDArray[np.int64],
        likes_before: npt.NDArray[np.int64] | None = None,
        nopes_before: npt.NDArray[np.int64] | None = None,
    ) -> UserBatch:
        """Inputs for these users, as of ``likes_before``/``nopes_before`` (default: everything they did)."""
        p = self.like_count[users] if likes_before is None else likes_before
        q = self.nope_count[users] if nopes_before is None else nopes_before
        like_rows, like_mask = self._window(self.like_items, self.like_start[users], p, self.cfg.max_likes)
        nope_rows, nope_mask = self._window(self.nope_items, self.nope_start[users], q, self.cfg.max_nopes)
        return UserBatch(like_rows, like_mask, nope_rows, nope_mask, user_stats(p, q))

    def sample_nopes(
        self, users: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """One random nope per user (any time in the visible rows) as a hard negative, and whether it exists."""
        count = self.nope_count[users]
        has = count > 0
        pick = self.nope_start[users] + np.floor(rng.random(users.size) * np.maximum(count, 1)).astype(np.int64)
        rows = np.where(has, self.nope_items[np.clip(pick, 0, max(self.nope_items.size - 1, 0))]
                        if self.nope_items.size else 0, self.pad_row)  # fmt: skip
        return rows.astype(np.int64), has

"""User-tower inputs from a user's decisions: the same code at training time and at request time.

A user is their most recent likes and nopes (most recent first, as rows of an item-feature table whose last
row is padding) plus statistics over all their decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["STATS_WIDTH", "HistoryConfig", "user_stats"]

STATS_WIDTH = 3


@dataclass(frozen=True)
class HistoryConfig:
    max_likes: int = 50
    max_nopes: int = 20


def user_stats(n_likes: npt.NDArray[np.int64], n_nopes: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """``[B, 3]``: log1p(likes), log1p(nopes), like ratio (0.5 for a user with no decisions)."""
    likes = np.asarray(n_likes, dtype=np.float64)
    nopes = np.asarray(n_nopes, dtype=np.float64)
    total = likes + nopes
    ratio = np.where(total > 0, likes / np.maximum(total, 1), 0.5)
    return np.stack([np.log1p(likes) / 5.0, np.log1p(nopes) / 5.0, ratio], axis=1).astype(np.float32)

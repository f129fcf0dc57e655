"""Training batches built on the training device: the history index and the examples live there as tensors.

The numpy ``Histories`` builds the same inputs on the host (validation, batch jobs and serving use it); here a
step gathers its user states, targets and negatives with torch ops on the device, so a GPU step does no
host-to-device copy of history tensors and waits on no ``.item()``: every shape is known on the host in advance
(the epoch's states are copied once per epoch, and the number of liked items per batch is counted there).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from twotower.features.examples import Histories

__all__ = ["DeviceHistories"]


def _t(array: npt.NDArray[np.generic], device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)


class DeviceHistories:
    """``Histories`` and its training examples as tensors on ``device``."""

    def __init__(self, hist: Histories, device: torch.device) -> None:
        self.device = device
        self.pad_row = hist.pad_row
        self.max_likes, self.max_nopes = hist.cfg.max_likes, hist.cfg.max_nopes
        self.like_items, self.like_start, self.like_count = (
            _t(a, device) for a in (hist.like_items, hist.like_start, hist.like_count)
        )
        self.nope_items, self.nope_start, self.nope_count = (
            _t(a, device) for a in (hist.nope_items, hist.nope_start, hist.nope_count)
        )
        self.host_like_count = hist.like_count
        ex = hist.examples()
        self.host_ex_users = ex[0]
        self.ex_users, self.ex_items, self.ex_p, self.ex_q = (_t(a, device) for a in ex)

    def _window(self, items: Tensor, starts: Tensor, upto: Tensor, width: int) -> tuple[Tensor, Tensor]:
        back = torch.arange(width, device=self.device)[None, :]
        valid = back < upto[:, None]
        if items.numel() == 0:
            return torch.full(valid.shape, self.pad_row, dtype=torch.int64, device=self.device), valid.float()
        idx = (starts[:, None] + upto[:, None] - 1 - back).clamp(0, items.numel() - 1)
        return torch.where(valid, items[idx], self.pad_row), valid.float()

    def user_batch(self, users: Tensor, p: Tensor | None = None, q: Tensor | None = None) -> tuple[Tensor, ...]:
        """``(like_rows, like_mask, nope_rows, nope_mask, stats)`` as of ``p`` likes and ``q`` nopes."""
        p = self.like_count[users] if p is None else p
        q = self.nope_count[users] if q is None else q
        like_rows, like_mask = self._window(self.like_items, self.like_start[users], p, self.max_likes)
        nope_rows, nope_mask = self._window(self.nope_items, self.nope_start[users], q, self.max_nopes)
        likes, nopes = p.double(), q.double()  # as features.history.user_stats
        total = likes + nopes
        ratio = torch.where(total > 0, likes / total.clamp(min=1), torch.full_like(total, 0.5))
        stats = torch.stack([torch.log1p(likes) / 5.0, torch.log1p(nopes) / 5.0, ratio], dim=1).float()
        return like_rows, like_mask, nope_rows, nope_mask, stats

    def next_likes(self, users: Tensor, before: Tensor, k: int) -> Tensor:
        """``[len(users) * k]``: for a history of ``before`` likes, the like that follows it and the ones after
        it, ``k`` per user (rows r*k .. r*k+k-1); where fewer than ``k`` follow, they repeat in turn (so a
        user's last likes, the nearest to the test period, count a little more in an epoch)."""
        span = (self.like_count[users] - before).clamp(min=1)
        offset = torch.arange(k, device=self.device)[None, :] % span[:, None]
        return self.like_items[(self.like_start[users] + before)[:, None] + offset].reshape(-1)

    def future_likes(self, users: Tensor, before: Tensor, window: int, gen: torch.Generator) -> Tensor:
        """A target among the next ``window`` likes after a history of ``before`` likes."""
        span = torch.clamp(self.like_count[users] - before, max=window).clamp(min=1)
        offset = (torch.rand(users.shape[0], generator=gen, device=self.device) * span).long()
        return self.like_items[self.like_start[users] + before + torch.minimum(offset, span - 1)]

    def hide_likes(self, users: Tensor, k: int, gen: torch.Generator, like_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``k`` likes of each user's whole profile as targets; the mask with them blanked out."""
        count = self.like_count[users]
        pos = (torch.rand(users.shape[0], k, generator=gen, device=self.device) * count[:, None]).long()
        pos = torch.minimum(pos, count[:, None] - 1)
        back = count[:, None] - 1 - pos  # slot in the most-recent-first window
        inside = back < like_mask.shape[1]
        hidden = torch.zeros_like(like_mask).scatter_add_(1, back.clamp(max=like_mask.shape[1] - 1), inside.float())
        targets = self.like_items[self.like_start[users][:, None] + pos].reshape(-1)
        return targets, like_mask * (hidden == 0)

    def sample_nopes(self, users: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """One random nope per user as a hard negative (the padding row when none), and whether it exists."""
        count = self.nope_count[users]
        has = count > 0
        if self.nope_items.numel() == 0:
            return torch.full_like(users, self.pad_row), has
        pick = self.nope_start[users] + (torch.rand(users.shape[0], generator=gen, device=self.device)
                                         * count.clamp(min=1)).long()  # fmt: skip
        rows = self.nope_items[pick.clamp(0, self.nope_items.numel() - 1)]
        return torch.where(has, rows, self.pad_row), has

    def liked_total(self, host_users: npt.NDArray[np.int64]) -> int:
        """How many (row, item) pairs ``liked`` returns for these users (counted on the host: no sync)."""
        return int(self.host_like_count[host_users].sum())

    def liked(self, users: Tensor, total: int) -> tuple[Tensor, Tensor]:
        """``(row, item)`` for every item each user liked in the visible rows; ``total`` pairs in all."""
        counts = self.like_count[users]
        rows = torch.repeat_interleave(torch.arange(users.shape[0], device=self.device), counts, output_size=total)
        first = torch.cumsum(counts, 0) - counts
        offsets = torch.arange(total, device=self.device) - first[rows]
        return rows, self.like_items[self.like_start[users][rows] + offsets]

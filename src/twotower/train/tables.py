"""Item features as tensors on the training device, gathered by row for both towers."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from twotower.features.examples import UserBatch
from twotower.features.pipeline import ItemFeatures
from twotower.model.towers import TwoTowerModel

__all__ = ["FeatureTables"]


class FeatureTables:
    def __init__(
        self, features: ItemFeatures, device: torch.device, history_tags: int = 4, history_performers: int = 2
    ) -> None:
        padded = features.with_padding_row()
        self.n_items = len(features)
        self.device = device
        self.item_id = torch.from_numpy(padded.item_id).to(device)
        self.tags = torch.from_numpy(padded.tags).to(device)
        self.performers = torch.from_numpy(padded.performers).to(device)
        self.categorical = torch.from_numpy(padded.categorical).to(device)
        self.numeric = torch.from_numpy(padded.numeric).to(device)
        # the user tower reads only the first few tags/performers of a history item: gather only those
        self.hist_tags = self.tags[:, :history_tags].contiguous()
        self.hist_performers = self.performers[:, :history_performers].contiguous()

    def items(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.item_id[rows], self.tags[rows], self.performers[rows], self.categorical[rows], self.numeric[rows]

    def history_items(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return (
            self.item_id[rows], self.hist_tags[rows], self.hist_performers[rows], self.categorical[rows],
            self.numeric[rows],
        )  # fmt: skip

    def user_inputs(self, batch: UserBatch, full_width: bool = False) -> tuple[Tensor, ...]:
        """The 13 inputs of ``TwoTowerModel.user_tower`` in order (``full_width``: every tag and performer, as
        the exported towers take them; the tower itself reads only the first few)."""
        like_rows, like_mask, nope_rows, nope_mask, stats = (
            torch.from_numpy(a).to(self.device)
            for a in (batch.like_rows, batch.like_mask, batch.nope_rows, batch.nope_mask, batch.stats)
        )
        return self.gather_user(like_rows, like_mask, nope_rows, nope_mask, stats, full_width=full_width)

    def gather_user(
        self, like_rows: Tensor, like_mask: Tensor, nope_rows: Tensor, nope_mask: Tensor, stats: Tensor,
        full_width: bool = False,
    ) -> tuple[Tensor, ...]:  # fmt: skip
        """``user_inputs`` from rows and masks already on the device."""
        gather = self.items if full_width else self.history_items
        return (*gather(like_rows), like_mask, *gather(nope_rows), nope_mask, stats)

    @torch.no_grad()
    def embed_items(self, model: TwoTowerModel, batch_size: int = 8192) -> npt.NDArray[np.float32]:
        """Item-tower embeddings of every item, ``[n_items, dim]`` (call in eval mode)."""
        out = []
        for start in range(0, self.n_items, batch_size):
            rows = torch.arange(start, min(start + batch_size, self.n_items), device=self.device)
            out.append(model.item_tower(*self.items(rows)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, model.cfg.embedding_dim), dtype=np.float32)

"""The trained two-tower model as an evaluation ``Scorer``: user tower on the training history, dot product."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from twotower.evaluation.split import Split
from twotower.features.decisions import DecisionLog
from twotower.features.examples import Histories
from twotower.features.history import HistoryConfig
from twotower.features.pipeline import ItemFeatures
from twotower.model.towers import TwoTowerModel
from twotower.train.tables import FeatureTables

__all__ = ["TwoTowerScorer"]


class TwoTowerScorer:
    name = "two-tower"

    def __init__(self, model: TwoTowerModel, features: ItemFeatures, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        cfg = model.cfg
        self.tables = FeatureTables(features, torch.device(device), cfg.history_tags, cfg.history_performers)
        self.n_items = len(features)
        self._items: npt.NDArray[np.float32] | None = None
        self._hist: Histories | None = None

    def fit(self, split: Split) -> None:
        self.use_history(split.log, split.train)
        self._items = self.tables.embed_items(self.model)

    def use_history(self, log: DecisionLog, rows: npt.NDArray[np.bool_]) -> None:
        """Users are embedded from these decision rows (``fit``: the training period)."""
        cfg = self.model.cfg
        self._hist = Histories(log, rows, self.n_items, HistoryConfig(cfg.max_likes, cfg.max_nopes))

    @property
    def item_embeddings(self) -> npt.NDArray[np.float32]:
        if self._items is None:
            self._items = self.tables.embed_items(self.model)
        return self._items

    @torch.no_grad()
    def user_embeddings(self, users: npt.NDArray[np.integer], batch_size: int = 1024) -> npt.NDArray[np.float32]:
        if self._hist is None:
            raise RuntimeError("call fit(split) first")
        rows = np.asarray(users, dtype=np.int64)
        out = [
            self.model.user_tower(*self.tables.user_inputs(self._hist.batch(rows[i : i + batch_size])))
            .float()
            .cpu()
            .numpy()
            for i in range(0, rows.size, batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.model.cfg.embedding_dim), dtype=np.float32)

    def score(self, users: npt.NDArray[np.integer]) -> npt.NDArray[np.float32]:
        return (self.user_embeddings(users) @ self.item_embeddings.T).astype(np.float32)

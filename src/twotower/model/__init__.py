"""The two-tower model: towers (`towers.py`), the retrieval loss (`loss.py`) and `TowerConfig`."""

from twotower.model.config import TowerConfig
from twotower.model.loss import retrieval_loss
from twotower.model.towers import ItemEncoder, TwoTowerModel

__all__ = ["ItemEncoder", "TowerConfig", "TwoTowerModel", "retrieval_loss"]

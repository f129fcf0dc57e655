"""Model weights on disk: safetensors + the TowerConfig as JSON (never pickle)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from twotower.errors import InputError
from twotower.model.config import TowerConfig
from twotower.model.towers import TwoTowerModel

__all__ = ["load_model", "save_model"]

WEIGHTS = "model.safetensors"
CONFIG = "tower_config.json"


def save_model(directory: Path, model: TwoTowerModel) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    model.cfg.save(directory / CONFIG)


def load_model(directory: Path, device: torch.device | str = "cpu") -> TwoTowerModel:
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise InputError(f"{directory}: missing {name} (expected a directory written by `twotower train`)")
    cfg = TowerConfig.load(directory / CONFIG)
    model = TwoTowerModel(cfg)
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS), device=str(device)))
    except (RuntimeError, OSError) as exc:
        raise InputError(f"{directory / WEIGHTS}: weights do not match tower_config.json ({exc})") from None
    model.eval()
    return model.to(device)

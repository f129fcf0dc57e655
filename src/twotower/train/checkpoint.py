"""Resumable checkpoints: model, optimizer and progress after each epoch (safetensors + JSON, no pickle)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from twotower.train.trainer import EpochStats, Trainer

__all__ = ["load_checkpoint", "save_checkpoint"]

# how the optimizer computes its update: the running code's choice, not the checkpoint's (one written before
# the optimizer ran fused would otherwise turn the fused update off for the rest of the run)
_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def save_checkpoint(trainer: Trainer, directory: Path) -> None:
    """Write atomically: a crash while saving leaves the previous checkpoint intact."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().cpu().contiguous()
                                        for k, v in trainer.model.state_dict().items()}  # fmt: skip
    opt = trainer.optimizer.state_dict()
    for pid, state in opt["state"].items():
        for key, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"opt.{pid}.{key}"] = tensor.detach().cpu().contiguous()
    meta: dict[str, Any] = {
        "epoch": trainer.state.epoch,
        "best_recall": trainer.state.best_recall,
        "best_epoch": trainer.state.best_epoch,
        "history": [asdict(h) for h in trainer.state.history],
        "param_groups": opt["param_groups"],
    }
    tmp_weights, tmp_meta = directory / "last.safetensors.tmp", directory / "last.json.tmp"
    save_file(tensors, str(tmp_weights))
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_weights, directory / "last.safetensors")
    os.replace(tmp_meta, directory / "last.json")


def load_checkpoint(trainer: Trainer, directory: Path) -> bool:
    """Restore the trainer from ``directory``; False when there is no complete checkpoint."""
    weights, meta_path = directory / "last.safetensors", directory / "last.json"
    if not (weights.is_file() and meta_path.is_file()):
        return False
    meta = json.loads(meta_path.read_text())
    tensors = load_file(str(weights), device=str(trainer.device))
    trainer.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value.cpu() if name == "step" else value
    groups = [{**saved, **{k: live[k] for k in _IMPLEMENTATION if k in live}}
              for saved, live in zip(meta["param_groups"], trainer.optimizer.param_groups, strict=True)]  # fmt: skip
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
    trainer.state.epoch = int(meta["epoch"])
    trainer.state.best_recall = float(meta["best_recall"])
    trainer.state.best_epoch = int(meta["best_epoch"])
    trainer.state.history = [EpochStats(**h) for h in meta["history"]]
    return True

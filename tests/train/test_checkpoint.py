"""Checkpoints restore the optimizer's state, and the running code decides how the optimizer computes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.train.test_batches import _trainer as small_trainer
from twotower.train.checkpoint import load_checkpoint, save_checkpoint
from twotower.train.trainer import TrainConfig, Trainer


def _trainer() -> Trainer:
    torch.manual_seed(0)
    return small_trainer(TrainConfig(batch_size=64, seed=3))


def test_a_checkpoint_from_before_the_fused_optimizer_resumes_fused(tmp_path: Path) -> None:
    """A checkpoint written when the optimizer did not run fused (its param groups say ``fused: null``) restores
    its moments and step counts, and the resumed run still computes with the fused update; it continues as the
    uninterrupted run does."""
    straight = _trainer()
    straight.train_epoch(1)
    save_checkpoint(straight, tmp_path)
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["param_groups"][0]["fused"] is True
    for group in meta["param_groups"]:  # as the code before this change wrote it
        group["fused"] = None
    (tmp_path / "last.json").write_text(json.dumps(meta))
    resumed = _trainer()
    assert load_checkpoint(resumed, tmp_path)
    assert all(group["fused"] is True for group in resumed.optimizer.param_groups)
    moments = [state["exp_avg"] for state in resumed.optimizer.state.values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)
    assert straight.train_epoch(2).loss == resumed.train_epoch(2).loss

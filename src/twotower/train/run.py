"""``twotower train``: prepare the data, train with early stopping, save the model, optionally write embeddings."""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from twotower.db import Database
from twotower.errors import InputError
from twotower.features.examples import Histories
from twotower.features.history import STATS_WIDTH, HistoryConfig
from twotower.model.config import TowerConfig
from twotower.model.towers import TwoTowerModel
from twotower.model.weights import save_model
from twotower.paths import writable_directory
from twotower.train.checkpoint import load_checkpoint, save_checkpoint
from twotower.train.distributed import World
from twotower.train.prepare import Prepared, prepare
from twotower.train.tables import FeatureTables
from twotower.train.trainer import EpochStats, TrainConfig, Trainer

__all__ = ["TrainOptions", "TrainResult", "train"]


@dataclass
class TrainOptions:
    embedding_dim: int = 64
    batch_size: int | str = 512  # user states per step and process (each with its next_likes positives); "auto":
    # AUTO_BATCH for the device, the learning rate scaled with it
    epochs: int = 20
    learning_rate: float = 2e-3
    lr_schedule: str = "constant"  # or "cosine" (see TrainConfig)
    id_weight_decay: float = 0.0
    seed: int = 0
    patience: int = 5
    output_dir: Path = Path("models")
    version: str | None = None
    resume: bool = True
    device: str = "auto"
    precision: str = "fp32"  # or "bf16" (autocast of both towers)
    update_db: bool = False
    refit: bool = True  # after early stopping, retrain on the whole training period for the best epoch count
    tower: dict[str, Any] = field(default_factory=dict)  # extra TowerConfig fields

    def validate(self) -> None:
        if self.batch_size != "auto" and not (isinstance(self.batch_size, int) and 2 <= self.batch_size <= 65536):
            raise InputError(f"--batch-size must be 'auto' or between 2 and 65536, got {self.batch_size}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if not 1 <= self.epochs <= 1000:
            raise InputError(f"--epochs must be between 1 and 1000, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise InputError(f"--learning-rate must be in (0, 1), got {self.learning_rate}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0 <= self.id_weight_decay < 1:
            raise InputError(f"id_weight_decay must be in [0, 1), got {self.id_weight_decay}")
        TowerConfig(embedding_dim=self.embedding_dim)  # raises a clear error for 0 or 5000


@dataclass
class TrainResult:
    version: str
    directory: Path
    model: TwoTowerModel
    prepared: Prepared
    history: list[EpochStats]
    best_epoch: int
    resumed_from: int = 0
    is_main: bool = True  # rank 0 of a torchrun job (or a single process): the one that writes and publishes


def _device(choice: str, world: World) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", world.local_rank)
        return torch.device("cpu")
    try:
        return torch.device(choice)
    except RuntimeError:
        raise InputError(f"--device {choice!r} is not a torch device (try cpu, cuda, cuda:1)") from None


# --batch-size auto: user states per step and process (each with its next_likes positives). A GPU is starved
# below a few thousand (bench/train.py); the CPU keeps the default. Adam's learning rate grows with the square
# root of the batch (from 512).
AUTO_BATCH = {"cuda": 8192, "cpu": 512}


def resolve_batch(options: TrainOptions, device: torch.device) -> tuple[int, float]:
    """The batch size and learning rate a run uses on ``device``."""
    if options.batch_size != "auto":
        return int(options.batch_size), options.learning_rate
    batch = AUTO_BATCH.get(device.type, 512)
    return batch, options.learning_rate * (batch / 512) ** 0.5


def _valid_targets(prepared: Prepared, max_users: int) -> tuple[np.ndarray, list[np.ndarray]]:
    log, valid = prepared.log, prepared.split.valid
    users = np.unique(log.user[valid]).astype(np.int64)
    rng = np.random.default_rng(12345)
    if users.size > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    order = np.flatnonzero(valid)
    by_user: dict[int, list[int]] = {}
    for row in order:
        by_user.setdefault(int(log.user[row]), []).append(int(log.item[row]))
    return users, [np.array(by_user[int(u)], dtype=np.int64) for u in users]


def _run_key(options: TrainOptions, prepared: Prepared, cfg: TowerConfig, world_size: int, sparse_ids: bool) -> str:
    blob = json.dumps(
        # a run resumes only a checkpoint of identical options, epochs included (a finished 3-epoch run is not a
        # 2-epoch run, and the learning-rate schedule depends on the budget), and of the same optimizer (a dense
        # Adam's state does not fit train.optim.SplitAdam's)
        {"opt": {k: str(v) for k, v in asdict(options).items() if k not in ("version", "update_db", "resume")},
         "cfg": cfg.to_json(), "data": prepared.fingerprint, **({"world": world_size} if world_size > 1 else {}),
         **({"sparse_ids": True} if sparse_ids else {})},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train(
    db: Database,
    options: TrainOptions,
    on_epoch: Callable[[EpochStats, bool], None] | None = None,
    on_batch: Callable[[int, float], None] | None = None,
    on_start: Callable[[Prepared, int, int], None] | None = None,
    on_refit: Callable[[int, int], None] | None = None,
) -> TrainResult:
    options.validate()
    out_dir = writable_directory(options.output_dir, InputError, "--output-dir")
    world = World.from_env()
    device = _device(options.device, world)
    torch.manual_seed(options.seed)
    with db.direct() as conn:
        prepared = prepare(conn)
    p = prepared.pipeline
    tower = dict(options.tower)
    hist_cfg = HistoryConfig(int(tower.pop("max_likes", 50)), int(tower.pop("max_nopes", 20)))
    cfg = TowerConfig(
        embedding_dim=options.embedding_dim,
        n_items=len(p.items),
        n_tags=len(p.tags),
        n_performers=len(p.performers),
        n_categorical=tuple(len(p.categorical[f]) for f in ("maker", "label", "series", "director")),  # type: ignore[arg-type]
        numeric_width=p.numeric_width,
        stats_width=STATS_WIDTH,
        max_tags=p.max_tags,
        max_performers=p.max_performers,
        max_likes=hist_cfg.max_likes,
        max_nopes=hist_cfg.max_nopes,
        **tower,
    )
    tables = FeatureTables(prepared.features, device, cfg.history_tags, cfg.history_performers)
    batch_size, learning_rate = resolve_batch(options, device)
    train_config = TrainConfig(
        epochs=options.epochs, batch_size=batch_size, learning_rate=learning_rate,
        seed=options.seed, patience=options.patience, lr_schedule=options.lr_schedule,
        id_weight_decay=options.id_weight_decay, precision=options.precision,
    )  # fmt: skip

    # phase 1: train on the training period minus validation; early stopping picks the number of epochs
    trainer = Trainer(
        TwoTowerModel(cfg).to(device), tables,
        Histories(prepared.log, prepared.split.fit, len(prepared.catalog), hist_cfg),
        train_config, valid=_valid_targets(prepared, train_config.max_valid_users), world=world,
    )  # fmt: skip
    if trainer.n_examples == 0:
        raise InputError("no training likes left after the temporal split: more swipes are needed")
    # a checkpoint resumes only with the same world size (the shards of an epoch depend on it)
    run_dir = out_dir / ".checkpoints" / _run_key(options, prepared, cfg, world.size, trainer.sparse_ids)
    resumed = _restore(trainer, run_dir / "select", options.resume)
    if on_start is not None:
        on_start(prepared, trainer.positives_per_epoch, resumed)
    best_state = _fit(trainer, world, device, run_dir / "select", options.epochs, on_epoch, on_batch)
    model = trainer.model
    history = trainer.state.history
    best_epoch = trainer.state.best_epoch

    # phase 2: the same recipe, same seed, on the whole training period for the chosen number of epochs. The
    # validation likes are the most recent ones before the test period: the model should not miss them.
    if options.refit and best_epoch > 0:
        refit = Trainer(
            TwoTowerModel(cfg).to(device), tables,
            Histories(prepared.log, prepared.split.train, len(prepared.catalog), hist_cfg),
            train_config, valid=None, world=world,
        )  # fmt: skip
        _restore(refit, run_dir / "refit", options.resume)
        if on_refit is not None:
            on_refit(refit.positives_per_epoch, best_epoch)
        best_state = _fit(refit, world, device, run_dir / "refit", best_epoch, on_epoch, on_batch)
        model = refit.model
    model.load_state_dict(best_state)
    model.eval()
    # rank 0 names the version (clocks of different ranks can disagree), writes, and the others wait for it
    version = world.broadcast_name(options.version or time.strftime("%Y%m%d-%H%M%S") + f"-d{cfg.embedding_dim}")
    directory = out_dir / version
    if world.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        save_model(directory, model)
        p.save(directory / "features.json")
        (directory / "training.json").write_text(
            json.dumps(
                {
                    "version": version,
                    "data_fingerprint": prepared.fingerprint,
                    "data": prepared.summary(),
                    "window": prepared.window(),
                    "options": {k: str(v) for k, v in asdict(options).items()},
                    "best_epoch": best_epoch,
                    "best_valid_recall_at_20": trainer.state.best_recall,
                    "refit_on_full_training_period": bool(options.refit and best_epoch > 0),
                    "history": [asdict(h) for h in history],
                    "resumed_from_epoch": resumed,
                    "device": str(device),
                    "batch_size_per_process": batch_size,
                    "learning_rate": learning_rate,
                    "world_size": world.size,
                    "libraries": {"torch": torch.__version__, "numpy": np.__version__,
                                  "python": platform.python_version()},
                },
                indent=2,
            )
        )  # fmt: skip
    world.barrier()
    world.close()
    return TrainResult(version, directory, model, prepared, history, best_epoch, resumed, world.is_main)


def _restore(trainer: Trainer, directory: Path, resume: bool) -> int:
    """Load the checkpoint of an interrupted identical run, if any; the epoch it had completed."""
    return trainer.state.epoch if resume and load_checkpoint(trainer, directory) else 0


def _fit(
    trainer: Trainer,
    world: World,
    device: torch.device,
    ckpt_dir: Path,
    epochs: int,
    on_epoch: Callable[[EpochStats, bool], None] | None,
    on_batch: Callable[[int, float], None] | None,
) -> dict[str, torch.Tensor]:
    """Train up to ``epochs`` (early stopping when validating), checkpointing every epoch; the best weights."""

    model = trainer.model
    trainer.train_model = world.wrap(model, device)
    best_path = ckpt_dir / "best.safetensors"
    best_state = (
        load_file(str(best_path), device=str(device))
        if trainer.state.epoch and best_path.is_file()
        else copy.deepcopy(model.state_dict())
    )
    for epoch in range(trainer.state.epoch + 1, epochs + 1):
        if trainer.should_stop():
            break
        stats = trainer.train_epoch(epoch, on_batch)
        better = trainer.improved(stats)
        if better:  # every rank holds the same weights and the same decision (improved() sees rank 0's figure)
            best_state = copy.deepcopy(model.state_dict())
        if world.is_main:
            if better:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                save_file({k: v.detach().cpu().contiguous() for k, v in best_state.items()}, str(best_path))
            save_checkpoint(trainer, ckpt_dir)
        world.barrier()  # a checkpoint on disk is one every rank has reached
        if on_epoch is not None:
            on_epoch(stats, better)
        if world.agree_to_stop(trainer.should_stop()):
            break
    return best_state

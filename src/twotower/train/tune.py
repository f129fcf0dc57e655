"""``twotower tune``: search the model and optimiser settings with Optuna, on the validation split only.

Each trial trains the first phase of ``twotower train`` (the training period minus validation, early stopping
on validation Recall@20; no refit) and is scored by its best validation Recall@20: the test period is never
read. Hopeless trials stop early (median pruning on the per-epoch validation figure). The study lives in the
database (schema ``optuna``), so an interrupted search resumes where it stopped: ``--trials`` bounds the
finished trials of the study, not of one run, and a trial left running by a killed process is retried.
The best settings are written as a config file that ``train --config`` and ``deploy --config`` read.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psycopg
from optuna.storages import RetryHeartbeatStaleTrialCallback

from twotower.db import Database
from twotower.db.rls import close_schema
from twotower.errors import InputError
from twotower.train.config_file import read_config
from twotower.train.run import TrainOptions, train

__all__ = ["SCHEMA", "TuneOptions", "TuneResult", "suggest", "tune"]

SCHEMA = "optuna"
_HEARTBEAT_SECONDS = 30  # a running trial whose process stops beating for twice this long is failed and retried


@dataclass
class TuneOptions:
    trials: int = 20  # finished trials (complete or pruned) the study should have
    timeout: float | None = None  # seconds for this run
    study: str = "twotower"
    epochs: int = 20
    patience: int = 3
    seed: int = 0
    embedding_dim: int = 64
    device: str = "auto"
    output: Path = Path("tuned.json")

    def validate(self) -> None:
        if not 1 <= self.trials <= 10_000:
            raise InputError(f"--trials must be between 1 and 10000, got {self.trials}")
        if self.timeout is not None and not self.timeout > 0:
            raise InputError(f"--timeout must be a positive number of seconds, got {self.timeout:g}")
        if not self.study or len(self.study) > 128 or not self.study.isprintable():
            raise InputError("--study: a name of 1 to 128 printable characters")
        TrainOptions(embedding_dim=self.embedding_dim, epochs=self.epochs, patience=self.patience).validate()


@dataclass
class TuneResult:
    study: str
    best_value: float
    best_trial: int
    config: dict[str, Any]  # what was written to the output file
    finished: int  # complete + pruned trials in the study
    ran: int  # trials this run started


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """One point of the search space: ``{"train": TrainOptions fields, "tower": TowerConfig fields}``. The
    attention tower's settings are searched only in the trials that use it (Optuna's define-by-run space)."""
    point = {
        "train": {
            "learning_rate": trial.suggest_float("learning_rate", 5e-4, 1e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [256, 512, 1024]),
            "lr_schedule": trial.suggest_categorical("lr_schedule", ["constant", "cosine"]),
            "id_weight_decay": trial.suggest_float("id_weight_decay", 1e-7, 1e-3, log=True),
        },
        "tower": {
            "temperature": trial.suggest_float("temperature", 0.02, 0.2, log=True),
            "hidden_dim": trial.suggest_categorical("hidden_dim", [128, 256, 512]),
            "field_dim": trial.suggest_categorical("field_dim", [16, 32, 64]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
            "id_dropout": trial.suggest_float("id_dropout", 0.0, 0.4),
            "history_dropout": trial.suggest_float("history_dropout", 0.0, 0.5),
            "history_pooling": trial.suggest_categorical("history_pooling", ["mean", "learned"]),
            "history_ids": trial.suggest_categorical("history_ids", [False, True]),
            "uniform_negatives": trial.suggest_categorical("uniform_negatives", [512, 1024, 2048, 4096]),
            "next_likes": trial.suggest_int("next_likes", 1, 4),
            "logq_weight": trial.suggest_float("logq_weight", 0.0, 1.0),
            "max_likes": trial.suggest_categorical("max_likes", [20, 50, 100]),
            "user_encoder": trial.suggest_categorical("user_encoder", ["pooled", "attention"]),
        },
    }
    if point["tower"]["user_encoder"] == "attention":
        point["tower"].update(
            attention_layers=trial.suggest_int("attention_layers", 1, 2),
            attention_heads=trial.suggest_categorical("attention_heads", [1, 2, 4]),
            attention_dim=trial.suggest_categorical("attention_dim", [32, 64, 128]),
            attention_dropout=trial.suggest_float("attention_dropout", 0.0, 0.3),
        )
    return point


@contextmanager
def _storage(db: Database) -> Iterator[optuna.storages.RDBStorage]:
    """Optuna's tables in the schema ``optuna`` of our database, over psycopg 3 (no URL re-parsing)."""

    with db.direct(autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(db.conninfo, options=f"-c search_path={SCHEMA}", application_name="twotower tune")

    with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and the replacement of a deprecated one
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            "postgresql+psycopg://",
            engine_kwargs={"creator": connect},
            heartbeat_interval=_HEARTBEAT_SECONDS,
            grace_period=2 * _HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )

    with db.direct(autocommit=True) as conn:  # its tables exist now: closed to a Supabase project's anon/authenticated
        close_schema(conn, SCHEMA)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def _finished(study: optuna.Study) -> int:

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def tune(
    db: Database,
    options: TuneOptions,
    *,
    on_trial: Callable[[optuna.trial.FrozenTrial, int], None] | None = None,
) -> TuneResult:
    """Run trials until the study has ``options.trials`` finished ones (or the timeout); write the best config."""

    options.validate()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _storage(db) as storage:
        study = optuna.create_study(
            study_name=options.study, storage=storage, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=5),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
        )  # fmt: skip
        ran = 0

        def objective(trial: optuna.Trial) -> float:
            nonlocal ran
            ran += 1
            config = suggest(trial)
            trial.set_user_attr("config", config)
            return _train_trial(db, options, trial, config)

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            done = _finished(study)
            if on_trial is not None:
                on_trial(trial, done)
            if done >= options.trials:
                study.stop()

        remaining = options.trials - _finished(study)
        if remaining > 0:
            # a failure inside a trial (bad data, a full disk) is the run's failure, not a data point
            study.optimize(objective, n_trials=remaining, timeout=options.timeout, callbacks=[after], catch=())
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            raise InputError(
                f"study {options.study!r} has no completed trial yet: give it more --trials or a longer --timeout"
            )
        best = study.best_trial
        config = {
            "tuned": {
                "study": options.study, "trial": best.number, "valid_recall_at_20": best.value,
                "finished_trials": _finished(study), "epochs": options.epochs,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "train": {**best.user_attrs["config"]["train"], "embedding_dim": options.embedding_dim},
            "tower": best.user_attrs["config"]["tower"],
        }  # fmt: skip
        _write(options.output, config)
        return TuneResult(options.study, float(best.value or 0.0), best.number, config, _finished(study), ran)


def _train_trial(db: Database, options: TuneOptions, trial: optuna.Trial, config: dict[str, Any]) -> float:

    def on_epoch(stats: Any, better: bool) -> None:
        if not math.isnan(stats.valid_recall_at_20):
            trial.report(stats.valid_recall_at_20, stats.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    with tempfile.TemporaryDirectory(prefix="twotower-tune-") as tmp:
        train_options = TrainOptions(
            embedding_dim=options.embedding_dim, epochs=options.epochs, patience=options.patience,
            seed=options.seed, device=options.device, output_dir=Path(tmp), version=f"trial-{trial.number}",
            resume=False, refit=False, tower=dict(config["tower"]), **config["train"],
        )  # fmt: skip
        result = train(db, train_options, on_epoch=on_epoch)
    values = [h.valid_recall_at_20 for h in result.history if not math.isnan(h.valid_recall_at_20)]
    if not values:
        raise InputError("no validation users (each needs >= 5 training likes): tuning needs more swipes")
    return max(values)


def _write(path: Path, config: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a file, and the result is readable by ``read_config``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"--output {path}: {exc.strerror}") from None
    read_config(path)

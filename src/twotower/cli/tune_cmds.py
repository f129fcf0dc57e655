"""``twotower tune``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from twotower.cli.console import open_db, out
from twotower.cli.train_cmds import db_url_settings

if TYPE_CHECKING:
    import optuna


def tune(
    trials: int = typer.Option(20, "--trials", help="Finished trials the study should have (resumed runs count)."),
    timeout: float | None = typer.Option(
        None, "--timeout", help="Stop starting trials after this many seconds.", show_default=False
    ),
    study: str = typer.Option("twotower", "--study", help="Study name: the same name resumes its search."),
    output: Path = typer.Option(Path("tuned.json"), "--output", help="Where the best settings are written."),
    epochs: int = typer.Option(20, "--epochs", help="Maximum epochs per trial (early stopping on validation)."),
    patience: int = typer.Option(3, "--patience", min=1, help="Epochs without improvement before a trial stops."),
    embedding_dim: int = typer.Option(64, "--embedding-dim", help="Embedding dimension (fixed during the search)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sampler and of every trial's training."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when available), cpu, cuda, cuda:N."),
    db_url: str | None = typer.Option(
        None, "--db-url", help="Postgres URL (default: DATABASE_URL, or the embedded database).", show_default=False
    ),
) -> None:
    """Search the model and optimiser settings with Optuna on the validation split (never the test split).

    The study is stored in the database, so a stopped search resumes. The best settings go to --output, for
    `twotower train --config FILE` and `twotower deploy --config FILE`. tune takes no --config: every trial starts
    from the defaults and searches the learning rate, batch size, schedule, field and hidden dims, dropouts,
    pooling, negatives, next likes and the logQ weight; to train from other settings, edit the --output file."""
    from twotower.train import allocator  # lazy: torch, 2.5 s of CLI start

    allocator.reuse_freed_memory()  # this process trains: a step's tensors reuse the last step's pages
    from twotower.train.tune import TuneOptions  # lazy: torch, 2.5 s of CLI start
    from twotower.train.tune import tune as run_tune  # lazy: torch, 2.5 s of CLI start

    options = TuneOptions(
        trials=trials, timeout=timeout, study=study, epochs=epochs, patience=patience, seed=seed,
        embedding_dim=embedding_dim, device=device, output=output,
    )  # fmt: skip
    options.validate()
    db_url_settings(db_url)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(), console=out,
    )  # fmt: skip
    task = progress.add_task(f"study {study}", total=trials, best="-")
    best = {"value": -math.inf}

    def on_trial(trial: optuna.trial.FrozenTrial, finished: int) -> None:
        value = trial.value if trial.value is not None else math.nan
        if trial.state.name == "COMPLETE" and value > best["value"]:
            best["value"] = value
        shown = "-" if best["value"] == -math.inf else f"{best['value']:.4f}"
        progress.update(task, completed=finished, best=shown)
        figure = f"valid Recall@20 {value:.4f}" if trial.state.name == "COMPLETE" else trial.state.name.lower()
        progress.console.print(f"trial {trial.number:>3}  {figure}")

    with open_db() as db, progress:
        result = run_tune(db, options, on_trial=on_trial)
    out.print(
        f"study {result.study}: {result.finished} finished trial(s), {result.ran} run now; best trial "
        f"{result.best_trial}, valid Recall@20 {result.best_value:.4f}"
    )
    out.print(f"settings written to {output}; next: twotower train --config {output}")

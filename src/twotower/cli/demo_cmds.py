"""``twotower demo``: the whole pipeline on the embedded database, with no configuration."""

from __future__ import annotations

from pathlib import Path

import typer

from twotower.cli.console import err, out
from twotower.ingest.movielens import BUNDLED_MOVIELENS
from twotower.settings import get_settings


def demo(
    movielens: bool = typer.Option(
        False, "--movielens", help="Use the MovieLens sample that ships with the repository instead of synthetic data."
    ),
    movielens_dir: Path | None = typer.Option(
        None,
        "--movielens-dir",
        help="Use this MovieLens folder (ratings.csv, movies.csv, tags.csv) instead.",
        show_default=False,
    ),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Keep serving the API until Ctrl-C."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port of the API on 127.0.0.1."),
    videos: int = typer.Option(3000, "--videos", min=1, help="Synthetic videos."),
    users: int = typer.Option(600, "--users", min=1, help="Synthetic users."),
    decisions: int = typer.Option(50_000, "--decisions", min=0, help="Synthetic swipes (likes + nopes)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed of the data and the training."),
    epochs: int = typer.Option(3, "--epochs", min=1, max=1000, help="Maximum training epochs."),
) -> None:
    """Everything at once, no configuration: embedded Postgres, a catalog and swipes (synthetic with planted
    tastes, or MovieLens), train, validate, deploy, serve, recommendations for three users over HTTP, the
    evaluation table against the baselines and the quality report. A second run reuses the data and the model."""
    from twotower.demo import DemoOptions, run_demo  # lazy: fastapi+scipy, 1.8 s of CLI start

    if movielens and movielens_dir is None:
        movielens_dir = BUNDLED_MOVIELENS
    options = DemoOptions(movielens=movielens_dir, serve=serve, port=port, videos=videos, users=users,
                          decisions=decisions, seed=seed, epochs=epochs)  # fmt: skip
    run_demo(options, get_settings(), out, err)

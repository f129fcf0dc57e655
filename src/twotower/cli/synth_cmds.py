"""``twotower synth``: a synthetic catalog and swipes with planted tastes."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from twotower.cli.console import open_db, out
from twotower.errors import InputError


def synth(
    videos: int = typer.Option(2000, "--videos", min=1, help="Number of videos."),
    users: int = typer.Option(300, "--users", min=1, help="Number of users."),
    decisions: int = typer.Option(30000, "--decisions", min=0, help="Number of swipes (likes + nopes)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed: the same seed gives the same data."),
    tastes: int = typer.Option(12, "--tastes", min=1, help="Number of planted latent tastes."),
    truth_out: Path | None = typer.Option(
        None, "--truth-out", help="Write the planted tastes (users and videos) to this JSON file."
    ),
) -> None:
    """Generate a catalog and users whose likes follow planted tastes (deterministic by --seed)."""
    from twotower.synth import SynthConfig, generate  # lazy: numpy, 0.4 s of CLI start

    config = SynthConfig(videos=videos, users=users, decisions=decisions, seed=seed, tastes=tastes)
    with open_db() as db, db.direct() as conn, out.status("generating ...") as status, conn.transaction():
        result = generate(conn, config, progress=lambda msg: status.update(msg))
    v, d = result.videos, result.decisions
    out.print(
        f"videos: {v.inserted:,} inserted, {v.unchanged:,} unchanged; "
        f"decisions: {d.inserted:,} inserted, {d.unchanged:,} unchanged; "
        f"{config.tastes} planted tastes; {result.seconds:.1f}s"
    )
    if truth_out is not None:
        try:
            truth_out.write_text(
                json.dumps(
                    {
                        "seed": seed,
                        "user_tastes": {str(k): t for k, t in result.user_tastes.items()},
                        "video_tastes": result.video_tastes,
                    }
                )
            )
        except OSError as exc:
            raise InputError(f"cannot write {truth_out}: {exc.strerror}") from None
        out.print(f"planted tastes written to {truth_out}")

"""``twotower import``: load a catalog, swipes, or MovieLens from files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from twotower.cli.console import err, open_db, out
from twotower.db import Database
from twotower.errors import TwoTowerError
from twotower.ingest.service import ImportReport, import_catalog, import_decisions, import_movielens
from twotower.registry.store import open_store
from twotower.settings import get_settings

app = typer.Typer(
    help="Import files. Re-running an import adds nothing new. Bad rows are skipped and listed with their "
    "line numbers; with --strict any bad row rejects the whole file and nothing is written.",
    no_args_is_help=True,
)

_STRICT = typer.Option(False, "--strict", help="Reject the whole file if any row is bad (exit non-zero).")
_EMBED = typer.Option(True, "--embed/--no-embed", help="Embed new and changed videos with the active model version.")
_SOURCE = typer.Option(
    "catalog", "--source", help="Source of the videos (videos.source) and namespace of non-UUID user ids."
)


def _print(report: ImportReport, title: str) -> None:
    table = Table(title=title)
    for col in ("", "read", "inserted", "updated", "unchanged"):
        table.add_column(col, justify="right" if col else "left")
    if report.videos is not None:
        v = report.videos
        table.add_row("videos", f"{v.read:,}", f"{v.inserted:,}", f"{v.updated:,}", f"{v.unchanged:,}")
    if report.decisions is not None:
        d = report.decisions
        table.add_row(
            "decisions",
            f"{d.read:,}",
            f"{d.inserted:,}",
            f"{d.updated:,}",
            f"{d.unchanged:,}",
        )
    out.print(table)
    if report.videos is not None and (report.videos.tags_linked or report.videos.tags_unlinked):
        v = report.videos
        out.print(
            f"tag links: +{v.tags_linked:,} -{v.tags_unlinked:,}; performer links: "
            f"+{v.performers_linked:,} -{v.performers_unlinked:,}"
        )
    if report.ratings is not None:
        r = report.ratings
        out.print(
            f"ratings: {r.likes:,} likes (≥ 4), {r.nopes:,} nopes (≤ 2), "
            f"{r.neutral:,} without a decision (between 2 and 4)"
        )
    if report.problems:
        err.print(f"skipped {len(report.problems):,} bad row(s):", markup=False)
        for line in report.problems.summary():
            err.print(f"  {line}", markup=False)
    else:
        out.print("no bad rows")


def _embed_new(db: Database, embed: bool) -> None:
    """New videos get their embeddings on arrival (nothing to do before the first deploy)."""
    from twotower.catalog import embed_missing  # lazy: numpy+httpx, 0.4 s of CLI start

    if not embed:
        return
    settings = get_settings()
    try:
        with out.status("embedding new videos ..."):
            version, count = embed_missing(
                db, open_store(settings), settings.data_dir.expanduser().absolute() / "models"
            )
    except TwoTowerError as exc:
        err.print(f"warning: the import is saved but new videos were not embedded: {exc.message}; run "
                  "`twotower batch-update --no-users` later", markup=False)  # fmt: skip
        return
    if version is not None:
        out.print(f"{count:,} video(s) embedded for the active version {version}")


@app.command("catalog")
def catalog_cmd(
    file: Path = typer.Argument(..., help="JSON Lines: one video object per line.", show_default=False),
    source: str = _SOURCE,
    strict: bool = _STRICT,
    embed: bool = _EMBED,
) -> None:
    """Import videos from JSONL (external_id and title required; tags and performers as lists)."""
    with open_db() as db:
        with out.status(f"importing {file} ..."):
            report = import_catalog(db, file, source=source, strict=strict)
        _print(report, f"catalog {file}")
        _embed_new(db, embed)


@app.command("decisions")
def decisions_cmd(
    file: Path = typer.Argument(
        ...,
        help="CSV with user_id, video_id or external_id, decision_type[, created_at].",
        show_default=False,
    ),
    source: str = _SOURCE,
    strict: bool = _STRICT,
) -> None:
    """Import swipes (like/nope) from CSV; swipes on unknown videos are reported with their line numbers."""
    with open_db() as db, out.status(f"importing {file} ..."):
        report = import_decisions(db, file, source=source, strict=strict)
    _print(report, f"decisions {file}")


@app.command("movielens")
def movielens_cmd(
    directory: Path = typer.Argument(
        ..., help="A MovieLens folder (movies.csv, ratings.csv[, tags.csv, links.csv]).", show_default=False
    ),
    strict: bool = _STRICT,
    embed: bool = _EMBED,
) -> None:
    """Import MovieLens: rating ≥ 4 → like, ≤ 2 → nope; genres and tags.csv → tags; title year → release."""
    with open_db() as db:
        with out.status(f"importing {directory} ..."):
            report = import_movielens(db, directory, strict=strict)
        _print(report, f"MovieLens {directory}")
        _embed_new(db, embed)

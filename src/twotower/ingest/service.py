"""Run an import end to end: read, validate, load in one transaction, report.

Default: bad rows are skipped and reported with their line numbers. ``strict=True``: any bad row rejects the
whole file and nothing is written (the transaction is rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twotower.db import Database
from twotower.errors import ImportRejected
from twotower.ingest import catalog_jsonl, decisions_csv, movielens
from twotower.ingest.loader import DecisionLoadResult, VideoLoadResult, load_decisions, load_videos
from twotower.ingest.records import Problems

__all__ = ["ImportReport", "import_catalog", "import_decisions", "import_movielens"]


@dataclass
class ImportReport:
    path: Path
    videos: VideoLoadResult | None = None
    decisions: DecisionLoadResult | None = None
    ratings: movielens.RatingCounts | None = None
    problems: Problems = field(default_factory=Problems)

    @property
    def skipped(self) -> int:
        return len(self.problems)


def _reject_if_strict(report: ImportReport, strict: bool, what: str) -> None:
    if strict and report.problems:
        n = len(report.problems)
        raise ImportRejected(
            f"{report.path}: {n} bad row{'s' if n != 1 else ''} in {what}; nothing was imported (--strict). "
            f"First: {report.problems.sorted()[0]}",
            report.problems.summary(),
        )


def import_catalog(db: Database, path: Path, *, source: str = "catalog", strict: bool = False) -> ImportReport:
    report = ImportReport(path)
    records = catalog_jsonl.read_catalog_jsonl(path, source, report.problems)
    _reject_if_strict(report, strict, "the catalog")
    with db.direct() as conn, conn.transaction():
        report.videos = load_videos(conn, records)
    return report


def import_decisions(db: Database, path: Path, *, source: str = "catalog", strict: bool = False) -> ImportReport:
    report = ImportReport(path)
    with db.direct() as conn, conn.transaction():
        report.decisions = load_decisions(
            conn, decisions_csv.read_decisions_csv(path, source, report.problems), report.problems
        )
        _reject_if_strict(report, strict, "the decisions")  # raising here rolls the transaction back
    return report


def import_movielens(db: Database, directory: Path, *, strict: bool = False) -> ImportReport:
    files = movielens.MovieLensFiles.find(directory)
    report = ImportReport(directory, ratings=movielens.RatingCounts())
    records = movielens.read_movies(files, report.problems)
    _reject_if_strict(report, strict, "movies.csv/tags.csv/links.csv")
    assert report.ratings is not None
    with db.direct() as conn, conn.transaction():
        report.videos = load_videos(conn, records)
        report.decisions = load_decisions(
            conn, movielens.read_ratings(files, report.problems, report.ratings), report.problems
        )
        _reject_if_strict(report, strict, "the MovieLens files")
    return report

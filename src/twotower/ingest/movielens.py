"""``twotower import movielens DIR``: the MovieLens ``ml-latest-small`` layout, for evaluation.

``movies.csv`` → videos (source ``movielens``, external id ``movieId``; the year in the title → released at;
genres → tags); ``tags.csv`` free-text tags → tags of the movie; ``links.csv`` (optional) → ``raw``;
``ratings.csv`` → swipes: rating ≥ 4 is a like, ≤ 2 a nope, anything between no decision. MovieLens user
ids map to stable UUIDs (namespace ``movielens``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from twotower.errors import NotFound
from twotower.ingest.parsing import parse_decision_time, read_csv_rows, release_date_problem, shown
from twotower.ingest.records import DecisionRecord, Problems, VideoRecord, user_uuid

__all__ = ["BUNDLED_MOVIELENS", "SOURCE", "MovieLensFiles", "RatingCounts", "read_movies", "read_ratings"]

# the ml-latest-small sample shipped with the repository (its README carries the licence; a source checkout only)
BUNDLED_MOVIELENS = Path(__file__).resolve().parents[3] / "data" / "movielens" / "ml-latest-small"

SOURCE = "movielens"
LIKE_AT = 4.0
NOPE_AT = 2.0
_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$")
_NO_GENRES = "(no genres listed)"


@dataclass(frozen=True)
class MovieLensFiles:
    movies: Path
    ratings: Path
    tags: Path | None
    links: Path | None

    @classmethod
    def find(cls, directory: Path) -> MovieLensFiles:
        if not directory.is_dir():
            raise NotFound(f"{directory}: not a directory (expected a MovieLens folder with movies.csv)")
        missing = [n for n in ("movies.csv", "ratings.csv") if not (directory / n).is_file()]
        if missing:
            raise NotFound(f"{directory}: missing {' and '.join(missing)} (expected the MovieLens layout)")

        def optional(name: str) -> Path | None:
            return directory / name if (directory / name).is_file() else None

        return cls(directory / "movies.csv", directory / "ratings.csv", optional("tags.csv"), optional("links.csv"))


@dataclass
class RatingCounts:
    likes: int = 0
    nopes: int = 0
    neutral: int = 0


def split_title(title: str) -> tuple[str, datetime | None]:
    match = _YEAR.match(title)
    if not match:
        return title.strip(), None
    # year 0000 (not a year) reads as 0001, which the release-date rule refuses
    return match["title"].strip() or title.strip(), datetime(max(int(match["year"]), 1), 1, 1, tzinfo=UTC)


def _free_text_tags(files: MovieLensFiles, problems: Problems) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = defaultdict(list)
    if files.tags is None:
        return tags
    for number, row in read_csv_rows(files.tags, problems, ("movieid", "tag")):
        tag = " ".join(row["tag"].split()).lower()
        if not tag:
            continue
        if len(tag) > 200:
            problems.add(number, "tag longer than 200 characters")
            continue
        tags[row["movieid"]].append(tag)
    return tags


def _links(files: MovieLensFiles, problems: Problems) -> dict[str, dict[str, str]]:
    if files.links is None:
        return {}
    return {
        row["movieid"]: {k: v for k, v in row.items() if k != "movieid" and v}
        for _, row in read_csv_rows(files.links, problems, ("movieid",))
    }


def read_movies(files: MovieLensFiles, problems: Problems) -> list[VideoRecord]:
    free_tags = _free_text_tags(files, problems)
    links = _links(files, problems)
    records = []
    for number, row in read_csv_rows(files.movies, problems, ("movieid", "title", "genres")):
        movie_id = row["movieid"]
        if not (movie_id.isascii() and movie_id.isdigit()):
            problems.add(number, f"movieId {shown(movie_id)} is not a number")
            continue
        if not row["title"]:
            problems.add(number, "empty title")
            continue
        title, released = split_title(row["title"])
        if released is not None and (problem := release_date_problem(released)):
            problems.add(number, f"the year in the title: release date {problem}")
            continue
        genres = [g for g in row["genres"].split("|") if g and g != _NO_GENRES]
        # genres keep their spelling; a free-text tag equal to a genre (any case) is that genre
        by_key = {g.lower(): g for g in genres}
        for tag in free_tags.get(movie_id, []):
            by_key.setdefault(tag, tag)
        raw: dict[str, object] = {"movielens": {"title": row["title"], "genres": genres, **links.get(movie_id, {})}}
        records.append(
            VideoRecord(
                source=SOURCE,
                external_id=movie_id,
                title=title,
                product_released_at=released,
                raw=raw,
                tags=list(by_key.values()),
                line=number,
            )
        )
    return records


def read_ratings(files: MovieLensFiles, problems: Problems, counts: RatingCounts) -> Iterator[DecisionRecord]:
    for number, row in read_csv_rows(files.ratings, problems, ("userid", "movieid", "rating", "timestamp")):
        try:
            rating = float(row["rating"])
            if not 0 <= rating <= 5:
                raise ValueError
        except ValueError:
            problems.add(number, f"invalid rating {shown(row['rating'], 20)} (expected a number from 0 to 5)")
            continue
        if not (row["userid"].isascii() and row["userid"].isdigit()):
            problems.add(number, f"userId {shown(row['userid'])} is not a number")
            continue
        if not (row["movieid"].isascii() and row["movieid"].isdigit()):
            problems.add(number, f"movieId {shown(row['movieid'])} is not a number")
            continue
        try:
            created = parse_decision_time(row["timestamp"], "timestamp")
        except ValueError as exc:
            problems.add(number, str(exc))
            continue
        if rating >= LIKE_AT:
            decision, counts.likes = "like", counts.likes + 1
        elif rating <= NOPE_AT:
            decision, counts.nopes = "nope", counts.nopes + 1
        else:
            counts.neutral += 1
            continue
        yield DecisionRecord(
            user_id=user_uuid(SOURCE, row["userid"]),
            decision_type=decision,
            created_at=created,
            source=SOURCE,
            external_id=row["movieid"],
            line=number,
        )

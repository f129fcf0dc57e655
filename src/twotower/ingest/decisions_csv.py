"""``twotower import decisions FILE.csv``: one swipe per line.

Columns (header required, any order): ``user_id``; ``video_id`` (a video's UUID) or ``external_id`` (with an
optional ``source`` column, default the ``--source`` option); ``decision_type`` (``like`` or ``nope``); and
optionally ``created_at`` (ISO 8601 or Unix seconds; default: the import time). A ``user_id`` that is not a
UUID is mapped to a stable one (the same id always gives the same UUID).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from twotower.ingest.parsing import id_problem, parse_decision_time, parse_uuid, read_csv_rows, shown
from twotower.ingest.records import DECISION_TYPES, DecisionRecord, Problems, user_uuid

__all__ = ["read_decisions_csv"]


def read_decisions_csv(path: Path, source: str, problems: Problems) -> Iterator[DecisionRecord]:
    """Stream valid swipes; bad lines go to ``problems`` with their line numbers."""
    for number, row in read_csv_rows(path, problems, ("user_id", "decision_type"), ("video_id", "external_id")):
        user = row.get("user_id", "")
        if problem := id_problem(user, "user_id"):
            problems.add(number, problem)
            continue
        decision = row.get("decision_type", "").lower()
        if decision not in DECISION_TYPES:
            problems.add(number, f"invalid decision_type {shown(row.get('decision_type', ''))} (expected like or nope)")
            continue
        created = None
        if row.get("created_at"):
            try:
                created = parse_decision_time(row["created_at"], "created_at")
            except ValueError as exc:
                problems.add(number, str(exc))
                continue
        rec = DecisionRecord(
            user_id=parse_uuid(user) or user_uuid(source, user),
            decision_type=decision,
            created_at=created,
            line=number,
        )
        if row.get("video_id"):
            rec.video_id = parse_uuid(row["video_id"])
            if rec.video_id is None:
                problems.add(number, f"video_id {shown(row['video_id'])} is not a UUID (use external_id)")
                continue
        elif row.get("external_id"):
            rec.source = row.get("source") or source
            problem = id_problem(rec.source, "source") or id_problem(row["external_id"], "external_id")
            if problem:
                problems.add(number, problem)
                continue
            rec.external_id = row["external_id"]
        else:
            problems.add(number, "missing video: give video_id or external_id")
            continue
        yield rec

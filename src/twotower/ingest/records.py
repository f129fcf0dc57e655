"""What importers hand to the loader: plain records, plus the problems found while reading a file."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "DECISION_TYPES",
    "NAMESPACE",
    "DecisionRecord",
    "Problems",
    "RowProblem",
    "VideoRecord",
    "printable",
    "user_uuid",
]

DECISION_TYPES = ("like", "nope")
# Fixed namespace: the same external user id always maps to the same UUID, in every database.
NAMESPACE = uuid.UUID("6f1c2a7e-3b9d-5e4f-8a21-7c0d9e2b4f13")


def printable(text: str, limit: int = 500) -> str:
    """``text`` for one line of a terminal or a log: control characters (newlines, escapes, NUL, U+2028...)
    written as Python escapes, at most ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def user_uuid(namespace: str, external_user_id: str) -> uuid.UUID:
    """A stable UUID for a user known by another id (MovieLens ``userId``, an app's integer ids...)."""
    return uuid.uuid5(NAMESPACE, f"user:{namespace}:{external_user_id}")


@dataclass(slots=True)
class VideoRecord:
    """One catalog item; ``tags`` and ``performers`` replace the video's current ones."""

    source: str
    external_id: str
    title: str
    description: str | None = None
    duration_seconds: int | None = None
    price: Decimal | float | None = None
    maker: str | None = None
    label: str | None = None
    series: str | None = None
    director: str | None = None
    product_released_at: datetime | None = None
    thumbnail_url: str | None = None
    sample_video_url: str | None = None
    product_url: str | None = None
    review_count: int | None = None
    review_average: float | None = None
    is_active: bool = True
    raw: dict[str, Any] | None = None
    tags: Sequence[str] = ()
    performers: Sequence[str] = ()
    line: int = 0


@dataclass(slots=True)
class DecisionRecord:
    """One swipe. The video is given by ``video_id`` or by ``(source, external_id)``."""

    user_id: uuid.UUID
    decision_type: str
    created_at: datetime | None = None
    video_id: uuid.UUID | None = None
    source: str | None = None
    external_id: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class RowProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class Problems:
    """Bad rows found while reading or loading one file, in line order."""

    items: list[RowProblem] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        """Record a problem; whatever the message quotes from the file, it stays one printable line."""
        self.items.append(RowProblem(line, printable(message)))

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def sorted(self) -> list[RowProblem]:
        return sorted(self.items, key=lambda p: p.line)

    def summary(self, limit: int = 20) -> list[str]:
        shown = [str(p) for p in self.sorted()[:limit]]
        if len(self.items) > limit:
            shown.append(f"... and {len(self.items) - limit} more")
        return shown

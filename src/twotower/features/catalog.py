"""The catalog as columns: what the feature pipeline reads, from the database or from request metadata."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

__all__ = ["CATEGORICAL_FIELDS", "Catalog", "load_catalog"]

CATEGORICAL_FIELDS = ("maker", "label", "series", "director")


@dataclass
class Catalog:
    """Column-oriented videos. Row ``i`` of every column is the video ``ids[i]``."""

    ids: list[uuid.UUID]
    tags: list[list[str]]
    performers: list[list[str]]
    categorical: dict[str, list[str | None]]  # maker, label, series, director
    price: npt.NDArray[np.float64]  # NaN when unknown
    duration_seconds: npt.NDArray[np.float64]
    released_at: npt.NDArray[np.float64]  # Unix seconds, NaN when unknown
    review_count: npt.NDArray[np.float64]
    review_average: npt.NDArray[np.float64]
    is_active: npt.NDArray[np.bool_]
    titles: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> Catalog:
        """From dicts with the ``videos`` columns plus ``tags`` / ``performers`` lists (the API's item input)."""

        def num(key: str) -> npt.NDArray[np.float64]:
            out = np.full(len(rows), np.nan)
            for i, r in enumerate(rows):
                value = r.get(key)
                if isinstance(value, datetime):
                    try:
                        out[i] = value.timestamp()
                    except (OverflowError, ValueError, OSError):  # year 1 or 9999 in local time
                        out[i] = np.nan
                elif value is not None:
                    try:
                        out[i] = float(value)
                    except (TypeError, ValueError):
                        out[i] = np.nan
            return out

        return cls(
            ids=[r["id"] if isinstance(r.get("id"), uuid.UUID) else uuid.UUID(int=i) for i, r in enumerate(rows)],
            tags=[[str(t) for t in (r.get("tags") or [])] for r in rows],
            performers=[[str(p) for p in (r.get("performers") or [])] for r in rows],
            categorical={f: [r.get(f) or None for r in rows] for f in CATEGORICAL_FIELDS},
            price=num("price"),
            duration_seconds=num("duration_seconds"),
            released_at=num("product_released_at"),
            review_count=num("review_count"),
            review_average=num("review_average"),
            is_active=np.array([bool(r.get("is_active", True)) for r in rows], dtype=bool),
            titles=[str(r.get("title") or "") for r in rows],
        )


_QUERY = """
SELECT v.id, v.title, v.price, v.duration_seconds, v.maker, v.label, v.series, v.director,
       v.product_released_at, v.review_count, v.review_average, v.is_active,
       COALESCE((SELECT array_agg(t.name ORDER BY t.name) FROM video_tags vt JOIN tags t ON t.id = vt.tag_id
                 WHERE vt.video_id = v.id), '{}') AS tags,
       COALESCE((SELECT array_agg(p.name ORDER BY p.name) FROM video_performers vp
                 JOIN performers p ON p.id = vp.performer_id WHERE vp.video_id = v.id), '{}') AS performers
FROM videos v
"""


# the given ids: tags and performers aggregated for those videos only, in one pass each (the correlated subqueries
# of _QUERY cost ~60 us a video, most of a batch chunk's catalog load)
_BY_IDS = """
WITH v AS MATERIALIZED (
    SELECT id, title, price, duration_seconds, maker, label, series, director, product_released_at, review_count,
           review_average, is_active
    FROM videos WHERE id = ANY(%(ids)s::uuid[])
), tg AS (
    SELECT vt.video_id, array_agg(t.name ORDER BY t.name) AS tags
    FROM v JOIN video_tags vt ON vt.video_id = v.id JOIN tags t ON t.id = vt.tag_id GROUP BY vt.video_id
), pf AS (
    SELECT vp.video_id, array_agg(p.name ORDER BY p.name) AS performers
    FROM v JOIN video_performers vp ON vp.video_id = v.id JOIN performers p ON p.id = vp.performer_id
    GROUP BY vp.video_id
)
SELECT v.*, COALESCE(tg.tags, '{}') AS tags, COALESCE(pf.performers, '{}') AS performers
FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS w(id, n) JOIN v ON v.id = w.id
LEFT JOIN tg ON tg.video_id = v.id LEFT JOIN pf ON pf.video_id = v.id
ORDER BY w.n
"""


def load_catalog(conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID] | None = None) -> Catalog:
    """Every video in natural-key order (source, external_id), the same in every database; or the given ids,
    in the given order (unknown ids are skipped)."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        if ids is None:
            rows = cur.execute(_QUERY + " ORDER BY v.source, v.external_id").fetchall()
        else:
            rows = cur.execute(_BY_IDS, {"ids": list(ids)}).fetchall()
    return Catalog.from_rows(rows)

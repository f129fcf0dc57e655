"""The catalog as columns: what the feature pipeline reads, from the database or from request metadata."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

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


_COLUMNS = sql.SQL(
    "SELECT v.id, v.title, v.price, v.duration_seconds, v.maker, v.label, v.series, v.director, "
    "v.product_released_at, v.review_count, v.review_average, v.is_active FROM videos v"
)
_LISTS = {  # name: (query, the video id column)
    "tags": (sql.SQL("SELECT vt.video_id, t.name FROM video_tags vt JOIN tags t ON t.id = vt.tag_id"), "vt"),
    "performers": (
        sql.SQL("SELECT vp.video_id, p.name FROM video_performers vp JOIN performers p ON p.id = vp.performer_id"),
        "vp",
    ),
}

# Each statement is linear in its input under any plan the planner may pick, custom or generic (a generic plan
# guesses 10 elements for an array parameter): an id filter is an index condition (``= ANY``), never a join of
# ``unnest(ids)`` with a derived table, whose nested-loop plan is quadratic in the number of ids. The rows are put
# together in Python, in the given order.


def _by_ids(alias: str, column: str) -> sql.Composable:
    return sql.SQL(" WHERE {} = ANY(%(ids)s::uuid[])").format(sql.Identifier(alias, column))


_gc_lock = threading.Lock()
_gc_paused = [0, False]  # how many loads run, whether the collector was on before the first


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while rows become Python objects: a load of many rows creates only acyclic
    ones, and the collections it would trigger scan every object of the process (the load's cost grows faster
    than its size: 20,000 rows took 1.9 times as long with the collector on). Safe with several threads."""
    with _gc_lock:
        if _gc_paused[0] == 0:
            _gc_paused[1] = gc.isenabled()
            gc.disable()
        _gc_paused[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused[0] -= 1
            if _gc_paused[0] == 0 and _gc_paused[1]:
                gc.enable()


def load_catalog(conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID] | None = None) -> Catalog:
    """Every video in natural-key order (source, external_id), the same in every database; or the given ids,
    in the given order (unknown ids are skipped; a repeated id comes back once)."""
    with _collector_paused():
        return _load_catalog(conn, ids)


def _load_catalog(conn: psycopg.Connection[Any], ids: Sequence[uuid.UUID] | None) -> Catalog:
    params: dict[str, Any] = {}
    if ids is not None:
        if not len(ids):
            return Catalog.from_rows([])
        params = {"ids": list(dict.fromkeys(ids))}
    where = _by_ids("v", "id") if ids is not None else sql.SQL(" ORDER BY v.source, v.external_id")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_COLUMNS + where, params).fetchall()
    for name, (query, alias) in _LISTS.items():
        lists: dict[uuid.UUID, list[str]] = {}
        statement = query + _by_ids(alias, "video_id") if ids is not None else query
        for video, value in conn.execute(statement, params).fetchall():
            lists.setdefault(video, []).append(value)
        for row in rows:
            row[name] = sorted(lists.get(row["id"], ()))
    if ids is not None:
        at = {row["id"]: row for row in rows}
        rows = [at[i] for i in params["ids"] if i in at]
    return Catalog.from_rows(rows)

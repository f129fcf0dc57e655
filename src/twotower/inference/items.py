"""Every video's encoded features for one model, by id: the user tower's input table at request time.

Loaded once per model version (and reloaded when the catalog changes), so a request turns the ids of its
history into rows with a dict lookup instead of re-reading and re-encoding the videos' metadata.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import psycopg

from twotower.features.catalog import load_catalog
from twotower.features.pipeline import FeaturePipeline, ItemFeatures

__all__ = ["ItemIndex", "catalog_stamp"]


def catalog_stamp(conn: psycopg.Connection[Any]) -> tuple[int, datetime | None]:
    """Changes whenever a video is added, removed or updated."""
    row = conn.execute("SELECT count(*), max(updated_at) FROM videos").fetchone()
    assert row is not None
    return int(row[0]), row[1]


@dataclass(frozen=True)
class ItemIndex:
    table: ItemFeatures  # one row per video, then a padding row
    row: dict[uuid.UUID, int]
    stamp: tuple[int, datetime | None]

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], pipeline: FeaturePipeline, chunk: int = 20_000) -> ItemIndex:
        """Read and encode every video, ``chunk`` at a time (the metadata of 100k videos as Python objects would
        cost several times the encoded arrays)."""
        stamp = catalog_stamp(conn)  # read first: an update racing the load makes the next check reload
        ids = [r[0] for r in conn.execute("SELECT id FROM videos ORDER BY source, external_id").fetchall()]
        parts = [pipeline.transform(load_catalog(conn, ids[i : i + chunk])) for i in range(0, len(ids), chunk)]
        names = ("item_id", "tags", "performers", "categorical", "numeric")
        if parts:
            table = ItemFeatures(*(np.concatenate([getattr(p, n) for p in parts]) for n in names))
        else:
            table = pipeline.transform(load_catalog(conn, []))
        _release_memory()
        return cls(table.with_padding_row(), {vid: i for i, vid in enumerate(ids)}, stamp)

    @property
    def pad(self) -> int:
        return len(self.table) - 1

    def gather(
        self, conn: psycopg.Connection[Any], pipeline: FeaturePipeline, ids: Sequence[uuid.UUID]
    ) -> ItemFeatures:
        """Features of these videos in order (videos newer than the index are read and encoded on the spot),
        followed by a padding row."""
        rows = np.array([self.row.get(v, -1) for v in ids], dtype=np.int64)
        known = self.table.take(np.where(rows >= 0, rows, self.pad))
        missing = [v for v, r in zip(ids, rows, strict=True) if r < 0]
        if missing:
            catalog = load_catalog(conn, missing)  # a video deleted meanwhile stays a padding row
            fresh = pipeline.transform(catalog)
            at = {v: i for i, v in enumerate(catalog.ids)}
            for i, vid in enumerate(ids):
                j = at.get(vid)
                if rows[i] < 0 and j is not None:
                    for name in ("item_id", "tags", "performers", "categorical", "numeric"):
                        getattr(known, name)[i] = getattr(fresh, name)[j]
        return ItemFeatures(*(np.concatenate([getattr(known, n), getattr(self.table, n)[-1:]]) for n in (
            "item_id", "tags", "performers", "categorical", "numeric")))  # fmt: skip


def _release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and RSS stays at the loading peak)."""
    import ctypes
    import ctypes.util
    from contextlib import suppress

    name = ctypes.util.find_library("c")
    if name:
        with suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)

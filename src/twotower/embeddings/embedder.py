"""One embedder for every job that (re-)embeds rows of a generation: the catalog sync and ``batch-update``.

It holds a version's ONNX towers, fetched from the artifact store on first use, and, for users, the version's
item table (the whole catalog through the feature pipeline: seconds, that a videos-only job does not need),
loaded on first use too. It computes vectors (``video_vectors``, ``user_vectors``) and writes them in place
(``embed_videos``, ``embed_users``: only changed rows, see ``embeddings.generation``).
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from twotower.db import Database
from twotower.embeddings.generation import embed_videos_counted, update_embeddings, video_vectors
from twotower.features.decisions import load_decision_log
from twotower.features.examples import Histories
from twotower.inference.items import ItemIndex
from twotower.inference.towers import OnnxTowers
from twotower.registry.store import ArtifactStore, fetch

__all__ = ["Embedder"]

Vectors = tuple[list[uuid.UUID], npt.NDArray[np.float32]]


class Embedder:
    """A version's towers (loaded on first use) and its item table (loaded on the first users' use)."""

    def __init__(self, db: Database, store: ArtifactStore, version: str, cache_dir: Path, *, threads: int = 0) -> None:
        self.db, self.store, self.version, self.cache_dir = db, store, version, cache_dir
        self.threads = threads  # ONNX Runtime's intra-op threads (0: one per core)

    @functools.cached_property
    def towers(self) -> OnnxTowers:
        return OnnxTowers(fetch(self.store, self.version, self.cache_dir), threads=self.threads)

    @functools.cached_property
    def items(self) -> ItemIndex:
        with self.db.direct() as conn:  # the version's item table, brought up to date
            return ItemIndex.open(self.towers.directory, conn, self.towers.pipeline)

    @functools.cached_property
    def catalog_ids(self) -> list[Any]:
        return self.items.video_ids()  # the index's row order

    def video_vectors(self, conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> Vectors:
        """The item tower's vectors of these videos (ids of videos that are gone are left out)."""
        return video_vectors(conn, self.towers, ids)

    def video_range(self, conn: psycopg.Connection[Any], start: str, end: str) -> Vectors:
        return self.video_vectors(conn, _video_ids(conn, start, end))

    def user_range(self, conn: psycopg.Connection[Any], start: str, end: str) -> Vectors:
        """The user tower's vectors of the users with decisions in this inclusive id range (all their decisions)."""
        log_ = load_decision_log(conn, self.catalog_ids, user_range=(start, end))
        if log_.n_users == 0:
            return [], np.zeros((0, self.towers.dim), dtype=np.float32)
        hist = Histories(log_, np.ones(len(log_), dtype=bool), len(self.catalog_ids), self.towers.history)
        batch = hist.batch(np.arange(log_.n_users, dtype=np.int64))
        return list(log_.user_ids), self.towers.embed_users(self.items.table, batch)

    def embed_videos(self, conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> tuple[int, int]:
        """Re-embed these videos in place: ``(videos that exist, rows written)``. The caller's transaction."""
        return embed_videos_counted(conn, self.towers, ids)

    def embed_video_range(self, conn: psycopg.Connection[Any], start: str, end: str) -> tuple[int, int]:
        return self.embed_videos(conn, _video_ids(conn, start, end))

    def embed_user_range(self, conn: psycopg.Connection[Any], start: str, end: str) -> tuple[int, int]:
        found, vectors = self.user_range(conn, start, end)
        return len(found), update_embeddings(conn, "user_embeddings", "user_id", self.version, found, vectors)


def _video_ids(conn: psycopg.Connection[Any], start: str, end: str) -> list[uuid.UUID]:
    """The ids of the videos in this inclusive id range, in order."""
    rows = conn.execute("SELECT id FROM videos WHERE id BETWEEN %s AND %s ORDER BY id", (start, end)).fetchall()
    return [r[0] for r in rows]

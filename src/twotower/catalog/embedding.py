"""The catalog sync's embedding of what it stored: the ids of new or changed videos, queued and embedded in
batches with the active version's item tower (the shared ``embeddings.embedder.Embedder``; a running experiment's
candidate's too, so its arm sees new videos), and the catch-up of every active video without a current embedding."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import psycopg

from twotower.db import Database
from twotower.embeddings.embedder import Embedder
from twotower.registry.experiments import current
from twotower.registry.store import ArtifactStore
from twotower.registry.versions import active_version

__all__ = ["EmbedQueue", "embed_missing_ids"]

log = logging.getLogger("twotower.catalog")


class EmbedQueue:
    """Queues the ids of videos to (re-)embed with the active version (the shared ``Embedder``), in batches."""

    def __init__(self, db: Database, store: ArtifactStore | None, batch: int, cache_dir: Path) -> None:
        """``store`` None: embedding is off (the queue takes nothing)."""
        self.db, self.batch = db, batch
        self.embedder: Embedder | None = None
        self.version: str | None = None
        self.candidate: Embedder | None = None  # a running experiment's candidate: its arm sees new videos too
        self.pending: list[uuid.UUID] = []
        self.done = 0
        if store is not None:
            with db.direct() as conn:
                self.version = active_version(conn)
                running = current(conn)
            if self.version is not None:
                self.embedder = Embedder(db, store, self.version, cache_dir)
                if running is not None and running.candidate_version != self.version:
                    self.candidate = Embedder(db, store, running.candidate_version, cache_dir)

    def add(self, ids: list[uuid.UUID]) -> None:
        if self.version is None:
            return
        self.pending.extend(ids)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        ids, self.pending = self.pending, []
        for start in range(0, len(ids), self.batch):
            self._embed(ids[start : start + self.batch])

    def _embed(self, ids: list[uuid.UUID]) -> None:
        if not ids or self.embedder is None:
            return
        with self.db.direct() as conn, conn.transaction():
            self.done += self.embedder.embed_videos(conn, ids)[0]
            if self.candidate is not None:
                self.candidate.embed_videos(conn, ids)

    def catch_up(self) -> None:
        """Embed every active video that has no embedding for the version, or one older than the video."""
        if self.version is None:
            return
        with self.db.direct() as conn:
            ids = embed_missing_ids(conn, self.version)
            if self.candidate is not None:
                ids = sorted(set(ids) | set(embed_missing_ids(conn, self.candidate.version)))
        if ids:
            log.info("embedding %d videos without a current embedding for %s", len(ids), self.version)
        self.pending.extend(ids)
        self.flush()


def embed_missing_ids(conn: psycopg.Connection[Any], version: str) -> list[uuid.UUID]:
    rows = conn.execute(
        """SELECT v.id FROM videos v
           LEFT JOIN video_embeddings e ON e.video_id = v.id AND e.model_version = %s
           WHERE v.is_active AND (e.video_id IS NULL OR e.created_at < v.updated_at)
           ORDER BY v.id""",
        (version,),
    ).fetchall()
    return [r[0] for r in rows]

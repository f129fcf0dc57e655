"""The simple linear model's fallback answers, scored in memory: every active video's tags as a sparse matrix.

The model: a user's profile is the tag counts of their 50 most recent likes; a video scores the profile's weight
on its tags over the square root of its tag count (cosine-like), normalised by the profile's total. Scoring the
whole catalog in SQL reads every ``video_tags`` row that shares a tag with the profile (most of them: 240 ms at
100k videos); as a sparse matrix-vector product it takes about a millisecond. The matrix is built in the
background (only while no model is loaded, when this fallback is the one that answers) and rebuilt when stale.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import psycopg
from scipy import sparse

__all__ = ["TagIndex"]

_PROFILE = """
SELECT vt.tag_id, count(*)::float8
FROM (SELECT video_id FROM user_video_decisions WHERE user_id = %(user)s AND decision_type = 'like'
      ORDER BY created_at DESC LIMIT 50) liked
JOIN video_tags vt ON vt.video_id = liked.video_id
GROUP BY vt.tag_id
"""


class TagIndex:
    def __init__(self, ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.ids: list[uuid.UUID] = []
        self.columns: dict[int, int] = {}  # tag id -> matrix column
        self.matrix: sparse.csr_matrix | None = None  # [videos, tags], rows scaled by 1/sqrt(tag count)
        self.loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.matrix is not None

    def stale(self) -> bool:
        return time.monotonic() - self.loaded_at > self.ttl

    def refresh(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            rows = conn.execute(
                "SELECT vt.video_id, array_agg(vt.tag_id) FROM video_tags vt JOIN videos v ON v.id = vt.video_id "
                "WHERE v.is_active GROUP BY vt.video_id"
            ).fetchall()
            tags = sorted({t for _, ts in rows for t in ts})
            columns = {t: j for j, t in enumerate(tags)}
            lengths = np.array([len(ts) for _, ts in rows], dtype=np.int64)
            indices = np.fromiter((columns[t] for _, ts in rows for t in ts), dtype=np.int64, count=int(lengths.sum()))
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            data = np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths)
            matrix = sparse.csr_matrix((data, indices, indptr), shape=(len(rows), len(tags)))
            self.ids, self.columns, self.matrix = [r[0] for r in rows], columns, matrix
            self.loaded_at = time.monotonic()

    def candidates(self, conn: psycopg.Connection[Any], user: uuid.UUID, k: int) -> list[tuple[uuid.UUID, float]]:
        """The ``k`` best-scoring videos for this user (only videos sharing a tag with the profile), best first."""
        matrix, ids, columns = self.matrix, self.ids, self.columns
        assert matrix is not None
        profile = np.zeros(matrix.shape[1])
        total = 0.0
        for tag, weight in conn.execute(_PROFILE, {"user": user}).fetchall():
            total += weight
            column = columns.get(tag)
            if column is not None:
                profile[column] = weight
        scores = matrix @ profile / max(total, 1.0)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        order = hits[np.lexsort((hits, -scores[hits]))]
        return [(ids[i], float(scores[i])) for i in order]

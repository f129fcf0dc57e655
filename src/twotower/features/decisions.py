"""Swipes as integer arrays: the input of the temporal split, training and evaluation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

__all__ = ["DecisionLog", "load_decision_log"]


@dataclass
class DecisionLog:
    """All decisions, sorted by (user, time). ``item`` indexes the catalog order (see ``load_catalog``)."""

    user_ids: list[uuid.UUID]  # user index -> UUID
    user: npt.NDArray[np.int32]
    item: npt.NDArray[np.int32]
    like: npt.NDArray[np.bool_]
    ts: npt.NDArray[np.float64]  # Unix seconds

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)


def load_decision_log(
    conn: psycopg.Connection[Any], video_ids: list[uuid.UUID], user_range: tuple[str, str] | None = None
) -> DecisionLog:
    """Decisions on the given videos (the catalog order), as arrays sorted by user then time; only those of
    the users in the inclusive id range ``user_range`` when given."""
    from psycopg import sql

    index = {vid: i for i, vid in enumerate(video_ids)}
    where = sql.SQL("WHERE d.user_id BETWEEN %s AND %s" if user_range is not None else "")
    with conn.cursor(binary=True) as cur:
        # ties in time are broken by the video's natural key, not its (random) UUID: the same data gives
        # the same split in every database it is imported into
        cur.execute(
            sql.SQL(
                "SELECT d.user_id, d.video_id, d.decision_type = 'like', extract(epoch FROM d.created_at)::float8 "
                "FROM user_video_decisions d JOIN videos v ON v.id = d.video_id {} "
                "ORDER BY d.user_id, d.created_at, v.source, v.external_id"
            ).format(where),
            user_range,
        )
        rows = cur.fetchall()
    users: dict[uuid.UUID, int] = {}
    n = len(rows)
    user = np.empty(n, dtype=np.int32)
    item = np.empty(n, dtype=np.int32)
    like = np.empty(n, dtype=bool)
    ts = np.empty(n, dtype=np.float64)
    kept = 0
    for user_id, video_id, is_like, epoch in rows:
        i = index.get(video_id)
        if i is None:
            continue
        user[kept] = users.setdefault(user_id, len(users))
        item[kept] = i
        like[kept] = is_like
        ts[kept] = epoch
        kept += 1
    return DecisionLog(list(users), user[:kept], item[:kept], like[:kept], ts[:kept])

"""Swipes as integer arrays: the input of the temporal split, training and evaluation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

__all__ = ["DecisionLog", "load_decision_log", "sample_users"]


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
    conn: psycopg.Connection[Any],
    video_ids: list[uuid.UUID],
    user_range: tuple[str, str] | None = None,
    users: list[uuid.UUID] | None = None,
) -> DecisionLog:
    """Decisions on the given videos (the catalog order), as arrays sorted by user then time; only those of
    the users in the inclusive id range ``user_range``, or of the ``users`` listed, when given.

    Streamed as binary COPY and decoded block by block with numpy: no decision ever becomes a Python object (the
    row-by-row reading held a tuple and two UUIDs per decision at once); videos are matched to the catalog by
    their 16 bytes (issue 31).
    """
    where: sql.Composable = sql.SQL("")
    if user_range is not None:  # COPY takes no parameters: literals, quoted by psycopg
        where = sql.SQL("WHERE d.user_id BETWEEN {}::uuid AND {}::uuid").format(*map(sql.Literal, user_range))
    elif users is not None:
        where = sql.SQL("WHERE d.user_id = ANY({}::uuid[])").format(sql.Literal([str(u) for u in users]))
    # ties in time are broken by the video's natural key, not its (random) UUID: the same data gives
    # the same split in every database it is imported into
    query = sql.SQL(
        "COPY (SELECT d.user_id, d.video_id, d.decision_type = 'like', extract(epoch FROM d.created_at)::float8 "
        "FROM user_video_decisions d JOIN videos v ON v.id = d.video_id {} "
        "ORDER BY d.user_id, d.created_at, v.source, v.external_id) TO STDOUT (FORMAT binary)"
    ).format(where)
    catalog = _Catalog(video_ids)
    blocks: list[tuple[npt.NDArray[np.void], npt.NDArray[np.int32], npt.NDArray[np.bool_], npt.NDArray[np.float64]]]
    blocks = []
    pending = bytearray()
    header_done = False
    with conn.cursor() as cur, cur.copy(query) as copy:
        for data in copy:
            pending += data
            if not header_done:
                if len(pending) < _HEADER.itemsize:
                    continue
                skip = _check_header(pending)
                del pending[:skip]
                header_done = True
            if len(pending) >= _BLOCK_BYTES:
                whole = len(pending) // _ROW.itemsize * _ROW.itemsize
                blocks.append(_decode(pending[:whole], catalog))
                del pending[:whole]
    if not header_done:
        raise psycopg.DataError("COPY returned no header")
    if len(pending) < 2 or bytes(pending[-2:]) != b"\xff\xff" or (len(pending) - 2) % _ROW.itemsize:
        raise psycopg.DataError("unexpected end of the binary COPY of the decisions")
    if len(pending) > 2:
        blocks.append(_decode(pending[:-2], catalog))
    if not blocks:
        empty = np.empty(0, np.int32)
        return DecisionLog([], empty, empty.copy(), np.empty(0, bool), np.empty(0, np.float64))
    keys = np.concatenate([b[0] for b in blocks])
    item = np.concatenate([b[1] for b in blocks])
    like = np.concatenate([b[2] for b in blocks])
    ts = np.concatenate([b[3] for b in blocks])
    del blocks
    # rows come sorted by user: a new user wherever the id changes (among the rows kept)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    user = (np.cumsum(first) - 1).astype(np.int32)
    user_ids = [uuid.UUID(bytes=bytes(u)) for u in keys[first]]
    return DecisionLog(user_ids, user, item, like, ts)


def sample_users(conn: psycopg.Connection[Any], n: int, seed: int = 0) -> list[uuid.UUID]:
    """Up to ``n`` distinct users with decisions (all of them when there are no more), without reading the
    decisions: the ``n`` users that follow a random id (``seed``) in id order, wrapping around, one probe of the
    ``(user_id, created_at)`` index each. With random (v4) ids a run of ids is a random sample of the users."""
    if n <= 0:
        return []
    start = uuid.UUID(bytes=np.random.default_rng(seed).bytes(16))
    after = _walk(conn, start, None, n)
    return sorted(after + _walk(conn, uuid.UUID(int=0), start, n - len(after)), key=lambda u: u.bytes)


def _walk(conn: psycopg.Connection[Any], first: uuid.UUID, below: uuid.UUID | None, n: int) -> list[uuid.UUID]:
    """The first ``n`` users at or after ``first`` (and before ``below``), a loose index scan."""
    if n <= 0:
        return []
    rows = conn.execute(
        "WITH RECURSIVE walk(user_id, k) AS ("
        " (SELECT user_id, 1 FROM user_video_decisions WHERE user_id >= %(first)s ORDER BY user_id LIMIT 1)"
        " UNION ALL"
        " SELECT (SELECT d.user_id FROM user_video_decisions d WHERE d.user_id > w.user_id ORDER BY d.user_id"
        "         LIMIT 1), w.k + 1 FROM walk w WHERE w.user_id IS NOT NULL AND w.k < %(n)s)"
        " SELECT user_id FROM walk WHERE user_id IS NOT NULL AND (%(below)s::uuid IS NULL OR user_id < %(below)s)",
        {"first": first, "below": below, "n": n},
    ).fetchall()
    return [r[0] for r in rows]


# one decision in a binary COPY: a field count, then each field's length and value (all four fixed-width, NOT NULL)
_ROW = np.dtype([("n", ">i2"), ("l0", ">i4"), ("user", "V16"), ("l1", ">i4"), ("video", "V16"),
                 ("l2", ">i4"), ("like", "u1"), ("l3", ">i4"), ("ts", ">f8")])  # fmt: skip
_HEADER = np.dtype([("signature", "S11"), ("flags", ">i4"), ("extension", ">i4")])
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_BLOCK_BYTES = 1 << 26  # 64 MB of rows (~1.1M decisions) decoded at a time
_LENGTHS = (("n", 4), ("l0", 16), ("l1", 16), ("l2", 1), ("l3", 8))


def _check_header(buffer: bytearray) -> int:
    head = np.frombuffer(bytes(buffer[: _HEADER.itemsize]), _HEADER)[0]
    if bytes(buffer[:11]) != _SIGNATURE:
        raise psycopg.DataError("not a binary COPY")
    return int(_HEADER.itemsize + head["extension"])


class _Catalog:
    """Video ids (16 bytes each) -> catalog index, for whole arrays at once: a binary search on the first 8 bytes
    (big-endian, so the order is the bytes' order), then the last 8 compared."""

    def __init__(self, video_ids: list[uuid.UUID]) -> None:
        keys = np.frombuffer(b"".join(v.bytes for v in video_ids), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        self.order = np.lexsort((keys[:, 1], keys[:, 0])).astype(np.int64)
        self.hi, self.lo = keys[self.order, 0], keys[self.order, 1]

    def index(self, video: npt.NDArray[np.void]) -> npt.NDArray[np.int64]:
        """The catalog index of each video, -1 for a video not in the catalog."""
        keys = np.frombuffer(video.tobytes(), dtype=">u8").reshape(-1, 2).astype(np.uint64)
        hi, lo = keys[:, 0], keys[:, 1]
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(self.hi):
            return out
        left = np.searchsorted(self.hi, hi, side="left")
        right = np.searchsorted(self.hi, hi, side="right")
        # among the catalog ids with the same first 8 bytes (one, but for a collision), the same last 8 bytes
        for step in range(int((right - left).max(initial=0))):
            at = left + step
            match = (at < right) & (out < 0)
            at = np.minimum(at, len(self.lo) - 1)
            match &= self.lo[at] == lo
            out[match] = self.order[at[match]]
        return out


def _decode(
    buffer: bytearray, catalog: _Catalog
) -> tuple[npt.NDArray[np.void], npt.NDArray[np.int32], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    rows = np.frombuffer(bytes(buffer), _ROW)
    for field, length in _LENGTHS:
        if (rows[field] != length).any():
            raise psycopg.DataError("unexpected field in the binary COPY of the decisions")
    item = catalog.index(rows["video"])
    kept = item >= 0
    rows = rows[kept]
    return (rows["user"].copy(), item[kept].astype(np.int32), rows["like"].astype(bool),
            rows["ts"].astype(np.float64))  # fmt: skip

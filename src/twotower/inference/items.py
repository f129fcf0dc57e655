"""Every video's encoded features for one model, by id: the user tower's input table at request time.

A deploy writes the table as of that moment into the version's artifacts (``items.npz``: plain arrays,
checksummed with the rest, never pickle). A server starts from it and reads from the database only the videos
changed since (``refreshed``), so a start costs the same at 100 videos as at 100k and a catalog change is picked up
incrementally. Without the file (a version exported by hand), the table is read from the database in chunks, by
statements that are linear in the chunk under any plan (``load_catalog``).

A request turns the ids of its history into rows with a dict lookup; a video newer than the table is read and
encoded on the spot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import uuid
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg

from twotower.errors import ArtifactError
from twotower.features.catalog import load_catalog
from twotower.features.pipeline import FeaturePipeline, ItemFeatures

__all__ = ["ITEMS_FILE", "LOOKBACK", "ItemIndex", "write_item_table"]

ITEMS_FILE = "items.npz"
FIELDS = ("item_id", "tags", "performers", "categorical", "numeric")
# a video written by a transaction that began before a read but committed after it carries an ``updated_at``
# before the read: each refresh looks back this far, and reads again the videos whose ``updated_at`` differs from the
# one their row was read with
LOOKBACK = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    value: datetime = row[0]
    return value


def _encode(conn: psycopg.Connection[Any], pipeline: FeaturePipeline, ids: Sequence[uuid.UUID], chunk: int) -> tuple[
    list[uuid.UUID], ItemFeatures]:  # fmt: skip
    """These videos read and encoded ``chunk`` at a time (100k videos' metadata as Python objects would cost
    several times the encoded arrays); ids deleted meanwhile are skipped."""
    found: list[uuid.UUID] = []
    parts = []
    for start in range(0, len(ids), chunk):
        catalog = load_catalog(conn, ids[start : start + chunk])
        found += catalog.ids
        parts.append(pipeline.transform(catalog))
    if not parts:
        parts.append(pipeline.transform(load_catalog(conn, [])))
    return found, ItemFeatures(*(np.concatenate([getattr(p, n) for p in parts]) for n in FIELDS))


def _micros(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _stamped_ids(conn: psycopg.Connection[Any]) -> tuple[list[uuid.UUID], list[int]]:
    """Ids and ``updated_at`` (Unix microseconds) of every video."""
    rows = conn.execute("SELECT id, updated_at FROM videos ORDER BY source, external_id").fetchall()
    return [r[0] for r in rows], [_micros(r[1]) for r in rows]


# one bytea of 24-byte records (the id's 16 bytes, updated_at in Unix microseconds big-endian): a refresh compares
# a lookback window of up to every video (after a catalog sync) every poll; as rows, 100k of them cost the server
# ~250 ms of Python holding the GIL (UUID and datetime objects), which stalled the requests of the worker
_STAMPS_SINCE = """
SELECT coalesce(string_agg(uuid_send(id) || int8send((extract(epoch FROM updated_at) * 1000000)::int8), ''::bytea),
                ''::bytea)
  FROM videos WHERE updated_at >= %s"""
_STAMP = np.dtype([("id", "S16"), ("at", ">i8")])


def _stamps_since(
    conn: psycopg.Connection[Any], since: datetime
) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.int64]]:
    """Ids (16 bytes each) and ``updated_at`` (Unix microseconds) of the videos updated since ``since``."""
    row = conn.execute(_STAMPS_SINCE, (since,), binary=True).fetchone()  # the bytes as they are, not hex text
    assert row is not None
    records = np.frombuffer(row[0], dtype=_STAMP)
    return records["id"], records["at"].astype(np.int64)


def _id_strings(ids: Iterable[uuid.UUID]) -> npt.NDArray[np.bytes_]:
    """Ids as 16-byte strings (``S16``): sortable and comparable as arrays (read one alone, an item loses its
    trailing zero bytes: slice ``tobytes()`` instead)."""
    return np.frombuffer(b"".join(v.bytes for v in ids), dtype="S16")


@dataclass(frozen=True)
class _SortedIds:
    """The index's ids in byte order (``S16``), with their rows: requests and refreshes find rows by binary search."""

    ids: npt.NDArray[np.bytes_]
    rows: npt.NDArray[np.int64]

    @classmethod
    def sorted(cls, ids: npt.NDArray[np.bytes_], rows: npt.NDArray[np.int64]) -> _SortedIds:
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], rows[order])

    def find(self, ids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """The row of each id, -1 where the index has none."""
        if not len(self.ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[at] == ids, self.rows[at], -1)

    def plus(self, ids: npt.NDArray[np.bytes_], rows: npt.NDArray[np.int64]) -> _SortedIds:
        if not len(ids):
            return self
        return _SortedIds.sorted(np.concatenate([self.ids, ids]), np.concatenate([self.rows, rows]))


def write_item_table(
    path: Path, ids: Sequence[uuid.UUID] | npt.NDArray[np.bytes_], stamps: npt.NDArray[np.int64],
    features: ItemFeatures, as_of: datetime,
) -> None:  # fmt: skip
    """Save a table (no padding row) as plain arrays: ``ids`` as 16 bytes each, ``updated_at`` of each row and
    ``as_of`` in Unix microseconds."""
    strings = ids if isinstance(ids, np.ndarray) else _id_strings(ids)
    raw = np.ascontiguousarray(strings).view(np.uint8).reshape(len(strings), 16)
    with path.open("wb") as handle:
        np.savez(handle, ids=raw, updated_at=stamps, as_of=np.array(_micros(as_of), dtype=np.int64),
                 **{n: getattr(features, n) for n in FIELDS})  # fmt: skip


@dataclass(frozen=True)
class ItemIndex:
    """No Python object per video: ids are one ``S16`` array (row ``i``'s id at ``ids[i]``) and looked up by binary
    search, so a table of 1M videos opens in about a second and holds no million UUIDs and dict entries (issue 31:
    building them took 25 s of each server's start and ~200 MB of each worker at 1M)."""

    table: ItemFeatures  # one row per video, then a padding row
    ids: npt.NDArray[np.bytes_]  # per row: the video's id, 16 bytes (``S16``)
    stamps: npt.NDArray[np.int64]  # per row: the video's ``updated_at`` (Unix microseconds) when it was read
    as_of: datetime  # database time of the last read: videos updated since then (less LOOKBACK) are checked again
    # internal: ``ids`` in byte order with their rows, made on first use and handed on by ``refreshed``
    sorted_ids: _SortedIds | None = field(default=None, compare=False, repr=False)

    def _sorted_ids(self) -> _SortedIds:
        if self.sorted_ids is None:  # a cache: the same index either way
            object.__setattr__(self, "sorted_ids", _SortedIds.sorted(self.ids, np.arange(len(self.ids))))
        assert self.sorted_ids is not None
        return self.sorted_ids

    def rows(self, ids: Sequence[uuid.UUID]) -> npt.NDArray[np.int64]:
        """The row of each of these videos, -1 where the table has none."""
        return self._sorted_ids().find(_id_strings(ids)) if ids else np.zeros(0, dtype=np.int64)

    def row_of(self, video: uuid.UUID) -> int | None:
        row = int(self.rows([video])[0])
        return row if row >= 0 else None

    def __contains__(self, video: object) -> bool:
        return isinstance(video, uuid.UUID) and self.row_of(video) is not None

    def video_ids(self) -> list[uuid.UUID]:
        """Every video's id in row order (a Python object each: for batch jobs, not for servers)."""
        raw = self.ids.tobytes()  # (an S16 item read alone would lose trailing zero bytes)
        return [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], pipeline: FeaturePipeline, chunk: int = 20_000) -> ItemIndex:
        """Read and encode every video from the database."""
        as_of = _now(conn)  # first: a video updated during the read is read again by the next refresh
        ids, stamps = _stamped_ids(conn)
        found, table = _encode(conn, pipeline, ids, chunk)
        at = dict(zip(ids, stamps, strict=True))
        _release_memory()
        return cls(table.with_padding_row(), _id_strings(found), np.array([at[v] for v in found], dtype=np.int64),
                   as_of)  # fmt: skip

    @classmethod
    def open(cls, directory: Path, conn: psycopg.Connection[Any], pipeline: FeaturePipeline) -> ItemIndex:
        """The table of a version's artifacts brought up to date from the database; read whole from the
        database when the version has none."""
        path = directory / ITEMS_FILE
        if not path.is_file():
            return cls.load(conn, pipeline)
        return cls.from_file(path).refreshed(conn, pipeline)

    @classmethod
    def from_file(cls, path: Path) -> ItemIndex:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {n: data[n] for n in (*FIELDS, "ids", "updated_at", "as_of")}
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path}: not a valid item table ({exc})") from None
        raw, stamps = arrays.pop("ids"), arrays.pop("updated_at")
        n = len(raw)
        if raw.shape != (n, 16) or raw.dtype != np.uint8 or stamps.shape != (n,) or any(
                len(arrays[f]) != n for f in FIELDS):  # fmt: skip
            raise ArtifactError(f"{path}: the item table's arrays disagree in length")
        ids = np.ascontiguousarray(raw).view("S16").reshape(n)
        as_of = _EPOCH + timedelta(microseconds=int(arrays.pop("as_of")))
        table = ItemFeatures(*(arrays[f] for f in FIELDS))
        return cls(table.with_padding_row(), ids, stamps.astype(np.int64), as_of)

    def save(self, path: Path) -> None:
        """Write the table as ``items.npz`` (see ``write_item_table``)."""
        table = self.table.take(np.arange(len(self.ids), dtype=np.int64))
        write_item_table(path, self.ids, self.stamps, table, self.as_of)

    def refreshed(self, conn: psycopg.Connection[Any], pipeline: FeaturePipeline, chunk: int = 20_000) -> ItemIndex:
        """This table with the videos added or changed since it was read re-encoded (the same arrays when none
        were)."""
        as_of = _now(conn)
        ids, stamps = _stamps_since(conn, self.as_of - LOOKBACK)
        index_ids = self._sorted_ids()
        found_at = index_ids.find(ids)
        changed = found_at < 0  # new videos, and known ones whose ``updated_at`` moved
        seen = ~changed
        changed[seen] = self.stamps[found_at[seen]] != stamps[seen]
        if not changed.any():
            return ItemIndex(self.table, self.ids, self.stamps, as_of, index_ids)
        raw = ids[changed].tobytes()  # (an S16 item read alone would lose trailing zero bytes)
        stale = [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]
        read = dict(zip(stale, stamps[changed].tolist(), strict=True))
        found, fresh = _encode(conn, pipeline, stale, chunk)
        found_ids = _id_strings(found)
        at = index_ids.find(found_ids)
        added = at < 0
        known = len(self.ids)
        size = known + int(added.sum())
        at[added] = np.arange(known, size)

        def merged(old: npt.NDArray[Any], new: npt.NDArray[Any]) -> npt.NDArray[Any]:
            out = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
            out[:known] = old[:known]
            out[at] = new
            return out

        table = ItemFeatures(*(merged(getattr(self.table, n), getattr(fresh, n)) for n in FIELDS))
        new_stamps = merged(self.stamps, np.array([read[v] for v in found], dtype=np.int64))
        all_ids = np.concatenate([self.ids, found_ids[added]])
        sorted_ids = index_ids.plus(found_ids[added], at[added])
        return ItemIndex(table.with_padding_row(), all_ids, new_stamps, as_of, sorted_ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def pad(self) -> int:
        return len(self.table) - 1

    def gather(
        self, conn: psycopg.Connection[Any], pipeline: FeaturePipeline, ids: Sequence[uuid.UUID]
    ) -> ItemFeatures:
        """Features of these videos in order (videos newer than the index are read and encoded on the spot),
        followed by a padding row."""
        rows = self.rows(ids)
        known = self.table.take(np.where(rows >= 0, rows, self.pad))
        missing = [v for v, r in zip(ids, rows, strict=True) if r < 0]
        if missing:
            catalog = load_catalog(conn, missing)  # a video deleted meanwhile stays a padding row
            fresh = pipeline.transform(catalog)
            at = {v: i for i, v in enumerate(catalog.ids)}
            for i, vid in enumerate(ids):
                j = at.get(vid)
                if rows[i] < 0 and j is not None:
                    for name in FIELDS:
                        getattr(known, name)[i] = getattr(fresh, name)[j]
        return ItemFeatures(*(np.concatenate([getattr(known, n), getattr(self.table, n)[-1:]]) for n in FIELDS))


def _release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and RSS stays at the loading peak)."""

    name = ctypes.util.find_library("c")
    if name:
        with suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)

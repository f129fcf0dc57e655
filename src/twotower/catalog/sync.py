"""``twotower sync dmm``: bring the catalog up to date from the DMM API, and embed what is new.

How a run walks the API: the API pages at most 50,000 items deep, so the range ``[since, until]`` is cut into
date windows small enough to page through, oldest window first. A window whose ``total_count`` is too large is
split in two by time until each half fits. Inside a window, pages come newest first (``sort=date``).

What makes it safe to kill at any moment: each page is upserted (videos, tags, performers — idempotent, see
:mod:`twotower.ingest.loader`) in one transaction together with the run's cursor in ``sync_state`` (the range,
how far it is complete, the window in progress and the next offset). A restarted sync resumes from the cursor:
a page may be fetched twice, never stored twice, and no window is skipped. Only when the whole range is done
does the watermark move, to ``until`` — and only if the range started at or before the old watermark, so the
watermark never jumps over a gap. The next run without ``--since`` starts at the watermark.

Embeddings: the videos a run inserts or changes are embedded with the active version's item tower in batches as
the run goes, and at the end every active video still lacking a current embedding for that version (left over
by a killed run, or added while no sync ran) is embedded too, so the served catalog is complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from twotower.catalog.dmm import DmmClient, Page, api_time
from twotower.catalog.dmm_items import parse_item
from twotower.catalog.embedding import EmbedQueue, embed_missing_ids
from twotower.db import Database, locks
from twotower.errors import InputError, SyncInProgress, TwoTowerError, UpstreamError
from twotower.ingest.loader import VideoLoadResult, load_videos
from twotower.ingest.records import Problems, VideoRecord
from twotower.registry.store import ArtifactStore

__all__ = [
    "SyncCursor",
    "SyncInProgress",
    "SyncOptions",
    "SyncSummary",
    "embed_missing",
    "embed_missing_ids",
    "sync_dmm",
]

log = logging.getLogger("twotower.catalog")
SECOND = timedelta(seconds=1)
_EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)


@dataclass
class SyncOptions:
    since: datetime | None = None  # default: the stored watermark (naive times are UTC)
    until: datetime | None = None  # default: now
    lookback: timedelta = timedelta(0)  # an incremental run re-reads this much before the watermark
    embed: bool = True
    embed_batch: int = 2000
    cache_dir: Path = Path(".twotower/models")


@dataclass
class SyncSummary:
    scope: str
    since: datetime
    until: datetime
    resumed: bool = False
    windows: int = 0
    pages: int = 0
    items: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    embedded: int = 0
    version: str | None = None
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    embed_error: str | None = None  # the catalog is synced; these embeddings are made by the next run
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


@dataclass
class SyncCursor:
    """Where a run is: ``[since, done_until]`` is stored; then ``window`` from ``offset`` (if any)."""

    since: datetime
    until: datetime
    done_until: datetime
    window: tuple[datetime, datetime] | None = None
    offset: int = 1
    last_id: str | None = None  # content_id of the item just before ``offset`` (checked by the next page)

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "done_until": self.done_until.isoformat(),
            "window": [w.isoformat() for w in self.window] if self.window else None, "offset": self.offset,
            "last_id": self.last_id,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncCursor | None:
        try:
            window = data.get("window")
            return cls(
                datetime.fromisoformat(data["since"]), datetime.fromisoformat(data["until"]),
                datetime.fromisoformat(data["done_until"]),
                (datetime.fromisoformat(window[0]), datetime.fromisoformat(window[1])) if window else None,
                int(data.get("offset", 1)), data.get("last_id"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def _second(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.replace(microsecond=0)


@contextmanager
def _sync_lock(db: Database, scope: str) -> Iterator[None]:
    """One sync per catalog at a time (held on a dedicated connection: released even by a crash)."""
    with db.direct(autocommit=True) as conn:
        if not locks.try_lock(conn, f"sync {scope}"):
            raise SyncInProgress(f"another sync of {scope} is running; wait for it to finish")
        try:
            yield
        finally:
            locks.unlock(conn, f"sync {scope}")


def embed_missing(db: Database, store: ArtifactStore, cache_dir: Path) -> tuple[str | None, int]:
    """Embed what the active version lacks (see module docstring); ``(version, videos embedded)``."""
    embedder = EmbedQueue(db, store, SyncOptions().embed_batch, cache_dir)
    embedder.catch_up()
    return embedder.version, embedder.done


def _start(conn: psycopg.Connection[Any], scope: str, options: SyncOptions) -> tuple[SyncCursor, bool, datetime | None]:
    """The run to do: the interrupted one (resumed) or a new one. ``(cursor, resumed, watermark)``."""
    conn.execute("INSERT INTO sync_state (source) VALUES (%s) ON CONFLICT DO NOTHING", (scope,))
    row = conn.execute("SELECT watermark, cursor FROM sync_state WHERE source = %s", (scope,)).fetchone()
    assert row is not None
    watermark: datetime | None = row[0]
    previous = SyncCursor.from_json(row[1]) if row[1] else None
    since = _second(options.since) if options.since else None
    until = _second(options.until) if options.until else None
    if previous is not None and (since is None or since == previous.since) and (until in (None, previous.until)):
        return previous, True, watermark
    if since is None:
        if watermark is None:
            raise InputError("this catalog was never synced: give --since for the first sync (e.g. --since 2024-01-01)")
        if until is not None and until <= watermark:
            raise InputError(f"--until ({until.isoformat()}) is not after the watermark ({watermark.isoformat()}): "
                             "give --since as well to sync an older range again")  # fmt: skip
        since = watermark + SECOND - options.lookback  # the watermark second itself is stored already
    now = _second(datetime.now(UTC))
    until = until or now
    if since < _EARLIEST:
        raise InputError(f"--since {since:%Y-%m-%d} is before {_EARLIEST:%Y}: the catalog has nothing that old")
    if until > now + timedelta(days=366):
        raise InputError(f"--until {until:%Y-%m-%d} is more than a year ahead")
    if since > until:
        if options.since is None:  # incremental with nothing new (a second run in the same second)
            since = until
        else:
            raise InputError(f"--since ({since.isoformat()}) is after --until ({until.isoformat()})")
    if previous is not None:
        log.warning("an interrupted sync of %s..%s is abandoned for the new range", previous.since, previous.until)
    return SyncCursor(since, until, since - SECOND), False, watermark


def _save_cursor(conn: psycopg.Connection[Any], scope: str, cursor: SyncCursor) -> None:
    conn.execute("UPDATE sync_state SET cursor = %s WHERE source = %s", (Jsonb(cursor.as_json()), scope))


def sync_dmm(
    db: Database,
    client: DmmClient,
    store: ArtifactStore | None,
    options: SyncOptions,
    *,
    on_page: Callable[[SyncSummary, SyncCursor], None] | None = None,
) -> SyncSummary:
    """Sync ``[since, until]`` (or resume the interrupted run) and embed; the summary is also stored.

    The catalog part is committed (watermark moved, cursor cleared) before the embedding part runs: a failure to
    embed is reported in ``summary.embed_error`` and never holds the catalog back (the next run catches up).
    """
    started = time.perf_counter()
    run_started = _second(datetime.now(UTC))
    scope = client.config.scope
    with _sync_lock(db, scope):
        with db.direct() as conn, conn.transaction():
            cursor, resumed, watermark = _start(conn, scope, options)
            _save_cursor(conn, scope, cursor)
        summary = SyncSummary(scope, cursor.since, cursor.until, resumed=resumed, watermark_before=watermark)
        embedder = EmbedQueue(db, store if options.embed else None, options.embed_batch, options.cache_dir)
        summary.version = embedder.version
        problems = Problems()

        def tally() -> None:
            summary.embedded = embedder.done
            summary.requests = client.stats.requests
            summary.failures = dict(client.stats.failures)
            summary.skipped = len(problems)
            summary.problems = problems.summary(20)
            summary.seconds = round(time.perf_counter() - started, 3)

        try:
            with db.direct() as conn:
                _walk(conn, client, cursor, scope, summary, embedder, problems, on_page)
        except UpstreamError as exc:
            _embed(embedder, summary, catch_up=False)  # what was stored gets its embeddings; the rest resumes later
            tally()
            raise UpstreamError(
                f"{exc.message}. {summary.pages:,} page(s), {summary.items:,} items were stored; run the sync again "
                "to resume from there"
            ) from None
        # the watermark moves only over a contiguous range (from at or before the old one), never past the time
        # this run started (an item dated later may not be listed yet)
        new_watermark = watermark
        if watermark is None or cursor.since <= watermark + SECOND:
            end = min(cursor.until, run_started)
            new_watermark = max(end, watermark) if watermark else end
        summary.watermark_after = new_watermark
        tally()
        with db.direct() as conn, conn.transaction():
            conn.execute(
                "UPDATE sync_state SET watermark = %s, cursor = '{}'::jsonb, last_run_at = now(), last_summary = %s "
                "WHERE source = %s",
                (new_watermark, Jsonb(summary.as_json()), scope),
            )
        _embed(embedder, summary, catch_up=True)
        tally()
        with db.direct() as conn, conn.transaction():
            conn.execute("UPDATE sync_state SET last_summary = %s WHERE source = %s", (Jsonb(summary.as_json()), scope))
    return summary


def _embed(embedder: EmbedQueue, summary: SyncSummary, *, catch_up: bool) -> None:
    try:
        embedder.flush()
        if catch_up:
            embedder.catch_up()
    except (TwoTowerError, psycopg.Error, OSError, ValueError) as exc:
        message = exc.message if isinstance(exc, TwoTowerError) else f"{type(exc).__name__}: {exc}"
        summary.embed_error = message[:500]
        log.warning("embedding new videos failed (the next sync catches up): %s", message)


def _walk(
    conn: psycopg.Connection[Any],
    client: DmmClient,
    cursor: SyncCursor,
    scope: str,
    summary: SyncSummary,
    embedder: EmbedQueue,
    problems: Problems,
    on_page: Callable[[SyncSummary, SyncCursor], None] | None,
) -> None:
    """Every window of the cursor's range still to do, oldest first; the cursor is saved with each page."""
    stack: list[tuple[datetime, datetime, int, str | None]] = []  # the oldest window last: popped first
    limit = client.config.max_offset
    rest = (cursor.window[1] if cursor.window else cursor.done_until) + SECOND
    if rest <= cursor.until:
        stack.append((rest, cursor.until, 1, None))
    if cursor.window is not None:
        stack.append((cursor.window[0], cursor.window[1], min(cursor.offset, limit), cursor.last_id))
    while stack:
        gte, lte, offset, last_id = stack.pop()
        page, offset = _fetch(client, gte, lte, offset, last_id)
        if offset == 1 and page.total_count > limit and lte > gte:
            mid = gte + timedelta(seconds=(lte - gte).total_seconds() // 2)
            stack.append((mid + SECOND, lte, 1, None))
            stack.append((gte, mid, 1, None))
            continue
        if offset == 1 and page.total_count > limit:  # one second holds more than the API can page through
            lost = page.total_count - limit
            problems.add(0, f"{lost:,} items dated {api_time(gte)} JST lie beyond the API's paging depth ({limit:,}) "
                         "and were not fetched")  # fmt: skip
            log.warning("%d items dated %s are beyond the API's paging depth", lost, api_time(gte))
        summary.windows += 1
        while True:
            next_offset = offset + len(page.items)
            done = not page.items or next_offset > min(page.total_count, limit)
            if done:
                cursor.window, cursor.offset, cursor.last_id, cursor.done_until = None, 1, None, lte
            else:
                cursor.window, cursor.offset, cursor.last_id = (gte, lte), next_offset, _cid(page.items[-1])
            _store_page(conn, scope, cursor, page, summary, embedder, problems, offset)
            if on_page is not None:
                on_page(summary, cursor)
            if done:
                break
            page, offset = _fetch(client, gte, lte, next_offset, cursor.last_id)


def _cid(item: dict[str, Any]) -> str:
    return str(item.get("content_id"))


def _fetch(client: DmmClient, gte: datetime, lte: datetime, offset: int, last_id: str | None) -> tuple[Page, int]:
    """The page from ``offset`` on, and the offset its items really start at.

    Offsets shift while we page: an item delisted (or dated anew) above the current offset moves every older item
    up one place, and the first item of the next page would never be fetched. So each page is asked for one place
    early: its first item must be the last one stored (``last_id``). When it is not, the listing moved, and we step
    back a page at a time until ``last_id`` is found (or the window's start): items are fetched twice, never lost.
    """
    if last_id is None or offset <= 1:
        return client.item_list(gte, lte, offset), offset
    start = offset - 1
    while True:
        page = client.item_list(gte, lte, start)
        ids = [_cid(item) for item in page.items]
        if last_id in ids:
            cut = ids.index(last_id) + 1
            page.items = page.items[cut:]
            if start != offset - 1:
                log.info("the listing moved under the sync (%s..%s): stepped back to %d", gte, lte, start)
            return page, start + cut
        if start == 1:
            log.info("%s left the listing (%s..%s): paging the window again from its start", last_id, gte, lte)
            return page, 1
        start = max(1, start - client.config.hits + 1)


def _store_page(
    conn: psycopg.Connection[Any],
    scope: str,
    cursor: SyncCursor,
    page: Page,
    summary: SyncSummary,
    embedder: EmbedQueue,
    problems: Problems,
    offset: int,
) -> None:
    records: list[VideoRecord] = []
    for position, item in enumerate(page.items, start=offset):
        try:
            records.append(parse_item(item))
        except ValueError as exc:
            problems.add(position, f"item at position {position}: {exc}")
    try:
        with conn.transaction():
            result = load_videos(conn, records)
            _save_cursor(conn, scope, cursor)
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
        # a value the database refuses fails the page's COPY: load the items one by one, and report the bad ones
        result = VideoLoadResult()
        for position, rec in enumerate(records, start=offset):
            try:
                with conn.transaction():
                    one = load_videos(conn, [rec])
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                problems.add(position, f"item {rec.external_id}: refused by the database: {_first_line(exc)}")
                continue
            result.inserted += one.inserted
            result.updated += one.updated
            result.unchanged += one.unchanged
            result.changed_ids.extend(one.changed_ids)
        with conn.transaction():
            _save_cursor(conn, scope, cursor)
    summary.pages += 1
    summary.items += len(page.items)
    summary.inserted += result.inserted
    summary.updated += result.updated
    summary.unchanged += result.unchanged
    embedder.add(result.changed_ids)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

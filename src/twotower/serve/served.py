"""What the API served, appended to ``served_recommendations`` in the background (for the live like-rate).

One row per answer (its videos as an array), for a stable sample of users (a user is in or out by a hash of
their id), so the log stays small at any traffic. A request only appends to an in-memory buffer; a thread
writes the buffer with one COPY per second on a pooled connection, and once an hour one process (under an
advisory lock) prunes rows older than the retention. The buffer is bounded: when the database is slow or down,
the oldest rows are dropped (and counted) rather than slowing requests or growing without limit.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

from twotower.db import Database, locks

__all__ = ["ServedLog"]

log = logging.getLogger("twotower.serve")
Row = tuple[datetime, uuid.UUID, list[uuid.UUID], str | None, str, int | None, str | None]


class ServedLog:
    def __init__(
        self, db: Database, *, sample: float = 1.0, retention_days: int = 14, interval: float = 1.0,
        max_rows: int = 20_000, experiment_sample: float = 1.0,
    ) -> None:  # fmt: skip
        self.db = db
        self.sample = sample
        self.experiment_sample = experiment_sample  # an experiment's measurement needs more than the monitor's
        self.retention_days = retention_days
        self.interval = interval
        self._rows: deque[Row] = deque(maxlen=max_rows)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0
        self.written = 0
        self.dropped = 0

    def sampled(self, user: uuid.UUID, experiment: int | None = None) -> bool:
        share = self.sample if experiment is None else max(self.sample, self.experiment_sample)
        return user.int % 10_000 < share * 10_000

    def record(
        self, user: uuid.UUID, videos: Sequence[uuid.UUID], version: str | None, algorithm: str,
        experiment: int | None = None, arm: str | None = None,
    ) -> None:  # fmt: skip
        if not videos or not self.sampled(user, experiment):
            return
        with self._lock:
            if len(self._rows) == self._rows.maxlen:
                self.dropped += 1
            self._rows.append((datetime.now(UTC), user, list(videos), version, algorithm, experiment, arm))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
            if time.monotonic() - self._pruned_at > 3600:
                self._prune()

    def flush(self) -> int:
        with self._lock:
            rows, self._rows = list(self._rows), deque(maxlen=self._rows.maxlen)
        if not rows:
            return 0
        try:
            with self.db.connection() as conn, conn.cursor().copy(
                "COPY served_recommendations (served_at, user_id, video_ids, model_version, algorithm, experiment_id, "
                "arm) FROM STDIN"
            ) as copy:  # fmt: skip
                for row in rows:
                    copy.write_row(row)
        except Exception as exc:  # the database is down: keep what fits, try again next time
            log.warning("could not write %d served rows (%s); will retry", len(rows), exc)
            with self._lock:
                keep = (self._rows.maxlen or 0) - len(self._rows)
                self.dropped += max(0, len(rows) - keep)
                self._rows.extendleft(reversed(rows[-keep:] if keep > 0 else []))
            return 0
        self.written += len(rows)
        return len(rows)

    def _prune(self) -> None:
        self._pruned_at = time.monotonic()
        try:
            with self.db.connection() as conn, conn.transaction():
                if locks.try_xact_lock(conn, "prune served"):  # else another server process is pruning
                    conn.execute(
                        "DELETE FROM served_recommendations WHERE served_at < now() - make_interval(days => %s)",
                        (self.retention_days,),
                    )
        except Exception as exc:  # the database is down: the next hour's try will do it
            log.warning("could not prune served_recommendations: %s", exc)

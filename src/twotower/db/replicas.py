"""Read replicas (``TWOTOWER_READ_DATABASE_URL``): where the request path's heavy reads go, and when not.

Each replica is a streaming standby of the primary. Threads of every server process look every
``read_check_seconds``: one at the primary's WAL position, one at each replica's replay position (a replica that
hangs delays only its own looks). From the two, the replica's lag in seconds (how long ago the primary had written
the oldest WAL the replica has not replayed; 0 when it has replayed everything) and in bytes. It does not read the
replica's clock or ``pg_last_xact_replay_timestamp``, which grows on an idle primary. A replica behind every
position kept (a process that has just started, or one far behind) has an unknown lag: not usable. A look older
than three periods is no look: not usable either.

A replica answers a read only while it is up, is a standby of this primary (the same system identifier), lags
at most ``read_max_lag_seconds``, and has replayed the position the read needs (the model version's: its
embeddings must be there). Otherwise the primary answers. A replica that fails a request (down, restarted,
a query cancelled by recovery) is skipped until the next look finds it well again; the request is answered again by
the primary, never with an error.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from twotower.db.conninfo import parse_url, redact
from twotower.db.database import Database
from twotower.settings import Settings

__all__ = ["ReadReplicas", "Replica", "ReplicaState", "wal_position"]

log = logging.getLogger("twotower.db.replicas")

_STANDBY = "SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0')::int8"
_SYSTEM = "SELECT system_identifier FROM pg_control_system()"
# the request path's replica connections: a dead host fails a request in seconds (the primary answers it again)
_REQUESTS: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3,
             "tcp_user_timeout": 5000}  # fmt: skip
_SAMPLES = 4096  # primary positions kept (one per look that saw new WAL): hours at one look a second
# the looks' connections: a dead host (no reset) is noticed in seconds, not after minutes of TCP retries
_LOOK: dict[str, Any] = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1,
         "keepalives_count": 2, "tcp_user_timeout": 3000, "application_name": "twotower replica look",
         "options": "-c statement_timeout=2000"}  # fmt: skip


def wal_position(conn: psycopg.Connection[Any]) -> int:
    """The primary's WAL insert position in bytes: every transaction committed before this call is below it, even
    with synchronous_commit off (on a standby: its replay position)."""
    row = conn.execute(
        "SELECT CASE WHEN pg_is_in_recovery() THEN coalesce((pg_last_wal_replay_lsn() - '0/0')::int8, 0) "
        "ELSE (pg_current_wal_insert_lsn() - '0/0')::int8 END"
    ).fetchone()
    assert row is not None
    return int(row[0])


def replayed(conn: psycopg.Connection[Any]) -> int:
    """A standby's replay position in bytes (0 on a server that is not replaying)."""
    row = conn.execute("SELECT coalesce((pg_last_wal_replay_lsn() - '0/0')::int8, 0)").fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True)
class ReplicaState:
    """One look at a replica, as ``/readyz`` and the metrics show it."""

    name: str
    state: str  # ok | lagging | down | not_a_standby | starting
    lag_seconds: float | None  # None: unknown (down, or behind every position kept: at least that long)
    lag_bytes: int | None
    replay: int  # the replay position at the look
    looked_at: float = 0.0  # monotonic time of the look

    def as_json(self) -> dict[str, Any]:
        """What ``/readyz`` shows (no URL: it may hold a password)."""
        lag = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        return {"name": self.name, "state": self.state, "lag_seconds": lag, "lag_bytes": self.lag_bytes}


class Replica:
    """One replica: its pool (the request path's session), its last look, and its failures."""

    def __init__(self, name: str, db: Database) -> None:
        self.name, self.db = name, db
        self.seen = ReplicaState(name, "starting", None, None, 0)
        self.failed_at = 0.0  # monotonic time of the last failed request (skipped until a later look is good)
        self.system_id: int | None = None
        self._conn: psycopg.Connection[Any] | None = None  # the looking thread's connection

    def usable(self, position: int, max_lag: float, max_age: float) -> bool:
        seen = self.seen
        return (seen.state == "ok" and not self.failed_at and seen.lag_seconds is not None
                and seen.lag_seconds <= max_lag and seen.replay >= position
                and time.monotonic() - seen.looked_at <= max_age)  # fmt: skip

    def failed(self, exc: BaseException) -> None:
        """A request's connection to it broke: skipped until a look a period later finds it well."""
        if not self.failed_at:
            log.warning("read replica %s failed a request (%s): the primary answers until it is well again",
                        self.name, _line(exc))  # fmt: skip
        self.failed_at = time.monotonic()

    def look(self) -> tuple[bool, int, int | None] | None:
        """(in recovery, replay position, system identifier), or None when the replica does not answer."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.db.conninfo, autocommit=True, **_LOOK)
                self.system_id = _system_id(self._conn)
            row = self._conn.execute(_STANDBY).fetchone()
        except psycopg.Error as exc:
            if self.seen.state != "down":
                log.warning("read replica %s (%s) is down: %s", self.name, redact(self.db.conninfo), _line(exc))
            self.close_look()
            return None
        assert row is not None
        return bool(row[0]), int(row[1] or 0), self.system_id

    def close_look(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.close_look()
        self.db.close()


class ReadReplicas:
    """The replicas of one server process, and the threads that look at them."""

    def __init__(self, primary: Database, settings: Settings, session: dict[str, str]) -> None:
        self.primary = primary
        self.settings = settings
        self.max_lag = settings.read_max_lag_seconds
        self.max_age = 3 * settings.read_check_seconds  # an older look says nothing
        self.replicas: list[Replica] = []
        for i, url in enumerate(settings.read_urls, start=1):
            db = Database(parse_url(url), settings, session=session, autocommit=True, connect_options=_REQUESTS)
            self.replicas.append(Replica(f"replica-{i}", db))
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=_SAMPLES)
        self._lock = threading.Lock()
        self._system_id: int | None = None
        self._primary: psycopg.Connection[Any] | None = None
        self._turn = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- choosing --------------------------------------------------------------------------------------------
    def pick(self, position: int = 0) -> Replica | None:
        """A replica that may answer a read that needs WAL up to ``position`` (round robin), or None: the primary."""
        usable = [r for r in self.replicas if r.usable(position, self.max_lag, self.max_age)]
        return usable[next(self._turn) % len(usable)] if usable else None

    def fresh_seconds(self) -> float:
        """How far back a user's own decisions may be missing on a usable replica: its lag bound, the age a look
        may have, a period more (a lag is measured to one period), and a second's margin."""
        return self.max_lag + self.max_age + self.settings.read_check_seconds + 1.0

    def status(self) -> list[dict[str, Any]]:
        """Each replica's last look, and whether it takes reads now."""
        return [r.seen.as_json() | {"usable": r.usable(0, self.max_lag, self.max_age)} for r in self.replicas]

    # -- looking ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._every, args=(self.sample,), name="twotower-primary-wal",
                                          daemon=True)]  # fmt: skip
        self._threads += [threading.Thread(target=self._every, args=(lambda r=r: self.look_at(r),),
                                           name=f"twotower-{r.name}", daemon=True) for r in self.replicas]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._primary is not None:
            self._primary.close()
        for replica in self.replicas:
            replica.close()

    def _every(self, work: Any) -> None:
        while not self._stop.is_set():
            try:
                work()
            except Exception:  # the thread must survive anything; the next look retries
                log.exception("looking at the read replicas failed")
            self._stop.wait(self.settings.read_check_seconds)

    def look(self) -> None:
        """One look at the primary, then at every replica (before the threads start; tests)."""
        self.sample()
        for replica in self.replicas:
            self.look_at(replica)

    def sample(self) -> None:
        """Note the primary's WAL position now (when it moved)."""
        position = self._primary_position()
        if position is not None:
            with self._lock:
                if not self._samples or position > self._samples[-1][1]:
                    self._samples.append((time.monotonic(), position))

    def look_at(self, replica: Replica) -> None:
        """Look at one replica: its state and lag against the primary's positions noted so far."""
        seen = replica.look()
        now = time.monotonic()
        with self._lock:
            samples = list(self._samples)
        replica.seen = self._state(replica, seen, samples, now)
        if (
            replica.failed_at
            and replica.seen.state == "ok"
            and replica.failed_at < now - self.settings.read_check_seconds
        ):
            log.info("read replica %s is well again", replica.name)
            replica.failed_at = 0.0
            replica.db.pool.check()  # drop the connections that died with the replica's restart

    def _primary_position(self) -> int | None:
        try:
            if self._primary is None or self._primary.closed:
                self._primary = psycopg.connect(self.primary.conninfo, autocommit=True, **_LOOK)
                self._system_id = _system_id(self._primary)
            return wal_position(self._primary)
        except psycopg.Error:
            if self._primary is not None:
                self._primary.close()
            self._primary = None
            return None

    def _state(
        self, replica: Replica, seen: tuple[bool, int, int | None] | None, samples: list[tuple[float, int]],
        now: float,
    ) -> ReplicaState:  # fmt: skip
        if seen is None:
            return ReplicaState(replica.name, "down", None, None, 0, now)
        recovering, replay, system_id = seen
        if not recovering or (system_id is not None and self._system_id is not None and system_id != self._system_id):
            if replica.seen.state != "not_a_standby":
                log.error("read replica %s (%s) is not a standby of this primary (%s): not used", replica.name,
                          redact(replica.db.conninfo),
                          "not in recovery" if not recovering else "another system identifier")  # fmt: skip
            return ReplicaState(replica.name, "not_a_standby", None, None, 0, now)
        if not samples:
            return ReplicaState(replica.name, "starting", None, None, replay, now)
        lag_bytes = max(samples[-1][1] - replay, 0)
        if replay < samples[0][1]:  # behind every position kept: at least this long, maybe far longer
            state = ReplicaState(replica.name, "lagging", None, lag_bytes, replay, now)
        else:
            behind = next((t for t, p in samples if p > replay), None)
            lag = 0.0 if behind is None else now - behind
            state = ReplicaState(replica.name, "ok" if lag <= self.max_lag else "lagging", lag, lag_bytes, replay, now)
        if state.state != replica.seen.state and replica.seen.state != "starting":
            log.warning("read replica %s: %s (lag %s s)", replica.name, state.state,
                        "unknown" if state.lag_seconds is None else f"{state.lag_seconds:.1f}")  # fmt: skip
        return state


def _system_id(conn: psycopg.Connection[Any]) -> int | None:
    """The cluster's system identifier (a standby has its primary's), or None where the role may not read it."""
    try:
        row = conn.execute(_SYSTEM).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return int(row[0]) if row else None


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__

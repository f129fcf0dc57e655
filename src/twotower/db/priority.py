"""Background work that yields the CPU to the API: a process and its database sessions at a lower CPU priority.

A bulk job on the machine that also serves (the embedded database, a single server) competes with requests for
the same cores, and most of a job's CPU is not its own process's: a shadow generation spends ~80 % of its CPU in
Postgres (binary COPY, the HNSW build and its parallel workers, VACUUM). ``--nice`` alone left that at full
priority. So a ``Priority`` applies to this process and, when the database runs on this machine, to the backend
of every connection the job opens and to the parallel workers those backends start (a watcher thread lowers them
as they appear).

``idle`` (Linux): ``SCHED_IDLE``, the job runs on CPU time nothing else wants and a waking request preempts it; a
plain ``nice`` value still gives the job a share of a busy core. Elsewhere ``idle`` means nice 19. Measured on 2
cores: a request's 2 ms of work took up to 6 ms (p99) beside two idle-priority spinners, 3.7 ms beside one, 2.5
ms alone (the scheduler's ticks still run them now and then), so a gentle job also keeps a core free while the
database serves (``embeddings.shadow``). A Linux priority belongs to a thread: ``apply()`` lowers every thread
of the process, those started before it too (OpenBLAS's pool starts when numpy is imported).

Lowering another process's priority needs the same user (the embedded server) or privilege; when it is refused,
or the database is elsewhere, the job runs at the server's priority: only this process is lowered.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

__all__ = ["BACKGROUND", "Priority", "SessionLowering", "is_local", "serving_clients"]

log = logging.getLogger(__name__)

_LINUX = sys.platform.startswith("linux")
BACKGROUND = "twotower background"  # the application_name of a lowered store's connections


@dataclass(frozen=True)
class Priority:
    """``nice`` 0-19 (0: unchanged), or ``idle``: run only when a core is otherwise idle."""

    nice: int = 0
    idle: bool = False

    @classmethod
    def parse(cls, text: str) -> Priority:
        """``idle`` or a nice value ``0``-``19``; ``ValueError`` otherwise."""
        if text.strip().lower() == "idle":
            return cls(idle=True)
        value = int(text)
        if not 0 <= value <= 19:
            raise ValueError(f"a nice value is 0-19, got {value}")
        return cls(nice=value)

    @property
    def lowered(self) -> bool:
        return self.idle or self.nice > 0

    def apply(self, pid: int = 0) -> bool:
        """Lower process ``pid`` (0: this one, every thread of it); False when not allowed or the process is gone.
        Never raises.

        On Linux a priority belongs to a thread, and a thread inherits it only when it is created: the threads
        that exist already (OpenBLAS starts its pool when numpy is imported) are lowered one by one."""
        if pid == 0 and _LINUX:
            try:
                threads = [int(t) for t in os.listdir("/proc/self/task")]
            except OSError:
                threads = []
            return all([self._apply(t) for t in threads]) if threads else self._apply(0)
        return self._apply(pid)

    def _apply(self, pid: int) -> bool:
        try:
            if self.idle and _LINUX:
                os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            else:
                current = os.getpriority(os.PRIO_PROCESS, pid)
                os.setpriority(os.PRIO_PROCESS, pid, max(current, 19 if self.idle else self.nice))
        except (OSError, AttributeError):  # EPERM, ESRCH; AttributeError: a platform without these calls
            return False
        return True

    def __str__(self) -> str:
        return "idle" if self.idle else f"nice {self.nice}"


def is_local(conn: psycopg.Connection[Any]) -> bool:
    """Is this connection's server on this machine (a Unix socket, or a loopback address)?"""
    host = conn.info.host or ""
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(conn.info.hostaddr or host).is_loopback
    except ValueError:
        return False


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        return float(next(line.split()[1] for line in f if line.startswith("btime ")))


def _is_backend(pid: int, started: datetime) -> bool:
    """Is ``pid`` this machine's process of that Postgres backend: named ``postgres`` and started when the server
    says the backend started? (Behind a loopback port may be another namespace's server, a tunnel or a pooler,
    whose pids mean other processes here.)"""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            if f.read().strip() not in ("postgres", "postmaster"):
                return False
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        at = _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return abs(at - started.timestamp()) < 2.0


class SessionLowering:
    """Lowers the backends of the connections it is given, and the parallel workers they start.

    ``session(conn)`` is called for each new connection of the job. The watcher thread starts with the first
    lowered backend; every ``interval`` s it asks ``pg_stat_activity`` for parallel workers whose leader is a
    background session (``BACKGROUND``: this job's or another lowered job's), on a connection of its own whose
    backend is lowered too, until ``close()``."""

    def __init__(
        self, conninfo: str, priority: Priority, connect: Callable[[], dict[str, Any]], interval: float = 0.05
    ) -> None:  # fmt: skip
        self.conninfo, self.priority, self.connect, self.interval = conninfo, priority, connect, interval
        self.lowered: set[tuple[int, datetime]] = set()  # parallel workers lowered so far: (pid, backend_start)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = False  # a backend could not be lowered (another user's server): told once

    def _lower(self, conn: psycopg.Connection[Any]) -> bool:
        if not (_LINUX and is_local(conn)):
            return False
        row = conn.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
        if not conn.autocommit:
            conn.rollback()  # no transaction left open by this look
        pid = conn.info.backend_pid
        if row is None or not _is_backend(pid, row[0]):
            return False
        if not self.priority.apply(pid):
            if not self.refused:
                self.refused = True
                log.info("cannot lower the priority of the database's processes (another user's server): "
                         "only this process runs at %s", self.priority)  # fmt: skip
            return False
        return True

    def session(self, conn: psycopg.Connection[Any]) -> bool:
        """Lower this connection's backend; True when it was."""
        if not self._lower(conn):
            return False
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._watch, name="twotower-priority", daemon=True)
                self._thread.start()
        return True

    def _watch(self) -> None:
        query = (
            "SELECT w.pid, w.backend_start FROM pg_stat_activity w JOIN pg_stat_activity l ON l.pid = w.leader_pid "
            "WHERE w.pid <> w.leader_pid AND l.application_name = %s"
        )
        try:
            with psycopg.connect(self.conninfo, autocommit=True, **self.connect()) as conn:
                self._lower(conn)
                while not self._stop.wait(self.interval):
                    for pid, started in conn.execute(query, (BACKGROUND,)).fetchall():
                        if (pid, started) not in self.lowered and _is_backend(pid, started):
                            self.priority.apply(pid)
                            self.lowered.add((pid, started))
        except psycopg.Error as exc:  # the database went away: the job's own connections will say so
            log.debug("priority watcher stopped: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def serving_clients(conn: psycopg.Connection[Any], samples: int = 3, interval: float = 0.25) -> int:
    """How many client sessions of this database, other than background work (this one and every lowered
    store's), ran a statement in the last second: the most seen in ``samples`` looks ``interval`` s apart. An idle
    server's pool shows none; one serving requests shows its busy connections. Without the right to see other
    roles' sessions (``pg_read_all_stats``), each of theirs counts as busy. (``pg_stat_activity`` is live; the
    cumulative transaction counts of ``pg_stat_database`` reach it only about once a second per backend, or
    later.)"""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND application_name <> %s "
        "AND (state IS NULL OR state = 'active' OR state_change > now() - interval '1 second')"
    )
    most = 0
    for i in range(samples):
        if i:
            time.sleep(interval)
        row = conn.execute(query, (BACKGROUND,)).fetchone()
        most = max(most, int(row[0]) if row else 0)
    return most

"""Background work that yields the CPU to the API: a process and its database sessions at a lower CPU priority.

A bulk job on the machine that also serves (the embedded database, a single server) competes with requests for
the same cores, and most of a job's CPU is not its own process's: a shadow generation spends ~80 % of its CPU in
Postgres (binary COPY, the HNSW build and its parallel workers, VACUUM). ``--nice`` alone left that at full
priority. So a ``Priority`` applies to this process and, when the database runs on this machine, to the backend
of every connection the job opens and to the parallel workers those backends start (a watcher thread lowers them
as they appear).

``idle`` (Linux): ``SCHED_IDLE``, the job runs only on CPU time nothing else wants, and a waking request preempts
it at once; a plain ``nice`` value still gives the job a share of a busy core. Elsewhere ``idle`` means nice 19.

Lowering another process's priority needs the same user (the embedded server) or privilege; when it is refused,
or the database is elsewhere, the job runs at the server's priority: only this process is lowered.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = ["Priority", "SessionLowering"]

log = logging.getLogger(__name__)

_LINUX = sys.platform.startswith("linux")


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
        """Lower process ``pid`` (0: this one); False when not allowed or the process is gone. Never raises."""
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


def _local(conn: psycopg.Connection[Any]) -> bool:
    """Is this connection's server on this machine (a Unix socket, or a loopback address)?"""
    host = conn.info.host or ""
    if host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(conn.info.hostaddr or host).is_loopback
    except ValueError:
        return False


def _is_postgres(pid: int) -> bool:
    """Is ``pid`` a Postgres process of this machine (and not a process that happens to share a remote pid)?"""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip() in ("postgres", "postmaster")
    except OSError:
        return False


class SessionLowering:
    """Lowers the backends of the connections it is given, and the parallel workers they start.

    ``session(conn)`` is called for each new connection of the job. The watcher thread starts with the first
    lowered backend; it asks ``pg_stat_activity`` every ``interval`` s for parallel workers led by a lowered
    backend, on a connection of its own, until ``close()``."""

    def __init__(self, conninfo: str, priority: Priority, connect: dict[str, Any], interval: float = 0.05) -> None:
        self.conninfo, self.priority, self.connect, self.interval = conninfo, priority, connect, interval
        self.leaders: set[int] = set()  # backends lowered (pids)
        self.lowered: set[tuple[int, Any]] = set()  # their parallel workers lowered so far: (pid, backend_start)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = False  # a backend could not be lowered (another user's server): told once

    def session(self, conn: psycopg.Connection[Any]) -> bool:
        """Lower this connection's backend; True when it was."""
        if not (self.priority.lowered and _LINUX and _local(conn)):
            return False
        pid = conn.info.backend_pid
        if not _is_postgres(pid):
            return False
        if not self.priority.apply(pid):
            if not self.refused:
                self.refused = True
                log.info("cannot lower the priority of the database's processes (another user's server): "
                         "only this process runs at %s", self.priority)  # fmt: skip
            return False
        with self._lock:
            self.leaders.add(pid)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="twotower-priority", daemon=True)
                self._thread.start()
        return True

    def _watch(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True, **self.connect) as conn:
                while not self._stop.wait(self.interval):
                    with self._lock:
                        leaders = list(self.leaders)
                    rows = conn.execute(
                        "SELECT pid, backend_start FROM pg_stat_activity WHERE leader_pid = ANY(%s) "
                        "AND pid <> leader_pid",
                        (leaders,),
                    ).fetchall()
                    for pid, started in rows:
                        if (pid, started) not in self.lowered and _is_postgres(pid) and self.priority.apply(pid):
                            self.lowered.add((pid, started))
        except psycopg.Error as exc:  # the database went away: the job's own connections will say so
            log.debug("priority watcher stopped: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

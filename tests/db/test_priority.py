"""Background work at a lower CPU priority: the database's processes that serve a lowered store, parallel workers
included, on the real embedded server."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import pytest

from twotower.db import Database
from twotower.db.priority import Priority
from twotower.settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE and /proc are Linux's")


def test_priority_parses_idle_or_a_nice_value() -> None:
    assert Priority.parse("idle") == Priority(idle=True) and Priority.parse(" IDLE ") == Priority(idle=True)
    assert Priority.parse("0") == Priority() and not Priority().lowered
    assert Priority.parse("19") == Priority(nice=19) and Priority(nice=19).lowered
    for bad in ("20", "-1", "x", "", "1.5", "idle; DROP TABLE videos"):
        with pytest.raises(ValueError):
            Priority.parse(bad)


def _policy(pid: int) -> int:
    return os.sched_getscheduler(pid)


def test_a_lowered_store_lowers_its_backends_and_their_parallel_workers(settings: Settings) -> None:
    with Database.open(settings, migrate=False) as lowered, Database.open(settings, migrate=False) as plain:
        lowered.lower_priority(Priority(idle=True))
        with plain.direct() as conn:  # the control: a store that was not lowered
            assert _policy(conn.info.backend_pid) == os.SCHED_OTHER
            conn.execute("CREATE TABLE spin AS SELECT g AS n FROM generate_series(1, 20000) g")
            conn.commit()
        with lowered.connection() as conn:  # pooled connections too
            assert _policy(conn.info.backend_pid) == os.SCHED_IDLE
        with lowered.direct(autocommit=True, lowered=False) as conn:  # what a batch job's switch runs on
            assert _policy(conn.info.backend_pid) == os.SCHED_OTHER
        with lowered.direct() as conn:
            leader = conn.info.backend_pid
            assert _policy(leader) == os.SCHED_IDLE
            for name, value in (("max_parallel_workers_per_gather", "2"), ("parallel_setup_cost", "0"),
                                ("parallel_tuple_cost", "0"), ("min_parallel_table_scan_size", "0")):  # fmt: skip
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            done = threading.Event()

            def scan() -> None:  # ~2 s of parallel workers (pg_sleep is parallel safe)
                try:
                    conn.execute("SELECT count(*) FROM spin WHERE pg_sleep(0.0001) IS NOT NULL").fetchone()
                finally:
                    done.set()

            thread = threading.Thread(target=scan)
            thread.start()
            seen: dict[int, int] = {}
            with plain.direct(autocommit=True) as watch:
                while not done.is_set():
                    for (pid,) in watch.execute("SELECT pid FROM pg_stat_activity WHERE leader_pid = %s "
                                                "AND pid <> leader_pid", (leader,)).fetchall():  # fmt: skip
                        time.sleep(0.2)  # the watcher looks every 50 ms
                        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                            seen[pid] = _policy(pid)
                    time.sleep(0.02)
            thread.join()
    assert seen, "the query started no parallel worker"
    assert set(seen.values()) == {os.SCHED_IDLE}, seen


def test_a_nice_value_lowers_without_raising(settings: Settings) -> None:
    with Database.open(settings, migrate=False) as db:
        db.lower_priority(Priority(nice=7))
        with db.direct() as conn:
            pid = conn.info.backend_pid
            assert os.getpriority(os.PRIO_PROCESS, pid) == 7
            assert Priority(nice=3).apply(pid)  # never raises a priority: still 7
            assert os.getpriority(os.PRIO_PROCESS, pid) == 7
    assert not Priority(nice=5).apply(2**22 + 1)  # no such process: refused, not raised


_EVERY_THREAD = """
import os, sys, threading
import numpy  # OpenBLAS starts its threads here: before the priority is applied
from twotower.db.priority import Priority

stop = threading.Event()
early = threading.Thread(target=stop.wait)
early.start()
assert len(os.listdir("/proc/self/task")) >= 2
assert Priority(idle=True).apply()
late = threading.Thread(target=stop.wait)  # created after: inherits it
late.start()
print(sorted({os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}))
stop.set()
"""


def test_a_process_is_lowered_with_every_thread_it_has() -> None:
    # a priority belongs to a thread on Linux: the threads that existed before (the old os.nice() of the worker
    # left OpenBLAS's pool at full priority) are lowered too; in a child, not to lower the test run itself
    import subprocess

    done = subprocess.run([sys.executable, "-c", _EVERY_THREAD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{os.SCHED_IDLE}]", done.stdout

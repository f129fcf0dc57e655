"""``twotower schedule``: the catalog sync, the nightly batch update, the weekly retrain and the daily quality
check, from cron expressions in the settings.

Each run is a child ``twotower`` process (its own memory, its own exit code) and logs one JSON line. The same
jobs can instead be put in a plain crontab as ``twotower schedule --once batch-update``: that runs the job
now, logs the line and exits with the job's exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

from croniter import croniter

from twotower.errors import ConfigError, InputError
from twotower.settings import Settings

__all__ = ["ScheduledJob", "run_job", "run_schedule", "scheduled_jobs"]


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    cron: str  # five fields, or six with seconds last
    argv: tuple[str, ...]  # the twotower command it runs


def scheduled_jobs(settings: Settings) -> list[ScheduledJob]:
    """The enabled jobs (an empty expression disables one); invalid expressions are a configuration error."""
    candidates = [
        ScheduledJob("batch-update", settings.schedule_batch_update, ("batch-update",)),
        ScheduledJob("retrain", settings.schedule_retrain, ("deploy",)),
        ScheduledJob("monitor", settings.schedule_monitor, ("monitor",)),
    ]
    if settings.dmm_api_id is not None:  # the catalog sync, where there is a catalog API to sync from
        candidates.insert(0, ScheduledJob("sync", settings.schedule_sync, ("sync", "dmm")))
    jobs = []
    for job in candidates:
        if not job.cron.strip():
            continue
        if not croniter.is_valid(job.cron):
            raise ConfigError(f"the schedule of {job.name} is not a cron expression: {job.cron!r}")
        jobs.append(job)
    return jobs


def run_job(job: ScheduledJob, log: TextIO, timeout: float | None = None) -> int:
    """Run the job's command as a child process; log one JSON line; return its exit code."""
    started = datetime.now(UTC)
    clock = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "twotower", *job.argv], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        code, error = proc.returncode, proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
    except subprocess.TimeoutExpired:
        code, error = 124, [f"timed out after {timeout:g}s"]
    line = {
        "event": "scheduled_job", "job": job.name, "command": " ".join(("twotower", *job.argv)),
        "status": "succeeded" if code == 0 else "failed", "exit_code": code,
        "started_at": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - clock, 3),
        "error": error[0] if error else None,
    }  # fmt: skip
    log.write(json.dumps(line) + "\n")
    log.flush()
    return code


def run_schedule(
    jobs: list[ScheduledJob],
    log: TextIO,
    *,
    max_runs: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Run every job at its times, for ever (or ``max_runs`` runs); 0, or the last failing exit code."""
    if not jobs:
        raise InputError("no job is scheduled (TWOTOWER_SCHEDULE_BATCH_UPDATE, _RETRAIN and _MONITOR are empty)")
    now = datetime.now(UTC)
    upcoming = {job.name: croniter(job.cron, now).get_next(datetime) for job in jobs}
    runs, status = 0, 0
    while max_runs is None or runs < max_runs:
        job = min(jobs, key=lambda j: upcoming[j.name])
        wait = (upcoming[job.name] - datetime.now(UTC)).total_seconds()
        if wait > 0:
            sleep(wait)
        code = run_job(job, log)
        status = code or status
        runs += 1
        upcoming[job.name] = croniter(job.cron, datetime.now(UTC)).get_next(datetime)
    return status

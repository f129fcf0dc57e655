"""``twotower schedule``: jobs fire from cron expressions; failures are logged and give a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg


def _schedule(
    url: str, data: Path, *args: str, batch: str = "", retrain: str = "", monitor: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(data),
           "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_SCHEDULE_BATCH_UPDATE": batch,
           "TWOTOWER_SCHEDULE_RETRAIN": retrain, "TWOTOWER_SCHEDULE_MONITOR": monitor}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "twotower", "schedule", *args], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_a_job_fires_from_its_cron_expression(url: str, deployed: Path) -> None:
    started = time.monotonic()
    run = _schedule(url, deployed, "--max-runs", "1", batch="* * * * * */3")  # every 3 seconds
    took = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["job"] == "batch-update" and lines[0]["status"] == "succeeded"
    assert lines[0]["exit_code"] == 0 and took < 120
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT status FROM jobs").fetchall() == [("succeeded",)]


def test_a_failing_job_is_logged_and_exits_non_zero(db_url: str, empty_db_url: str, tmp_path: Path) -> None:
    once = _schedule(db_url, tmp_path, "--once", "batch-update", batch="0 3 * * *")  # no model deployed
    assert once.returncode == 66, once.stderr
    line = json.loads(once.stdout)
    assert line["status"] == "failed" and line["exit_code"] == 66 and "no active model version" in line["error"]
    daemon = _schedule(db_url, tmp_path, "--max-runs", "1", batch="* * * * * */2")
    assert daemon.returncode == 66 and json.loads(daemon.stdout)["status"] == "failed"
    unmigrated = _schedule(empty_db_url, tmp_path, "--once", "batch-update", batch="0 3 * * *")
    assert unmigrated.returncode == 78 and "twotower db upgrade" in json.loads(unmigrated.stdout)["error"]


def test_bad_schedules_are_refused(empty_db_url: str, tmp_path: Path) -> None:
    bad = _schedule(empty_db_url, tmp_path, "--max-runs", "1", batch="every night")
    assert bad.returncode == 78 and "not a cron expression" in bad.stderr and "Traceback" not in bad.stderr
    unknown = _schedule(empty_db_url, tmp_path, "--once", "retrain", batch="0 3 * * *")
    assert unknown.returncode == 65 and "not a scheduled job" in unknown.stderr
    nothing = _schedule(empty_db_url, tmp_path, "--max-runs", "1")
    assert nothing.returncode == 65 and "no job is scheduled" in nothing.stderr


def test_the_daily_quality_check_fails_its_run_on_an_alert(url: str, deployed: Path) -> None:
    healthy = _schedule(url, deployed, "--once", "monitor", monitor="30 3 * * *")
    line = json.loads(healthy.stdout)
    assert healthy.returncode == 0 and line["job"] == "monitor" and line["status"] == "succeeded", healthy.stderr
    with psycopg.connect(url) as conn:  # 80 of the 600 active videos lose their embedding
        conn.execute("DELETE FROM video_embeddings WHERE video_id IN (SELECT id FROM videos ORDER BY id LIMIT 80)")
    alert = _schedule(url, deployed, "--once", "monitor", monitor="30 3 * * *")
    line = json.loads(alert.stdout)
    assert alert.returncode == 1 and line["status"] == "failed" and line["error"].startswith("alert coverage:"), line

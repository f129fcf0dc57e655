"""``batch-update``: every row embedded exactly once, resumable after SIGKILL, shared by concurrent workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg

from tests.jobs.conftest import VIDEOS
from twotower.db import Database
from twotower.jobs import BatchOptions, plan_batch, run_batch
from twotower.registry import LocalStore
from twotower.settings import Settings


def _options(data: Path, **kwargs: object) -> BatchOptions:
    return BatchOptions(cache_dir=data / "models", **kwargs)  # type: ignore[arg-type]


def _vectors(url: str) -> dict[str, np.ndarray]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT video_id::text, embedding::text FROM video_embeddings WHERE model_version = 'v'"
        ).fetchall()
    return {vid: np.array([float(x) for x in vec.strip("[]").split(",")]) for vid, vec in rows}


def _counts(url: str) -> tuple[int, int, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM video_embeddings WHERE model_version = 'v'), "
            "(SELECT count(DISTINCT video_id) FROM video_embeddings WHERE model_version = 'v'), "
            "(SELECT count(*) FROM user_embeddings WHERE model_version = 'v'), "
            "(SELECT count(DISTINCT user_id) FROM user_video_decisions)"
        ).fetchone()
    assert row is not None
    return row


def test_batch_update_embeds_everything_once(url: str, deployed: Path) -> None:
    before = _vectors(url)
    with psycopg.connect(url) as conn:  # a gap to fill: videos without an embedding for the version
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v' AND video_id IN "
                     "(SELECT id FROM videos ORDER BY id LIMIT 50)")  # fmt: skip
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        plan = plan_batch(db, _options(deployed, chunk_size=100))
        assert (plan.version, plan.videos, plan.chunks["videos"], plan.job_id) == ("v", VIDEOS, 6, None)
        result = run_batch(db, LocalStore(deployed / "store"), _options(deployed, chunk_size=100))
    assert result.status == "succeeded" and result.rows["videos"] == VIDEOS and result.failed_chunks == 0
    videos, distinct, users, with_decisions = _counts(url)
    assert videos == distinct == VIDEOS and users == with_decisions == result.rows["users"]
    after = _vectors(url)
    assert max(float(np.abs(before[v] - after[v]).max()) for v in before) < 1e-5  # the same towers, same vectors
    with psycopg.connect(url) as conn:
        chunks = conn.execute("SELECT count(*), min(attempts), max(attempts) FROM job_chunks WHERE job_id = %s",
                              (result.job_id,)).fetchone()  # fmt: skip
        status = conn.execute("SELECT status FROM jobs WHERE id = %s", (result.job_id,)).fetchone()
    assert chunks == (plan.chunks["videos"] + plan.chunks["users"], 1, 1) and status == ("succeeded",)


def _cli(url: str, data: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(data),
           "TWOTOWER_ARTIFACT_STORE": str(data / "store")}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "twotower", "batch-update", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_dry_run_prints_the_plan_and_changes_nothing(url: str, deployed: Path) -> None:
    out, err = _cli(url, deployed, "--dry-run", "--chunk-size", "100").communicate(timeout=120)
    assert "plan: version v: 600 videos, 150 users in 6 videos chunk(s), 2 users chunk(s)" in out, err
    assert "nothing was changed" in out
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    bad = _cli(url, deployed, "--no-videos", "--no-users")
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 65 and "nothing to do" in err and "Traceback" not in err
    missing = _cli(url, deployed, "--model-version", "nope")
    _, err = missing.communicate(timeout=120)
    assert missing.returncode == 66 and "not registered" in err


_KILLED_AFTER_3 = """
import os, signal, sys
from pathlib import Path
from twotower.db import Database
from twotower.jobs import BatchOptions, run_batch
from twotower.registry import LocalStore
from twotower.settings import Settings

def die(done, total, rows):
    if done == 3:
        os.kill(os.getpid(), signal.SIGKILL)

url, data = sys.argv[1], Path(sys.argv[2])
with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db:
    run_batch(db, LocalStore(data / "store"), BatchOptions(chunk_size=100, cache_dir=data / "models"), on_chunk=die)
"""


def test_killed_batch_resumes_without_gaps_or_duplicates(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:  # start from an empty generation: every row must come from the job
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v'")
        conn.execute("DELETE FROM user_embeddings WHERE model_version = 'v'")
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_3, url, str(deployed)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    with psycopg.connect(url) as conn:
        done = conn.execute("SELECT count(*) FROM job_chunks WHERE status = 'done'").fetchone()
        assert done == (3,)
        assert conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'v'").fetchone() == (300,)
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        plan = plan_batch(db, _options(deployed, chunk_size=100))
        assert plan.job_id is not None and plan.done_chunks == 3
        result = run_batch(db, LocalStore(deployed / "store"), _options(deployed, chunk_size=100))
    assert result.job_id == plan.job_id and result.chunks_done == 5 and result.status == "succeeded"
    videos, distinct, users, with_decisions = _counts(url)
    assert videos == distinct == VIDEOS and users == with_decisions


def test_two_workers_share_one_job(url: str, deployed: Path) -> None:
    # throttled so that neither finishes the whole job before the other has started
    workers = [_cli(url, deployed, "--chunk-size", "50", "--max-rate", "100") for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    with psycopg.connect(url) as conn:
        jobs = conn.execute("SELECT id, status FROM jobs").fetchall()
        chunks = conn.execute("SELECT worker, count(*), max(attempts) FROM job_chunks GROUP BY worker").fetchall()
    assert len(jobs) == 1 and jobs[0][1] == "succeeded"  # both joined the same job
    assert len(chunks) == 2 and all(n > 0 and attempts == 1 for _, n, attempts in chunks), chunks  # disjoint
    videos, distinct, users, with_decisions = _counts(url)
    assert videos == distinct == VIDEOS and users == with_decisions
    assert any("rows/s" in out for out, _ in outputs)

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


def test_dry_run_prints_the_plan_and_changes_nothing(url: str, deployed: Path, tmp_path: Path) -> None:
    out, err = _cli(url, deployed, "--dry-run", "--chunk-size", "100").communicate(timeout=120)
    assert "plan: version v: 600 videos, 150 users in 6 videos chunk(s), 2 users chunk(s)" in out, err
    # the towers were deployed with these vectors: a sample re-embedded finds nothing to change
    assert "videos: changed rows in place (about 0% would change; a shadow from 15%)" in out, out
    assert "users: changed rows in place (about 0% would change" in out and "nothing was changed" in out
    forced, _ = _cli(url, deployed, "--dry-run", "--shadow", "--no-users").communicate(timeout=120)
    assert "videos: a shadow generation, switched in at the end (--shadow)" in forced and "users:" not in forced
    # the estimate needs the version's towers: a store that lacks them is one line and an exit code, no traceback
    lost = _cli(url, tmp_path, "--dry-run")  # an empty store and model cache
    out, err = lost.communicate(timeout=120)
    assert lost.returncode == 66 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (out, err)
    assert "version v" in err and out == "", (out, err)
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
    run_batch(db, LocalStore(data / "store"), BatchOptions(chunk_size=100, cache_dir=data / "models", shadow=False),
              on_chunk=die)  # in place (the shadow generation's kills: test_shadow.py)
"""


def test_killed_batch_resumes_without_gaps_or_duplicates(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:  # start from an empty generation: every row must come from the job
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v'")
        conn.execute("DELETE FROM user_embeddings WHERE model_version = 'v'")
    path = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_3, url, str(deployed)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": path})  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    with psycopg.connect(url) as conn:
        done = conn.execute("SELECT count(*) FROM job_chunks WHERE status = 'done'").fetchone()
        assert done == (3,)
        assert conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'v'").fetchone() == (300,)
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        plan = plan_batch(db, _options(deployed, chunk_size=100))
        assert plan.job_id is not None and plan.done_chunks == 3
        decided = f"as job {plan.job_id} decided"  # the path of a resumed job is the job's, not a new estimate
        assert plan.paths == {"videos": ("in place", decided), "users": ("in place", decided)}
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


def _rows(url: str) -> dict[str, tuple[str, np.ndarray]]:
    """video id -> (ctid, vector) of generation "v": a rewritten row has a new ctid."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT video_id::text, ctid::text, embedding::text FROM video_embeddings WHERE model_version = 'v'"
        ).fetchall()
    return {vid: (ctid, np.array([float(x) for x in vec.strip("[]").split(",")])) for vid, ctid, vec in rows}


def _index_state(url: str) -> tuple[list[tuple[str, bool]], int]:
    from twotower.registry.versions import hnsw_index_name

    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'video_embeddings'::regclass AND c.relname LIKE %s ORDER BY 1",
            (hnsw_index_name("v") + "%",),
        ).fetchall()
        vacuums = conn.execute("SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'video_embeddings'")
        return indexes, int(vacuums.fetchone()[0])  # type: ignore[index]


def test_batch_update_rewrites_only_changed_rows(url: str, deployed: Path) -> None:
    from twotower.registry.versions import hnsw_index_name

    before = _rows(url)
    ids = sorted(before)
    moved, dropped, touched = ids[:30], ids[100:120], ids[200:210]
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE video_embeddings SET embedding = l2_normalize(embedding + %s::vector) "
                     "WHERE model_version = 'v' AND video_id = ANY(%s::uuid[])",
                     ("[" + ",".join(["0.3"] * len(before[ids[0]][1])) + "]", moved))  # fmt: skip
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v' AND video_id = ANY(%s::uuid[])",
                     (dropped,))  # fmt: skip
        # videos changed after their embedding (the catalog sync's staleness test): rewritten even if the same
        conn.execute("UPDATE videos SET updated_at = now() WHERE id = ANY(%s::uuid[])", (touched,))
    stale = _rows(url)
    assert max(float(np.abs(stale[v][1] - before[v][1]).max()) for v in moved) > 1e-3
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        result = run_batch(db, LocalStore(deployed / "store"), _options(deployed, chunk_size=100, users=False))
    assert result.status == "succeeded" and result.rows["videos"] == VIDEOS
    assert result.written["videos"] == len(moved) + len(dropped) + len(touched)
    after = _rows(url)
    assert sorted(after) == ids and _counts(url)[:2] == (VIDEOS, VIDEOS)  # every video, exactly once
    assert max(float(np.abs(after[v][1] - before[v][1]).max()) for v in ids) < 1e-5  # all the towers' vectors
    rewritten = {v for v in ids if v not in stale or after[v][0] != stale[v][0]}
    assert rewritten == set(moved) | set(dropped) | set(touched)  # nothing else was written
    indexes, vacuums = _index_state(url)
    assert indexes == [(hnsw_index_name("v"), True)] and vacuums >= 1  # the job vacuumed what it rewrote

    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:  # again: nothing to do
        again = run_batch(db, LocalStore(deployed / "store"), _options(deployed, chunk_size=100, users=False))
    assert again.status == "succeeded" and again.rows["videos"] == VIDEOS and again.written["videos"] == 0
    assert {v: c for v, (c, _) in _rows(url).items()} == {v: c for v, (c, _) in after.items()}


def test_embed_videos_leaves_exactly_one_current_row(url: str, deployed: Path) -> None:
    import uuid

    from twotower.embeddings.generation import embed_videos, embed_videos_counted
    from twotower.inference.towers import OnnxTowers
    from twotower.registry.store import fetch

    towers = OnnxTowers(fetch(LocalStore(deployed / "store"), "v", deployed / "models"))
    before = _rows(url)
    ids = sorted(before)
    same, moved, missing = ids[0], ids[1], ids[2]
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE video_embeddings SET embedding = l2_normalize(embedding + %s::vector) "
                     "WHERE model_version = 'v' AND video_id = %s",
                     ("[" + ",".join(["0.3"] * len(before[same][1])) + "]", moved))  # fmt: skip
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v' AND video_id = %s", (missing,))
    wanted = [uuid.UUID(v) for v in (same, moved, missing)] + [uuid.uuid4()]  # + a video that is gone
    with psycopg.connect(url) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        with conn.transaction():
            assert embed_videos_counted(conn, towers, wanted) == (3, 2)
            assert embed_videos_counted(conn, towers, wanted) == (3, 0)  # twice in one transaction
        conn.autocommit = True
        assert embed_videos(conn, towers, wanted) == 3  # in autocommit mode too
    after = _rows(url)
    assert _counts(url)[:2] == (VIDEOS, VIDEOS)
    assert max(float(np.abs(after[v][1] - before[v][1]).max()) for v in ids) < 1e-5
    assert after[same][0] == before[same][0] and after[moved][0] != before[moved][0]

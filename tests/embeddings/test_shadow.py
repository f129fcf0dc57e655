"""``batch-update`` when most vectors change: a shadow generation, loaded, indexed and switched in; kill -9 safe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.support.db import DEPLOYED_VIDEOS as VIDEOS
from twotower.db import Database
from twotower.db.priority import BACKGROUND, Priority, serving_clients
from twotower.embeddings.generation import update_embeddings
from twotower.embeddings.shadow import BUILD_WORKERS, TRAFFIC, _build_workers
from twotower.jobs import BatchOptions, run_batch
from twotower.registry import LocalStore
from twotower.registry.generations import child_prefix
from twotower.registry.versions import hnsw_index_name
from twotower.settings import Settings


def _options(data: Path, **kwargs: object) -> BatchOptions:
    return BatchOptions(cache_dir=data / "models", chunk_size=100, **kwargs)  # type: ignore[arg-type]


def _vectors(url: str) -> dict[str, np.ndarray]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT video_id::text, embedding::text FROM video_embeddings WHERE model_version = 'v'"
        ).fetchall()
    assert len(rows) == len({r[0] for r in rows})  # one row per video
    return {vid: np.array([float(x) for x in vec.strip("[]").split(",")]) for vid, vec in rows}


def _move_every_vector(url: str, scale: float = 0.3) -> None:
    with psycopg.connect(url) as conn:
        dim = conn.execute("SELECT embedding_dim FROM model_versions WHERE version = 'v'").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE video_embeddings SET embedding = l2_normalize(embedding + %s::vector) "
                     "WHERE model_version = 'v'", ("[" + ",".join([str(scale)] * dim) + "]",))  # fmt: skip


def _state(url: str) -> dict[str, object]:
    """Where generation "v" lives and whether a nearest-neighbour query of it can use its HNSW index."""
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE %s ORDER BY 1",
            (child_prefix("video_embeddings", "v").replace("_", r"\_") + "%",)).fetchall()]  # fmt: skip
        children = [
            r[0]
            for r in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'video_embeddings'::regclass"
            )
        ]
        own = conn.execute("SELECT count(*) FROM ONLY video_embeddings WHERE model_version = 'v'").fetchone()[0]  # type: ignore[index]
        # the foreign keys of the serving child: (referenced table, validated)
        keys = conn.execute(
            "SELECT confrelid::regclass::text, convalidated FROM pg_constraint WHERE contype = 'f' AND conrelid = "
            "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'video_embeddings'::regclass LIMIT 1) ORDER BY 1"
        ).fetchall()
        index = conn.execute(
            "SELECT i.indrelid::regclass::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s", (hnsw_index_name("v"),)).fetchone()  # fmt: skip
        dim = conn.execute("SELECT embedding_dim FROM model_versions WHERE version = 'v'").fetchone()[0]  # type: ignore[index]
        q = "[" + ",".join(["0.1"] * dim) + "]"
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):  # 600 rows: is the index usable?
            conn.execute(f"SET {setting} = off")
        table = children[0] if children else "ONLY video_embeddings"  # (600 rows: a scan of the parent wins)
        plan = "\n".join(r[0] for r in conn.execute(
            f"EXPLAIN SELECT video_id FROM {table} WHERE model_version = 'v' "
            f"ORDER BY embedding::vector({dim}) <#> '{q}'::vector({dim}) LIMIT 10").fetchall())  # fmt: skip
    return {"tables": tables, "children": children, "own_rows": own, "index": index,
            "uses_index": hnsw_index_name("v") in plan, "plan": plan, "keys": keys}  # fmt: skip


def test_bulk_reembed_builds_and_switches_a_shadow_generation(url: str, deployed: Path) -> None:
    towers = _vectors(url)
    _move_every_vector(url)
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        db.lower_priority(Priority(idle=True))  # as `batch-update` runs it: its database sessions yield the CPU
        store = LocalStore(deployed / "store")
        result = run_batch(db, store, _options(deployed))
        with psycopg.connect(url) as conn:
            params = conn.execute("SELECT params FROM jobs WHERE id = %s", (result.job_id,)).fetchone()[0]  # type: ignore[index]
        assert result.status == "succeeded" and params["shadow"] == ["videos"]  # users unchanged: in place
        after = _vectors(url)
        assert sorted(after) == sorted(towers)
        assert max(float(np.abs(after[v] - towers[v]).max()) for v in towers) < 1e-5
        first = _state(url)
        child = f"{child_prefix('video_embeddings', 'v')}{result.job_id}"
        assert first["tables"] == first["children"] == [child] and first["own_rows"] == 0
        assert first["index"] == (child, True) and first["uses_index"], first["plan"]
        assert first["keys"] == [("model_versions", True), ("videos", True)]  # enforced and validated

        again = run_batch(db, store, _options(deployed))  # nothing changed: in place, nothing written
        assert again.status == "succeeded" and again.written["videos"] == 0 and _state(url)["tables"] == [child]

        _move_every_vector(url, -0.2)  # a second bulk re-embed: the child is replaced by a new one
        third = run_batch(db, store, _options(deployed, users=False))
        assert third.status == "succeeded" and len(_vectors(url)) == VIDEOS
        assert max(float(np.abs(_vectors(url)[v] - towers[v]).max()) for v in towers) < 1e-5
        state = _state(url)
        new = f"{child_prefix('video_embeddings', 'v')}{third.job_id}"
        assert state["tables"] == state["children"] == [new] and state["index"] == (new, True) and state["uses_index"]

        with psycopg.connect(url) as conn:  # in-place writes (the catalog sync) go to the child: one row per id
            conn.execute("UPDATE videos SET updated_at = now() WHERE id IN (SELECT id FROM videos LIMIT 5)")
        fourth = run_batch(db, store, _options(deployed, users=False))
        assert fourth.written["videos"] == 5 and len(_vectors(url)) == VIDEOS and _state(url)["own_rows"] == 0


_KILLED = """
import os, signal, sys
from pathlib import Path
import psycopg
from twotower.db import Database
from twotower.embeddings.generation import update_embeddings
from twotower.jobs import BatchOptions, run_batch
from twotower.registry import LocalStore
from twotower.settings import Settings

url, data, phase = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
execute = psycopg.Connection.execute

def killing(self, query, *args, **kwargs):
    text = query if isinstance(query, str) else query.as_string(self)
    if phase == "index" and "USING hnsw" in text:  # mid-build: the index built, its transaction not committed
        execute(self, "BEGIN")
        execute(self, query, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    result = execute(self, query, *args, **kwargs)
    if phase == "switch" and ' INHERIT "video_embeddings"' in text and "NO INHERIT" not in text:
        os.kill(os.getpid(), signal.SIGKILL)  # inside the switch's transaction, before its commit
    return result

psycopg.Connection.execute = killing

def die(done, total, rows):
    if phase == "load" and done == 3:
        os.kill(os.getpid(), signal.SIGKILL)

with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db:
    run_batch(db, LocalStore(data / "store"), BatchOptions(chunk_size=100, cache_dir=data / "models", users=False),
              on_chunk=die)
"""


@pytest.mark.parametrize("phase", ["load", "index", "switch"])
def test_killed_shadow_build_leaves_the_generation_serving_and_resumes(url: str, deployed: Path, phase: str) -> None:
    towers = _vectors(url)
    _move_every_vector(url)
    serving = _vectors(url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", _KILLED, url, str(deployed), phase], capture_output=True,
                            text=True, timeout=300, env=env)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    left = _vectors(url)  # the serving generation is intact: the same rows, indexed
    assert sorted(left) == sorted(serving) and all(np.array_equal(left[v], serving[v]) for v in serving)
    state = _state(url)
    assert state["children"] == [] and state["own_rows"] == VIDEOS and state["uses_index"]
    assert state["index"] == ("video_embeddings", True) and len(state["tables"]) == 1  # the loaded table waits
    with psycopg.connect(url) as conn:
        done = conn.execute("SELECT count(*) FROM job_chunks WHERE status = 'done'").fetchone()[0]  # type: ignore[index]
    assert done == (3 if phase == "load" else VIDEOS // 100)
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        result = run_batch(db, LocalStore(deployed / "store"), _options(deployed, users=False))
    assert result.status == "succeeded" and result.chunks_done == (VIDEOS // 100 - 3 if phase == "load" else 0)
    after = _vectors(url)
    assert sorted(after) == sorted(towers) and max(float(np.abs(after[v] - towers[v]).max()) for v in towers) < 1e-5
    state = _state(url)
    assert state["tables"] == state["children"] and len(state["children"]) == 1 and state["own_rows"] == 0
    assert state["index"] == (state["children"][0], True) and state["uses_index"]


def test_users_get_a_shadow_generation_too(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:
        before = dict(conn.execute("SELECT user_id, embedding::text FROM user_embeddings WHERE model_version = 'v'"))
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        result = run_batch(db, LocalStore(deployed / "store"), _options(deployed, videos=False, shadow=True))
    assert result.status == "succeeded" and result.rows["users"] == len(before)
    child = f"{child_prefix('user_embeddings', 'v')}{result.job_id}"
    with psycopg.connect(url) as conn:
        after = dict(conn.execute("SELECT user_id, embedding::text FROM user_embeddings WHERE model_version = 'v'"))
        where = conn.execute("SELECT tableoid::regclass::text, count(*) FROM user_embeddings "
                             "WHERE model_version = 'v' GROUP BY 1").fetchall()  # fmt: skip
        rls = conn.execute("SELECT relrowsecurity FROM pg_class WHERE relname = %s", (child,)).fetchone()
    assert sorted(after) == sorted(before) and where == [(child, len(before))] and rls == (True,)
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        from twotower.registry.versions import drop_generation

        with db.direct(autocommit=True) as conn:  # dropping the generation drops its tables
            drop_generation(conn, "v")
            assert conn.execute("SELECT to_regclass(%s)", (child,)).fetchone() == (None,)
            assert conn.execute("SELECT count(*) FROM user_embeddings WHERE model_version = 'v'").fetchone() == (0,)


def test_the_switch_never_holds_requests_behind_a_busy_table(url: str, deployed: Path) -> None:
    """A long transaction reads the generation while the job wants to switch: the switch waits (in attempts of
    ``LOCK_TIMEOUT``), and the requests queued behind it meanwhile go through; it switches once the reader is gone."""
    import threading
    import time

    from twotower.registry.generations import generation_table

    _move_every_vector(url)
    reader = psycopg.connect(url)
    reader.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'v'")  # holds its lock until commit
    outcome: list[object] = []
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        job = threading.Thread(target=lambda: outcome.append(
            run_batch(db, LocalStore(deployed / "store"), _options(deployed, users=False))))  # fmt: skip
        job.start()
        with psycopg.connect(url, autocommit=True) as watcher:
            waited = None
            while job.is_alive() and waited is None:  # until the switch queues for its lock behind the reader
                waited = watcher.execute(
                    "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'video_embeddings'::regclass"
                ).fetchone()
                time.sleep(0.001)
            assert waited is not None, outcome
            requests = 0
            for _ in range(20):  # requests keep being answered while the switch is refused
                watcher.execute("SET statement_timeout = '30s'")
                assert len(watcher.execute("SELECT video_id FROM video_embeddings WHERE model_version = 'v' "
                                           "LIMIT 5").fetchall()) == 5  # fmt: skip
                requests += 1
            assert job.is_alive() and generation_table(watcher, "video_embeddings", "v") == "video_embeddings"
        reader.rollback()  # the reader goes: the switch goes through
        reader.close()
        job.join(timeout=300)
    assert requests == 20 and outcome and outcome[0].status == "succeeded"  # type: ignore[attr-defined]
    assert _state(url)["children"] != [] and _state(url)["own_rows"] == 0


def test_live_writes_during_the_job_survive_the_switch(url: str, deployed: Path) -> None:
    """The catalog sync keeps writing to the serving table while a shadow loads: a video it re-embeds after its
    chunk was loaded keeps the sync's vector, a video created meanwhile keeps its row, and a video deleted after
    its chunk was loaded has none (the loaded table's foreign keys are then validated)."""
    _move_every_vector(url)
    with psycopg.connect(url) as conn:
        dim = conn.execute("SELECT embedding_dim FROM model_versions WHERE version = 'v'").fetchone()[0]  # type: ignore[index]
    marker = np.zeros((1, dim), dtype=np.float32)
    marker[0, 0] = 1.0
    live: dict[str, str] = {}

    def sync_meanwhile(done: int, total: int, rows: int) -> None:
        if live or done < 1:
            return
        with psycopg.connect(url) as conn, conn.transaction():
            register_vector(conn)
            loaded, doomed = conn.execute(  # videos whose chunk is already in the shadow
                "SELECT v.id FROM job_chunks c JOIN videos v ON v.id::text BETWEEN c.range_start AND c.range_end "
                "WHERE c.status = 'done' ORDER BY v.id LIMIT 2"
            ).fetchall()
            conn.execute("DELETE FROM videos WHERE id = %s", (doomed[0],))
            created = conn.execute(
                "INSERT INTO videos (source, external_id, title) VALUES ('live', 'x1', 'made meanwhile') RETURNING id"
            ).fetchone()
            assert created is not None
            for video in (loaded[0], created[0]):
                update_embeddings(conn, "video_embeddings", "video_id", "v", [video], marker)
            live.update(loaded=str(loaded[0]), created=str(created[0]), deleted=str(doomed[0]))

    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        result = run_batch(db, LocalStore(deployed / "store"), _options(deployed, users=False, shadow=True),
                           on_chunk=sync_meanwhile)  # fmt: skip
    assert result.status == "succeeded" and live
    after = _vectors(url)
    assert len(after) == VIDEOS and live["created"] in after and live["deleted"] not in after
    assert np.allclose(after[live["loaded"]], marker[0], atol=1e-6)  # the sync's write is newer than the chunk's
    state = _state(url)
    assert state["children"] == [f"{child_prefix('video_embeddings', 'v')}{result.job_id}"]
    assert state["keys"] == [("model_versions", True), ("videos", True)]


def test_a_gentle_job_builds_its_index_with_one_process_while_the_database_serves(url: str) -> None:
    stop = threading.Event()

    def client(name: str) -> None:  # a session running a statement every 5 ms
        with psycopg.connect(url, autocommit=True, application_name=name) as other:
            while not stop.is_set():
                other.execute("SELECT 1")
                time.sleep(0.005)

    def running(*names: str) -> list[threading.Thread]:
        threads = [threading.Thread(target=client, args=(n,)) for n in names]
        for t in threads:
            t.start()
        time.sleep(0.3)
        return threads

    with psycopg.connect(url, autocommit=True) as conn:
        assert _build_workers(conn, gentle=False) == BUILD_WORKERS  # no sampling: the machine is the job's
        assert serving_clients(conn) == 0 and _build_workers(conn, gentle=True) == BUILD_WORKERS
        threads = running(BACKGROUND, BACKGROUND)  # other workers of the job (or another job) are not traffic
        try:
            assert serving_clients(conn) == 0 and _build_workers(conn, gentle=True) == BUILD_WORKERS
            threads += running("twotower", "twotower")  # a server's pool at work
            assert serving_clients(conn) == 2 >= TRAFFIC and _build_workers(conn, gentle=True) == 0
        finally:
            stop.set()
            for t in threads:
                t.join()

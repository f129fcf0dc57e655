"""Deployment: promote, rollback, pruning, and every failure leaving the active version serving, untouched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import onnx
import psycopg
import pytest
from onnx import numpy_helper
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.support.db import database_copy, drop_db, seed_template
from twotower.db import Database
from twotower.errors import (
    ArtifactError,
    DeployFailed,
    DeployInProgress,
    EmbeddingAlerts,
    QualityGateFailed,
    RollbackRefused,
    VersionConflict,
)
from twotower.export import export_model
from twotower.monitor import Thresholds
from twotower.pipeline.deploy import DeployOptions, DeployResult, deploy
from twotower.registry import LocalStore, S3Store
from twotower.registry.versions import NOTIFY_CHANNEL, hnsw_index_name, process_actor, rollback
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train

SEEDED = "tt_deploy_seed"


@pytest.fixture(scope="module")
def seeded(pg_server: str, template_db: str) -> Iterator[str]:
    """A template database with a synthetic catalog and swipes (each test gets its own copy)."""
    yield seed_template(pg_server, template_db, SEEDED, SynthConfig(videos=800, users=200, decisions=12_000, seed=5,
                                                                     tastes=6))  # fmt: skip
    drop_db(pg_server, SEEDED)


@pytest.fixture(scope="module")
def models(pg_server: str, seeded: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three trained and exported models: two good ones and one that cannot beat the linear model."""
    out = tmp_path_factory.mktemp("trained")
    url = make_conninfo(pg_server, dbname=seeded)
    dirs = {}
    with Database.open(Settings(database_url=url, data_dir=out), migrate=False) as db:
        for version, options in (
            ("a", {"epochs": 3, "seed": 0}),
            ("b", {"epochs": 3, "seed": 1}),
            ("bad", {"epochs": 1, "seed": 2, "learning_rate": 1e-7}),
        ):
            result = train(db, TrainOptions(batch_size=256, output_dir=out, refit=False, version=version, **options))
            export_model(result.directory)
            dirs[version] = result.directory
    return dirs


@pytest.fixture
def url(pg_server: str, seeded: str) -> Iterator[str]:
    with database_copy(pg_server, seeded) as copy:
        yield copy


@pytest.fixture
def db(url: str, tmp_path: Path) -> Iterator[Database]:
    with Database.open(Settings(database_url=url, data_dir=tmp_path), migrate=False) as database:
        yield database


def _copy(models: dict[str, Path], name: str, tmp_path: Path) -> Path:
    target = tmp_path / "models" / name
    shutil.copytree(models[name], target)
    return target


def _deploy(db: Database, store: Any, model_dir: Path, tmp_path: Path, **kwargs: Any) -> DeployResult:
    hooks = {k: kwargs.pop(k) for k in ("on_stage", "on_chunk") if k in kwargs}
    kwargs.setdefault("tolerance", 0.5)  # "b" is a little worse than "a" (see the regression case)
    options = DeployOptions(model_dir=model_dir, cache_dir=tmp_path / "cache", **kwargs)
    return deploy(db, store, options, **hooks)


def _state(url: str) -> dict[str, Any]:
    """The active version, its generation's row counts and an ANN query served by its HNSW index."""
    with psycopg.connect(url) as conn:
        active = conn.execute("SELECT version, embedding_dim FROM model_versions WHERE status = 'active'").fetchone()
        assert active is not None, "no active version"
        version, dim = active
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM video_embeddings WHERE model_version = %(v)s), "
            "(SELECT count(*) FROM user_embeddings WHERE model_version = %(v)s)",
            {"v": version},
        ).fetchone()
        user = conn.execute(
            "SELECT embedding::text FROM user_embeddings WHERE model_version = %s ORDER BY user_id LIMIT 1", (version,)
        ).fetchone()
        assert user is not None
        query = sql.SQL(
            "SELECT video_id FROM video_embeddings WHERE model_version = {v} "
            "ORDER BY embedding::vector({d}) <#> {q}::vector({d}) LIMIT 20"
        ).format(v=sql.Literal(version), d=sql.Literal(dim), q=sql.Literal(user[0]))
        conn.execute("SET enable_sort = off")  # 800 rows: an exact sort is cheaper; prove the index serves
        plan = "\n".join(r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + query).fetchall())
        hits = conn.execute(query).fetchall()
    return {"version": version, "videos": counts[0], "users": counts[1], "hits": len(hits),
            "index_used": hnsw_index_name(version) in plan}  # fmt: skip


def _intact(url: str, version: str) -> None:
    state = _state(url)
    assert state == {"version": version, "videos": 800, "users": 200, "hits": 20, "index_used": True}, state


def test_deploy_promote_rollback(db: Database, url: str, models: dict[str, Path], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = _deploy(db, store, _copy(models, "a", tmp_path), tmp_path)
    assert first.version == "a" and first.previous is None
    assert first.generation.videos == 800 and first.generation.users == 200
    assert first.gate is not None and first.gate.passed and first.gate.model > first.gate.linear
    assert store.versions() == ["a"]
    _intact(url, "a")

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        second = _deploy(db, store, _copy(models, "b", tmp_path), tmp_path)
        notes = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert second.previous == "a" and notes == ["b"]
    assert second.gate is not None and second.gate.active_version == "a" and second.gate.active is not None
    _intact(url, "b")

    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT count(*), max(created_at) FROM video_embeddings").fetchone()
        started = time.perf_counter()
        active, previous = rollback(conn)
        took = time.perf_counter() - started
        after = conn.execute("SELECT count(*), max(created_at) FROM video_embeddings").fetchone()
        history = conn.execute("SELECT version, previous_version, action FROM model_deployments ORDER BY id").fetchall()
        actors = {r[0] for r in conn.execute("SELECT actor FROM model_deployments")}
    assert (active, previous) == ("a", "b") and took < 1.0
    assert before == after  # nothing recomputed: both generations were there all along
    assert history == [("a", None, "promote"), ("b", "a", "promote"), ("a", "b", "rollback")]
    assert actors == {process_actor()} and "@" in process_actor()  # who: this process's user@host
    _intact(url, "a")
    with psycopg.connect(url) as conn:
        assert rollback(conn, "b") == ("b", "a")
        with pytest.raises(Exception, match="already active"):
            rollback(conn, "b")
    _intact(url, "b")


def test_keep_generations_prunes_and_from_store_restores(
    db: Database, url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    _deploy(db, store, _copy(models, "a", tmp_path), tmp_path, keep_generations=1)
    assert _deploy(db, store, _copy(models, "b", tmp_path), tmp_path, keep_generations=1).pruned == []
    result = _deploy(db, store, _copy(models, "bad", tmp_path), tmp_path, keep_generations=1, gate=False)
    assert result.pruned == ["a"]  # "b", the previous one, keeps its generation
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'a'").fetchone() == (0,)
        assert conn.execute("SELECT status FROM model_versions WHERE version = 'a'").fetchone() == ("archived",)
        with pytest.raises(RollbackRefused, match=r"generation was pruned.*--from-store a"):
            rollback(conn, "a")
    state = _state(url)
    assert state["version"] == "bad" and state["videos"] == 800
    restored = deploy(db, store, DeployOptions(from_store="a", keep_generations=1, cache_dir=tmp_path / "cache"))
    assert restored.version == "a" and restored.previous == "bad" and restored.restored
    assert restored.pruned == ["b"]
    _intact(url, "a")


def _tamper_onnx(path: Path) -> None:
    model = onnx.load(str(path))
    weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) + 0.05, weights.name))
    onnx.save(model, str(path))


def _at(stage: str, action: Callable[[], None]) -> Callable[[str], None]:
    def hook(name: str) -> None:
        if name == stage:
            action()

    return hook


@dataclass(frozen=True)
class Failure:
    """One way a deploy of "b" over an active "a" fails: how it is provoked, and what must be said."""

    name: str
    message: str  # in the DeployFailed message
    stage: str  # the stage that failed
    cause: type[Exception] | None = None  # the type of DeployFailed.cause, when it matters
    candidate: str = "b"  # which trained model is deployed ("bad": worse than the linear model)
    # (the candidate's directory, the store, the S3 endpoint) -> deploy's extra options, and another store or None
    provoke: Callable[[Path, LocalStore, str], tuple[dict[str, Any], Any]] = lambda c, st, s3: ({}, None)


def _corrupt_weights(candidate: Path, store: LocalStore, s3: str) -> tuple[dict[str, Any], Any]:
    (candidate / "manifest.json").unlink()  # and no earlier export: the exporter cannot load them
    (candidate / "model.safetensors").write_bytes(b"\x00garbage")
    return {}, None


def _no_bucket(candidate: Path, store: LocalStore, s3: str) -> tuple[dict[str, Any], Any]:
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")  # fmt: skip
    return {}, S3Store("no-such-bucket", client=client)  # a real S3 server that has no such bucket


def _crash(table: str, rows: int) -> None:
    raise RuntimeError("simulated crash while writing embeddings")


FAILURES = [
    Failure("export", "export", "export", provoke=_corrupt_weights),
    Failure(
        "validate",
        "do not match PyTorch",
        "validate",  # the exported graph disagrees with PyTorch
        provoke=lambda c, st, s3: ({"on_stage": _at("validate", lambda: _tamper_onnx(c / "user_tower.onnx"))}, None),
    ),
    Failure("gate", "does not beat the linear model", "gate", QualityGateFailed, candidate="bad"),
    # "b" (another seed of "a") must beat "a" by half: it cannot, whatever the seeds
    Failure(
        "regression",
        "regresses vs the active version a",
        "gate",
        QualityGateFailed,
        provoke=lambda c, st, s3: ({"tolerance": -0.5}, None),
    ),
    Failure("upload", "upload", "upload", provoke=_no_bucket),
    Failure("build", "simulated crash", "build", provoke=lambda c, st, s3: ({"on_chunk": _crash}, None)),
    # the new embeddings raise an alert (here: drift, with an overlap floor above 1)
    Failure(
        "monitor",
        "the new embeddings raised alerts: drift: neighbour overlap@10 with the previous generation",
        "monitor",
        EmbeddingAlerts,
        provoke=lambda c, st, s3: ({"thresholds": Thresholds(min_neighbour_overlap=1.01)}, None),
    ),
    # the stored copy is modified after upload: loading it must refuse
    Failure(
        "tampered",
        "checksum mismatch",
        "build",
        ArtifactError,
        provoke=lambda c, st, s3: (
            {"on_stage": _at("build", lambda: (st.root / "b" / "features.json").write_text("{}"))},
            None,
        ),
    ),
]


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
def test_failure_leaves_active_version_serving(
    failure: Failure, db: Database, url: str, models: dict[str, Path], tmp_path: Path, s3_endpoint: str
) -> None:
    store = LocalStore(tmp_path / "store")
    _deploy(db, store, _copy(models, "a", tmp_path), tmp_path)
    candidate = _copy(models, failure.candidate, tmp_path)
    kwargs, other_store = failure.provoke(candidate, store, s3_endpoint)
    with pytest.raises(DeployFailed, match=failure.message) as info:
        _deploy(db, other_store or store, candidate, tmp_path, **kwargs)
    assert "the active version a is still serving" in str(info.value.message)
    assert info.value.stage == failure.stage
    if failure.cause is not None:
        assert isinstance(info.value.cause, failure.cause)
    _intact(url, "a")
    with psycopg.connect(url) as conn:
        leftovers = conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'b'").fetchone()
        status = conn.execute("SELECT status FROM model_versions WHERE version = 'b'").fetchone()
        index = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", (hnsw_index_name("b"),)).fetchone()
    assert leftovers == (0,) and index == (0,)
    assert status in (None, ("failed",))  # registered only once uploaded; then marked failed


_CRASHING_DEPLOY = """
import os, signal, sys
from pathlib import Path
from twotower.db import Database
from twotower.registry import LocalStore
from twotower.pipeline.deploy import DeployOptions, deploy
from twotower.settings import Settings

def die(table, rows):
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind: a real crash

url, model_dir, store, cache = sys.argv[1:]
with Database.open(Settings(database_url=url, data_dir=cache), migrate=False) as db:
    options = DeployOptions(model_dir=Path(model_dir), cache_dir=Path(cache), gate=False)
    deploy(db, LocalStore(Path(store)), options, on_chunk=die)
"""


def test_killed_deploy_is_cleaned_up_by_the_next(
    db: Database, url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    _deploy(db, store, _copy(models, "a", tmp_path), tmp_path)
    killed = subprocess.run(
        [sys.executable, "-c", _CRASHING_DEPLOY, url, str(_copy(models, "b", tmp_path)), str(store.root),
         str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    _intact(url, "a")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT status FROM model_versions WHERE version = 'b'").fetchone() == ("building",)
    # the lock died with the process: the next deploy gets it, and cleans up what the crash left
    result = _deploy(db, store, _copy(models, "bad", tmp_path), tmp_path, gate=False)
    assert result.cleaned == ["b"] and result.version == "bad" and result.previous == "a"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT status, error FROM model_versions WHERE version = 'b'").fetchone()[0] == "failed"
        assert conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'b'").fetchone() == (0,)
    state = _state(url)
    assert state["version"] == "bad" and state["videos"] == 800 and state["index_used"]


def test_concurrent_deploys_serialise(db: Database, url: str, models: dict[str, Path], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    events: list[tuple[str, str]] = []
    inside = threading.Event()
    release = threading.Event()

    def first_hook(stage: str) -> None:
        events.append(("a", stage))
        if stage == "gate":
            inside.set()
            assert release.wait(60)

    errors: list[BaseException] = []

    def run(name: str, hook: Callable[[str], None], **kwargs: Any) -> None:
        try:
            _deploy(db, store, _copy(models, name, tmp_path), tmp_path, on_stage=hook, **kwargs)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    first = threading.Thread(target=run, args=("a", first_hook))
    first.start()
    assert inside.wait(120)
    with pytest.raises(DeployInProgress, match=r"another deploy is running .*--wait"):
        _deploy(db, store, _copy(models, "b", tmp_path / "x"), tmp_path)
    with pytest.raises(DeployInProgress, match=r"still running after waiting 0\.6 s"):
        _deploy(db, store, _copy(models, "b", tmp_path / "y"), tmp_path, wait=True, lock_timeout=0.6)
    second = threading.Thread(target=run, args=("b", lambda s: events.append(("b", s))), kwargs={"wait": True})
    second.start()
    time.sleep(1.0)
    assert second.is_alive() and not any(who == "b" for who, _ in events)  # waiting for the lock
    release.set()
    first.join(120)
    second.join(120)
    assert not errors, errors
    owners = [who for who, _ in events]
    assert owners == sorted(owners)  # every stage of the first before any of the second: never interleaved
    _intact(url, "b")
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version, action FROM model_deployments ORDER BY id").fetchall() == [
            ("a", "promote"), ("b", "promote"),
        ]  # fmt: skip


def test_cli_deploy_rollback_and_models_list(url: str, models: dict[str, Path], tmp_path: Path) -> None:
    env = {"DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(tmp_path / "data"), "PATH": os.environ["PATH"],
           "TWOTOWER_ARTIFACT_STORE": str(tmp_path / "store")}  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "twotower", *args], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip

    empty = cli("models", "list")
    assert empty.returncode == 0 and "no model versions yet" in empty.stdout
    for name in ("a", "b"):
        run = cli("deploy", "--model-dir", str(_copy(models, name, tmp_path)), "--tolerance", "0.5")
        assert run.returncode == 0, run.stderr
        assert f"active: {name}" in run.stdout and "gate: Recall@20" in run.stdout
    back = cli("rollback")
    assert back.returncode == 0 and "active: a (was b), switched in" in back.stdout
    listing = json.loads(cli("models", "list", "--json").stdout)
    assert [(v["version"], v["status"]) for v in listing] == [("b", "retired"), ("a", "active")]
    assert all(v["videos_embedded"] == 800 and v["recall_at_20"] > 0 for v in listing)
    table = cli("models", "list")
    assert "active" in table.stdout and "retired" in table.stdout
    bad = cli("deploy", "--model-dir", str(_copy(models, "bad", tmp_path)))
    assert bad.returncode == 65 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: deploy failed at gate") and "a is still serving" in bad.stderr
    for args, code, text in (
        (("rollback", "nope"), 66, "not registered"),
        (("rollback", "a"), 65, "already active"),
        (("rollback", "../../etc"), 66, "not registered"),
        (("deploy", "--model-dir", str(tmp_path / "missing")), 65, "not a model directory"),
        (("deploy", "--tolerance", "3"), 65, "--tolerance"),
        (("deploy", "--from-store", "a"), 65, "not archived"),
    ):
        run = cli(*args)
        assert run.returncode == code and text in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)


def test_a_video_changed_during_the_build_shows_as_stale(
    db: Database, url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    touched: list[bool] = []

    def touch(table: str, rows: int) -> None:  # the catalog changes while the generation is being written
        if not touched:
            with psycopg.connect(url) as conn:
                conn.execute("UPDATE videos SET title = title || ' (recut)' "
                             "WHERE id = (SELECT id FROM videos ORDER BY id LIMIT 1)")  # fmt: skip
            touched.append(True)

    _deploy(db, LocalStore(tmp_path / "store"), _copy(models, "a", tmp_path), tmp_path, on_chunk=touch)
    with psycopg.connect(url) as conn:
        stale = conn.execute(
            "SELECT count(*) FROM videos v JOIN video_embeddings e ON e.video_id = v.id AND e.model_version = 'a' "
            "WHERE e.created_at < v.updated_at"
        ).fetchone()
    assert stale == (1,)  # so the next sync or batch update re-embeds it


_KILLED_AT = """
import os, signal, sys
from pathlib import Path
from twotower.db import Database
from twotower.registry import LocalStore
from twotower.pipeline.deploy import DeployOptions, deploy
from twotower.settings import Settings

url, model_dir, store, cache, where = sys.argv[1:]

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind: a real crash

stage = lambda name: die() if name == where else None
with Database.open(Settings(database_url=url, data_dir=cache), migrate=False) as db:
    options = DeployOptions(model_dir=Path(model_dir), cache_dir=Path(cache), gate=False)
    deploy(db, LocalStore(Path(store)), options, on_stage=stage, on_chunk=die if where == "chunk" else None)
"""


def test_a_killed_deploy_can_be_run_again_under_its_name(
    db: Database, url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    """Killed when the version is registered, building, and built but unchecked: the same command then runs
    again and finishes; a built-but-unchecked version can never be rolled back to."""
    store = LocalStore(tmp_path / "store")
    _deploy(db, store, _copy(models, "a", tmp_path), tmp_path)
    b = _copy(models, "b", tmp_path)
    for where, status in (("build", "registered"), ("chunk", "building"), ("monitor", "ready")):
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_AT, url, str(b), str(store.root), str(tmp_path / "cache"), where],
            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        )  # fmt: skip
        assert killed.returncode == -9, killed.stderr
        _intact(url, "a")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT status FROM model_versions WHERE version = 'b'").fetchone() == (status,)
            if status == "ready":  # its checks never ran: no way to serve it
                with pytest.raises(RollbackRefused, match="never promoted"):
                    rollback(conn, "b")
    result = _deploy(db, store, b, tmp_path, gate=False)  # the same command, once more
    assert result.version == "b" and result.previous == "a" and result.cleaned == ["b"]
    state = _state(url)
    assert state["version"] == "b" and state["videos"] == 800 and state["index_used"]
    again = _deploy(db, store, b, tmp_path, gate=False)  # once more after it finished: nothing to redo
    assert again.already_active and again.version == "b" and again.previous is None
    other = _copy(models, "a", tmp_path / "other")  # other files under the name "b": taken for good
    _rename(other, "b")
    with pytest.raises(VersionConflict, match=r"already registered \(active\)"):  # no stage named
        _deploy(db, store, other, tmp_path, gate=False)


def _rename(model_dir: Path, version: str) -> None:
    """The model in ``model_dir``, exported under another version name (its files stay those of its model)."""
    training = json.loads((model_dir / "training.json").read_text())
    (model_dir / "training.json").write_text(json.dumps({**training, "version": version}))
    export_model(model_dir)


_KILLED_IN_PRUNE = """
import os, signal, sys
import twotower.registry.versions as versions
from twotower.cli import main

def drop(conn, version):  # the version is archived, its generation not yet dropped: a real crash
    os.kill(os.getpid(), signal.SIGKILL)

versions.drop_generation = drop
sys.argv = ["twotower", *sys.argv[1:]]
main()
"""


def test_a_deploy_killed_while_pruning_is_finished_by_the_same_command(
    url: str, models: dict[str, Path], tmp_path: Path
) -> None:
    """`deploy --version m3 ...` killed during its prune: the same command says m3 is active and finishes the
    prune (exit 0), without training again; another model under the name m3 is still refused."""
    env = {"DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(tmp_path / "data"), "PATH": os.environ["PATH"],
           "TWOTOWER_ARTIFACT_STORE": str(tmp_path / "store"), "PYTHONPATH": str(Path.cwd())}  # fmt: skip

    def cli(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        head = ["-c", script] if script else ["-m", "twotower"]
        return subprocess.run([sys.executable, *head, *args], env=env, capture_output=True, text=True, timeout=300)

    for name in ("a", "b"):
        run = cli("deploy", "--model-dir", str(_copy(models, name, tmp_path)), "--no-gate", "--keep", "1")
        assert run.returncode == 0, run.stderr
    m3 = ("deploy", "--version", "m3", "--epochs", "2", "--batch-size", "256", "--device", "cpu", "--no-gate",
          "--keep", "1", "--output-dir", str(tmp_path / "models"))  # fmt: skip
    killed = cli(*m3, script=_KILLED_IN_PRUNE)
    assert killed.returncode == -9, killed.stderr
    assert "prune" in killed.stdout and "active:" not in killed.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version, status FROM model_versions ORDER BY version").fetchall() == [
            ("a", "archived"), ("b", "retired"), ("m3", "active"),
        ]  # fmt: skip
        left = conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'a'").fetchone()
        assert left == (800,)  # archived, its generation still there: the prune was cut short
    trained = (tmp_path / "models" / "m3" / "model.safetensors").stat().st_mtime_ns

    again = cli(*m3)
    assert again.returncode == 0, again.stderr
    assert "m3 is already active" in again.stdout and "training" not in again.stdout, again.stdout
    assert "pruned generations: a" in again.stdout
    assert (tmp_path / "models" / "m3" / "model.safetensors").stat().st_mtime_ns == trained  # not retrained
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 'a'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM user_embeddings WHERE model_version = 'a'").fetchone() == (0,)
    state = _state(url)
    assert state["version"] == "m3" and state["videos"] == 800 and state["index_used"]

    other = _copy(models, "b", tmp_path / "other")  # a different model under the taken name
    _rename(other, "m3")
    for args in (("deploy", "--model-dir", str(other), "--no-gate"), (*m3[:3], "--seed", "7", *m3[3:])):
        refused = cli(*args)
        assert refused.returncode == 65 and "Traceback" not in refused.stderr, refused.stderr
        assert "version m3 is already registered (active)" in refused.stderr and "immutable" in refused.stderr
    assert _state(url)["version"] == "m3"

"""``twotower deploy``: train → export → validate → quality gate → upload → build generation → promote.

Every stage before the promote works beside the active version and touches none of its rows, so a failure
anywhere leaves it serving, untouched; the failed version is marked ``failed`` and its partial rows dropped.
Deploys are serialised with a Postgres advisory lock held for the whole run. Imports torch (training side).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from twotower.db import Database, locks
from twotower.embeddings.generation import GenerationStats, build_generation
from twotower.errors import (
    DeployFailed,
    DeployInProgress,
    EmbeddingAlerts,
    InputError,
    QualityGateFailed,
    TwoTowerError,
    VersionConflict,
)
from twotower.export import export_model, validate_model
from twotower.inference.towers import OnnxTowers
from twotower.monitor import Thresholds, monitor_version
from twotower.pipeline.gate import GateResult, quality_gate
from twotower.pipeline.rerun import already_active, exported, model_files, prune, version_of
from twotower.pipeline.snapshot import with_item_table
from twotower.registry.experiments import refuse_during_experiment
from twotower.registry.store import ArtifactStore, fetch
from twotower.registry.versions import (
    active_version,
    drop_generation,
    fail_stale_builds,
    get_version,
    hold_candidate,
    promote,
)
from twotower.settings import Settings
from twotower.train.run import TrainOptions, train

__all__ = [
    "STAGES",
    "DeployOptions",
    "DeployResult",
    "GateResult",
    "deploy",
    "deploy_lock",
]

DEPLOY_LOCK = "deploy"
# every stage a deploy runs, in order (``on_stage`` gets these names; DeployFailed.stage is one of them)
STAGES = ("train", "export", "validate", "gate", "upload", "build", "monitor", "candidate", "promote", "prune")


class _Clock:
    """Times the stages of a deploy (``DeployResult.seconds``) and calls ``on_stage`` as each starts; ``name`` is
    the stage running now (the one a failure names)."""

    def __init__(self, on_stage: Callable[[str], None] | None) -> None:
        self.on_stage = on_stage
        self.seconds: dict[str, float] = {}
        self.name = ""
        self._started = 0.0

    def step(self, name: str) -> None:
        assert name in STAGES, name
        self.stop()
        self.name, self._started = name, time.perf_counter()
        if self.on_stage:
            self.on_stage(name)

    def stop(self) -> None:
        if self.name:
            self.seconds[self.name] = time.perf_counter() - self._started


@dataclass
class DeployOptions:
    train: TrainOptions = field(default_factory=TrainOptions)
    model_dir: Path | None = None  # deploy a model trained before (the train stage is skipped)
    from_store: str | None = None  # re-activate an archived version: rebuild its generation from the store
    gate: bool = True
    tolerance: float = 0.02  # relative Recall@20 drop vs the active version that is still accepted
    keep_generations: int = 2  # >= 1: the previous version's generation serves until every server has swapped
    wait: bool = False  # wait for a running deploy instead of exiting
    lock_timeout: float = 0.0  # with wait: give up after this many seconds (0: wait for ever)
    cache_dir: Path = Path(".twotower/models")  # where versions are fetched from the store to be loaded
    monitor: bool = True  # check the new generation's embeddings (twotower monitor) before promoting it
    thresholds: Thresholds = field(default_factory=Thresholds)
    webhook_url: str | None = None  # where the check's alerts are POSTed
    candidate: bool = False  # keep the checked version as a candidate for an experiment instead of promoting it

    @classmethod
    def from_settings(cls, settings: Settings, **given: Any) -> DeployOptions:
        """The options the settings imply (tolerance, generations kept, cache, thresholds, webhook), then
        ``given`` on top (``None`` values mean "not given": the setting stays)."""
        options = cls(
            tolerance=settings.deploy_tolerance, keep_generations=settings.keep_generations,
            cache_dir=settings.model_cache_dir, thresholds=Thresholds.from_settings(settings),
            webhook_url=settings.monitor_webhook_url,
        )  # fmt: skip
        for name, value in given.items():
            if value is not None:
                setattr(options, name, value)
        return options


# what each stage does, in words (progress output of `deploy` and `demo`)
STAGE_TEXT = {
    "train": "training", "export": "exporting to ONNX", "validate": "validating PyTorch vs ONNX Runtime",
    "gate": "quality gate (vs the linear model and the active version)", "upload": "uploading to the artifact store",
    "monitor": "checking the new embeddings",
    "build": "building the embedding generation (the active version keeps serving)", "promote": "promoting",
    "candidate": "keeping it as a candidate (not promoted: `twotower experiment start`)",
    "prune": "pruning old generations",
}  # fmt: skip

_ADVISORY_AT_DEPLOY = frozenset({"coverage", "stale", "like_rate"})


@dataclass
class DeployResult:
    version: str
    previous: str | None
    gate: GateResult | None
    generation: GenerationStats
    pruned: list[str]
    cleaned: list[str]
    seconds: dict[str, float]
    restored: str | None = None  # the artifact URI an archived version was rebuilt from
    already_active: bool = False  # a re-run of a deploy that had promoted its version: only the prune was left


@contextmanager
def deploy_lock(db: Database, *, wait: bool = False, timeout: float = 0.0) -> Iterator[psycopg.Connection[Any]]:
    """Hold the deploy lock on a dedicated autocommit connection (released when it closes, even on a crash)."""
    with db.direct(autocommit=True) as conn:
        conn.execute("SELECT set_config('application_name', 'twotower deploy', false)")
        # polled rather than blocking in pg_advisory_lock: a waiting statement holds a snapshot, and the running
        # deploy's CREATE INDEX CONCURRENTLY would wait for that snapshot, a deadlock Postgres cannot see
        deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
        while True:
            if locks.try_lock(conn, DEPLOY_LOCK):
                break
            if not wait:
                raise DeployInProgress(_holder(conn))
            if time.monotonic() >= deadline:
                raise DeployInProgress(f"another deploy is still running after waiting {timeout:g} s; try again later")
            time.sleep(0.5)
        try:
            yield conn
        finally:
            with suppress(psycopg.Error):
                locks.unlock(conn, DEPLOY_LOCK)


def _holder(conn: psycopg.Connection[Any]) -> str:
    row = locks.holder(conn, DEPLOY_LOCK)
    who = f" (database pid {row[0]}, running since {row[1]:%Y-%m-%d %H:%M:%S %Z})" if row else ""
    return f"another deploy is running{who}; wait for it, or run with --wait to queue behind it"


def deploy(
    db: Database,
    store: ArtifactStore,
    options: DeployOptions,
    *,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    on_chunk: Callable[[str, int], None] | None = None,
) -> DeployResult:
    """Run a whole deploy under the deploy lock. ``on_stage(name)`` is called as each stage starts."""
    clock = _Clock(on_stage)
    say = on_progress or (lambda _: None)
    with deploy_lock(db, wait=options.wait, timeout=options.lock_timeout) as lock:
        cleaned = fail_stale_builds(lock, "interrupted: the deploy building it stopped before it finished")
        if options.from_store is not None:
            return _restore(db, store, options, lock, cleaned, clock, say, on_chunk)
        done = already_active(db, options.model_dir, options.train)
        if done is not None:  # the same deploy, killed after its promote: what was left is the prune
            clock.step("prune")
            pruned = prune(lock, options.keep_generations, say)
            clock.stop()
            return DeployResult(done[0], None, None, done[1], pruned, cleaned, clock.seconds, already_active=True)
        if not options.candidate:
            refuse_during_experiment(db)
        version: str | None = None
        registered = False
        try:
            clock.step("train")
            if options.model_dir is None:
                model_dir = train(db, options.train).directory
            else:
                model_dir = options.model_dir
                if not (model_dir / "tower_config.json").is_file():
                    raise InputError(f"{model_dir}: not a model directory (no tower_config.json)")
            version = version_of(model_dir)
            _check_new(db, store, version)
            step = clock.step
            step("export")
            manifest = exported(model_dir) or export_model(model_dir)
            step("validate")
            report = validate_model(db, model_dir)
            if not report.ok:
                bad = ", ".join(c.name for c in report.checks if not c.ok) or "top-20 lists differ"
                raise InputError(f"the ONNX towers do not match PyTorch within tolerance ({bad})")
            step("gate")
            gate = None
            if options.gate:
                gate = quality_gate(db, model_dir, store, options.tolerance, options.cache_dir)
                if gate.note:
                    say(gate.note)
                if not gate.passed:
                    raise QualityGateFailed("quality gate: " + "; ".join(gate.reasons))
            step("upload")
            with tempfile.TemporaryDirectory(prefix=f"twotower-{version}-") as staging:
                manifest = with_item_table(db, model_dir, Path(staging))  # what servers start from
                uri = _upload(store, version, Path(staging), manifest)
            with db.connection() as conn:
                conn.execute(  # a failed deploy of this version leaves its row: this run takes it over
                    "INSERT INTO model_versions (version, status, embedding_dim, artifact_uri, manifest, metrics) "
                    "VALUES (%s, 'registered', %s, %s, %s, %s) ON CONFLICT (version) DO UPDATE SET "
                    "status = 'registered', error = NULL, embedding_dim = EXCLUDED.embedding_dim, "
                    "artifact_uri = EXCLUDED.artifact_uri, manifest = EXCLUDED.manifest, metrics = EXCLUDED.metrics, "
                    "created_at = now() WHERE model_versions.status = 'failed'",
                    (version, manifest["embedding_dim"], uri, Jsonb(manifest),
                     Jsonb({"gate": gate.to_json() if gate else None, **manifest.get("metrics", {})})),
                )  # fmt: skip
            registered = True
            step("build")
            towers = OnnxTowers(fetch(store, version, options.cache_dir))  # what serving will load, verified
            generation = build_generation(db, towers, on_progress=say, on_chunk=on_chunk)
            if options.monitor:
                step("monitor")
                check = monitor_version(db, options.thresholds, version=version, webhook_url=options.webhook_url,
                                        context="deploy")  # fmt: skip
                # coverage and staleness can come from a sync running meanwhile, not from the model: warnings here
                blocking = [a for a in check.alerts if a.name not in _ADVISORY_AT_DEPLOY]
                for alert in check.alerts:
                    if alert.name in _ADVISORY_AT_DEPLOY:
                        say(f"warning: {alert.name}: {alert.message}")
                if blocking:
                    raise EmbeddingAlerts(
                        "the new embeddings raised alerts: " + "; ".join(f"{a.name}: {a.message}" for a in blocking)
                    )
            step("candidate" if options.candidate else "promote")
            with db.direct() as conn:
                if options.candidate:
                    hold_candidate(conn, version)
                    previous = None
                else:
                    previous = promote(conn, version)
            clock.stop()
        except BaseException as exc:
            stage = clock.name
            if registered and version is not None:
                _mark_failed(lock, version, stage, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit, VersionConflict)):
                raise  # a name taken is no stage's failure
            with db.connection() as conn:
                serving = active_version(conn)
            still = f"the active version {serving} is still serving" if serving else "no version is active"
            cause = exc.message if isinstance(exc, TwoTowerError) else f"{type(exc).__name__}: {exc}"
            raise DeployFailed(f"deploy failed at {stage}: {cause} ({still})", stage, exc) from exc
        if options.candidate:  # nothing was retired: nothing to prune
            return DeployResult(version, previous, gate, generation, [], cleaned, clock.seconds)
        # promoted: from here on a failure is only a warning (the new version is serving)
        clock.step("prune")
        pruned = prune(lock, options.keep_generations, say)
        clock.stop()
    return DeployResult(version, previous, gate, generation, pruned, cleaned, clock.seconds)


def _restore(
    db: Database,
    store: ArtifactStore,
    options: DeployOptions,
    lock: psycopg.Connection[Any],
    cleaned: list[str],
    clock: _Clock,
    say: Callable[[str], None],
    on_chunk: Callable[[str, int], None] | None,
) -> DeployResult:
    """Rebuild an archived version's generation from its (verified) stored artifacts and promote it."""
    version = str(options.from_store)
    with db.connection() as conn:
        status = get_version(conn, version).status
        if status != "archived":
            raise InputError(f"version {version} is {status}, not archived: `twotower rollback {version}` if it "
                             "has a generation, else deploy a new version")  # fmt: skip
        conn.execute("UPDATE model_versions SET status = 'registered', error = NULL WHERE version = %s", (version,))
    try:
        clock.step("build")
        towers = OnnxTowers(fetch(store, version, options.cache_dir))
        generation = build_generation(db, towers, on_progress=say, on_chunk=on_chunk)
        clock.step("promote")
        with db.direct() as conn:
            previous = promote(conn, version)
        clock.stop()
    except BaseException as exc:
        with suppress(psycopg.Error):  # back to archived: the artifacts are still fine, only the rebuild failed
            lock.execute("UPDATE model_versions SET status = 'archived' WHERE version = %s", (version,))
            drop_generation(lock, version)
        if isinstance(exc, TwoTowerError):
            raise DeployFailed(f"rebuilding {version} failed at {clock.name}: {exc.message}", clock.name,
                               exc) from exc  # fmt: skip
        raise
    clock.step("prune")
    pruned = prune(lock, options.keep_generations, say)
    clock.stop()
    return DeployResult(version, previous, None, generation, pruned, cleaned, clock.seconds,
                        restored=store.uri(version))  # fmt: skip


def _check_new(db: Database, store: ArtifactStore, version: str) -> None:
    """A version name is used once, except by a deploy of the same version that failed or died: that one may run
    again (it resumes with what it left in the store, see ``_upload``)."""
    with db.connection() as conn:
        row = conn.execute("SELECT status FROM model_versions WHERE version = %s", (version,)).fetchone()
    if row is not None and row[0] != "failed":
        raise VersionConflict(f"version {version} is already registered ({row[0]}); versions are immutable")
    if row is None and store.exists(version):
        raise VersionConflict(f"version {version} is already in the artifact store; versions are immutable")


def _upload(store: ArtifactStore, version: str, staging: Path, manifest: dict[str, Any]) -> str:
    """Put the version in the store, or keep the copy an earlier, failed deploy of the same files put there."""
    if not store.exists(version):
        return store.put(version, staging)
    if model_files(store.manifest(version).get("checksums", {})) != model_files(manifest["checksums"]):
        raise VersionConflict(f"version {version} is in the artifact store with other files; versions are immutable "
                              "(deploy these under a new version name)")  # fmt: skip
    return store.uri(version)


def _mark_failed(conn: psycopg.Connection[Any], version: str, stage: str, exc: BaseException) -> None:
    """Best effort: the version is marked failed and its partial generation dropped (the next deploy retries)."""
    reason = f"{stage}: {exc.message if isinstance(exc, TwoTowerError) else type(exc).__name__}"[:1000]
    with suppress(psycopg.Error):
        row = conn.execute(
            "UPDATE model_versions SET status = 'failed', error = %s WHERE version = %s AND status <> 'active' "
            "RETURNING version",
            (reason, version),
        ).fetchone()
        if row is not None:  # never the active version (a promote whose acknowledgement was lost)
            drop_generation(conn, version)

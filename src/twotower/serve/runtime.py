"""The model a server answers with: the active version's ONNX towers, hot-swapped on deploy.

A background thread LISTENs for the deploy ``NOTIFY`` and also checks the active version periodically (a safety
net for missed notifications and database restarts). A new version is fetched from the artifact store (checksums
verified) and loaded beside the current one; the swap is one reference assignment, so a request either uses the
old version or the new one, never a mix. Both generations are in the database meanwhile.

Loading runs on a connection of its own, outside the request pool and its session settings (generic plans, a
short statement timeout): a start under full request traffic is not starved of connections, and the reads of a
large catalog are planned for their real size. The server starts answering at once (with the fallbacks) while
the first load runs; ``/readyz`` says 503 until it is done.

During an online experiment (``twotower experiment``) the candidate version is loaded the same way beside the
active one, and :meth:`ModelHolder.answering` picks each user's model by their arm.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from twotower.db import Database
from twotower.db.replicas import wal_position
from twotower.errors import ArtifactError
from twotower.inference.items import ItemIndex
from twotower.inference.towers import OnnxTowers
from twotower.registry import experiments
from twotower.registry.experiments import Arm, Experiment
from twotower.registry.store import ArtifactStore, fetch
from twotower.registry.versions import NOTIFY_CHANNEL, active_version

__all__ = ["LOADER_SESSION", "ExperimentArms", "LoadedModel", "ModelHolder", "Readiness"]

log = logging.getLogger("twotower.serve")

# the loading connection's settings: custom plans (the default), and time enough for a large catalog
LOADER_SESSION = {"statement_timeout": "300s", "plan_cache_mode": "auto", "application_name": "twotower loader"}


@dataclass(frozen=True)
class LoadedModel:
    version: str
    towers: OnnxTowers
    items: ItemIndex
    loaded_at: float
    wal: int = 0  # the primary's WAL position when it was loaded: a read replica answers it once it has replayed this


@dataclass(frozen=True)
class ExperimentArms:
    definition: Experiment
    candidate: LoadedModel | None  # None: not loadable (failed), the control answers both arms
    failed: bool = False


@dataclass(frozen=True)
class Readiness:
    ready: bool
    active: str | None  # the version the database says is active (None: none is, or not checked yet)
    serving: str | None  # the version answering now
    reason: str | None  # why not ready, or why the active version is not the one serving


class ModelHolder:
    def __init__(
        self, db: Database, store: ArtifactStore, cache_dir: Path, *, poll_seconds: float = 30.0, threads: int = 1,
        on_poll: Callable[[psycopg.Connection[Any]], None] | None = None,
    ) -> None:  # fmt: skip
        self.db = db
        self.store = store
        self.cache_dir = cache_dir
        self.poll_seconds = poll_seconds
        self.threads = threads
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.failed_version: str | None = None  # don't retry a broken version on every check
        self.checked = False  # the active version has been read at least once
        self.active: str | None = None  # as last read
        self.loading: str | None = None  # the version being loaded now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.on_poll = on_poll  # other periodic work of the server (the popularity cache), off the request path
        self.experiment: ExperimentArms | None = None  # the running experiment, as this process serves it

    # -- state -----------------------------------------------------------------------------------------------
    def readiness(self) -> Readiness:
        """Ready when the active version answers, or a version does (one being swapped in is loading), or none is
        active (the fallbacks answer); not ready before the first check and while no model is loaded for an
        active version."""
        current = self.current.version if self.current else None
        active = self.active
        if not self.checked:
            reason = self.last_error or "the active model version has not been read yet"
            return Readiness(False, None, current, f"starting: {reason}")
        if active == current:
            return Readiness(True, active, current, None)
        if self.loading == active:
            reason = f"loading model {active}"
        elif self.failed_version == active or self.last_error:
            reason = f"model {active} failed to load: {self.last_error}"
        else:
            reason = f"model {active} is not loaded yet"
        if active is None:
            return Readiness(True, None, current, "no version is active: unloading")
        return Readiness(current is not None, active, current, reason)

    @contextmanager
    def _loader(self) -> Iterator[psycopg.Connection[Any]]:
        with self.db.direct(autocommit=True) as conn:
            for name, value in LOADER_SESSION.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            yield conn

    # -- loading ---------------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Load the active version if it differs from the current one, or bring the current one's item table up
        to date with the catalog; True when the model changed. ``force`` retries a version that failed before."""
        with self._lock:
            try:
                with self._loader() as conn:
                    return self._refresh(conn, force)
            except Exception as exc:  # the database was unreachable: the next check tries again
                self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                raise

    def _refresh(self, conn: psycopg.Connection[Any], force: bool) -> bool:
        changed = self._refresh_active(conn, force)
        self._refresh_experiment(conn)
        return changed

    def _load(self, conn: psycopg.Connection[Any], version: str) -> LoadedModel:
        position = wal_position(conn)  # the version's rows (its embeddings) were committed before this
        directory = fetch(self.store, version, self.cache_dir)
        towers = OnnxTowers(directory, threads=self.threads)
        return LoadedModel(version, towers, ItemIndex.open(directory, conn, towers.pipeline), time.time(), position)

    @staticmethod
    def _updated(conn: psycopg.Connection[Any], model: LoadedModel) -> LoadedModel:
        return replace(model, items=model.items.refreshed(conn, model.towers.pipeline))  # videos added or changed

    def _refresh_active(self, conn: psycopg.Connection[Any], force: bool) -> bool:
        version = active_version(conn)
        self.active, self.checked = version, True
        current = self.current.version if self.current else None
        if version is not None and version == current and self.current is not None:
            self.current = self._updated(conn, self.current)
            self.last_error = None
            return False
        if version is None:
            if current is not None:
                log.warning("no active model version: answering with the fallbacks")
            self.current, self.last_error = None, None
            return current is not None
        if version == self.failed_version and not force:
            return False
        self.loading = version
        started = time.perf_counter()
        try:
            loaded = self._load(conn, version)
        except ArtifactError as exc:  # a broken version stays broken: don't fetch it on every check
            self.failed_version, self.last_error = version, exc.message
            log.error("cannot load model %s: %s (keeping %s)", version, exc.message, current or "the fallbacks")
            return False
        except Exception as exc:  # the store or the database was unreachable: try again at the next check
            self.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning("cannot load model %s yet (%s); retrying", version, self.last_error)
            return False
        finally:
            self.loading = None
        self.current = loaded
        self.failed_version, self.last_error = None, None
        self.reloads += 1
        _freeze()
        log.info("model %s loaded in %.1fs, %d videos (was %s)", version, time.perf_counter() - started,
                 len(loaded.items), current)  # fmt: skip
        return True

    def _refresh_experiment(self, conn: psycopg.Connection[Any]) -> None:
        """Follow the running experiment: load its candidate beside the active version, drop it when it stops.
        Until the candidate is loaded (or when it cannot be), everyone is answered by the active version."""
        running = experiments.current(conn)
        control = self.current
        if running is None or control is None or running.control_version != control.version:
            if self.experiment is not None:
                log.info("experiment %d ended here: every user is answered by %s", self.experiment.definition.id,
                         control.version if control else "the fallbacks")  # fmt: skip
            self.experiment = None
            return
        before = self.experiment if self.experiment and self.experiment.definition.id == running.id else None
        if running.candidate_version == control.version:  # an A/A test
            candidate: LoadedModel | None = control
        elif before is not None and before.candidate is not None:
            candidate = self._updated(conn, before.candidate)
        elif before is not None and before.failed:
            candidate = None
        else:
            try:
                candidate = self._load(conn, running.candidate_version)
                _freeze()
                log.info("experiment %d: candidate %s loaded for %.0f%% of the users", running.id,
                         running.candidate_version, 100 * running.share)  # fmt: skip
            except Exception as exc:  # a broken candidate stays broken; an outage is retried at the next check
                broken = isinstance(exc, ArtifactError)
                log.error("experiment %d: cannot load candidate %s (%s); its arm is answered by %s%s", running.id,
                          running.candidate_version, exc, control.version,
                          "" if broken else " until it loads")  # fmt: skip
                self.experiment = ExperimentArms(running, None, failed=broken)
                return
        self.experiment = ExperimentArms(running, candidate, failed=before.failed if before else False)

    def answering(self, user: uuid.UUID) -> tuple[LoadedModel | None, int | None, Arm | None]:
        """The model that answers ``user``, and the experiment and arm to record with the answer (None, None
        outside an experiment, and for a candidate-arm user while the candidate cannot answer)."""
        current, experiment = self.current, self.experiment
        if experiment is None or current is None:
            return current, None, None
        if experiment.definition.arm(user) == "control":
            return current, experiment.definition.id, "control"
        if experiment.candidate is None:
            return current, None, None
        return experiment.candidate, experiment.definition.id, "candidate"

    # -- watching --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="twotower-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _safe_refresh(self) -> None:
        try:
            self.refresh()
            if self.on_poll is not None:
                with self._loader() as conn:
                    self.on_poll(conn)
        except Exception as exc:  # the watcher must outlive any error: it is the hot-swap
            log.warning("model check failed: %s: %s", type(exc).__name__, exc)

    def _watch(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self.db.direct(autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    self._safe_refresh()  # anything promoted while we were not listening
                    backoff = 0.5
                    self._listen(conn)
            except Exception as exc:
                log.warning("model watcher lost the database (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)  # the model loads within about a second of the database's return

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        next_poll = time.monotonic() + self.poll_seconds
        while not self._stop.is_set():
            timeout = max(0.0, min(1.0, next_poll - time.monotonic()))
            notified = any(True for _ in conn.notifies(timeout=timeout, stop_after=1))
            if notified or time.monotonic() >= next_poll:
                self._safe_refresh()
                next_poll = time.monotonic() + self.poll_seconds


def _freeze() -> None:
    """Keep the model out of the garbage collector's full passes (after a model load, not on every check).

    A loaded model of 100k videos holds ~100k id objects, and the server's own modules ~250k more: a full
    collection walks all of them (~150 ms on one core, holding the GIL) at unpredictable moments under load, which
    made the p99 latency. Long-lived objects are moved to the permanent generation (``gc.freeze``); reference
    counting still frees the old model when a new one replaces it (it holds no reference cycles). One full
    collection first, on the watcher thread, once per load: no garbage cycle is frozen (it would never be freed).
    The item table's catalog refreshes in between add only the changed videos' objects."""
    gc.collect()
    gc.freeze()

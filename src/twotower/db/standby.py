"""A streaming standby of the embedded server: a real read replica on one machine, from the same binaries.

``pg_basebackup -R`` copies the primary and writes its replication settings; the standby then runs beside it on
a Unix socket in its own directory, replaying the primary's WAL as it streams in. What read replicas need is
tried here without a second machine: ``TWOTOWER_READ_DATABASE_URL=<standby.url()>``. ``apply_delay`` holds each
transaction back that long (``recovery_min_apply_delay``), as a replica under load would lag.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from twotower.db.embedded import EmbeddedServer
from twotower.errors import EmbeddedServerError

__all__ = ["EmbeddedStandby"]

_SOCKET_MAX = 100  # bytes of a Unix socket path (the kernel's limit is 107, with the file name)


class EmbeddedStandby:
    """A standby of ``primary`` (started) in ``directory``: :meth:`start`, :meth:`url`, :meth:`stop`."""

    def __init__(self, primary: EmbeddedServer, directory: Path, *, apply_delay_ms: int = 0) -> None:
        server = primary._server
        if server is None:
            raise EmbeddedServerError("start the embedded server before its standby")
        self.primary = primary
        self.directory = directory.expanduser().absolute()
        self.apply_delay_ms = apply_delay_ms
        self._bin: Path = server.bin_path
        self._user: str | None = server.system_user  # as root, pgserver runs Postgres as this user
        self._primary_host = str(conninfo_to_dict(server.get_uri())["host"])
        if len(str(self.directory)) + len("/.s.PGSQL.5432") > _SOCKET_MAX:
            raise EmbeddedServerError(f"the standby's directory path is too long for a Unix socket: {self.directory}")

    def url(self, dbname: str = "postgres") -> str:
        """The standby's URL for ``dbname`` (a ``TWOTOWER_READ_DATABASE_URL``)."""
        return f"postgresql://postgres@/{quote(dbname, safe='')}?host={quote(str(self.directory))}&port=5432"

    def start(self) -> str:
        """Copy the primary (the first time) and start the standby; its URL."""
        if not (self.directory / "PG_VERSION").exists():
            self._base_backup()
        self._pg_ctl("-w", "-t", "60", "-o", f'-h "" -k {self.directory}', "-l", str(self.directory / "log"),
                     "-D", str(self.directory), "start")  # fmt: skip
        return self.url()

    def stop(self, mode: str = "fast") -> None:
        """Stop it (``immediate``: as a crash would, without a shutdown checkpoint)."""
        if (self.directory / "postmaster.pid").exists():
            self._pg_ctl("-w", "-D", str(self.directory), "-m", mode, "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def _base_backup(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if self._user is not None:
            shutil.chown(self.directory, self._user)
        self._run("pg_basebackup", "-D", str(self.directory), "-h", self._primary_host, "-U", "postgres", "-R",
                  "-X", "stream", "-c", "fast")  # fmt: skip
        for copied in self.directory.glob(".s.PGSQL.*"):  # the primary's socket lock, when it lives in its data dir
            copied.unlink()
        with (self.directory / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"recovery_min_apply_delay = '{int(self.apply_delay_ms)}ms'\n")
            conf.write("hot_standby_feedback = on\n")  # no query on it is cancelled for rows the primary vacuums

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", *args)

    def _run(self, command: str, *args: str) -> None:
        kwargs: dict[str, Any] = {"user": self._user} if self._user is not None else {}
        # files, not pipes: the postmaster that pg_ctl starts keeps its inherited output open (a pipe never ends)
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run([str(self._bin / command), *args], check=True, stdout=output, stderr=output,
                               timeout=120, env={**os.environ, "PGCONNECT_TIMEOUT": "10"}, **kwargs)  # fmt: skip
            except subprocess.CalledProcessError:
                output.seek(0)
                detail = " ".join(output.read().split())[-400:]
                raise EmbeddedServerError(f"{command} failed for the standby in {self.directory}: {detail}") from None
            except subprocess.TimeoutExpired:
                raise EmbeddedServerError(f"{command} took over 120 s for the standby in {self.directory}") from None

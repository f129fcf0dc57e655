"""Online experiments between model versions: a candidate answers a share of the users, the active version the rest.

At most one experiment runs at a time. A user's arm is a keyed hash of their id (HMAC-SHA256 under the
experiment's random key, the first 8 bytes against ``share``): the same in every server process and after every
restart, different between experiments, with no assignment table. Starting and stopping flip rows in one
transaction and ``NOTIFY`` the servers, which load or drop the candidate as they do a promote. Stopping with
``promote`` goes through the same atomic switch as ``deploy`` and ``rollback``.

The control is the active version; the candidate is a version with a complete generation that is not active: one
deployed with ``deploy --candidate`` (status 'candidate') or a retired one. The candidate may also be the active
version itself (an A/A test: both arms answered by one model, to check the measurement).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from twotower.db import Database, locks
from twotower.errors import ExperimentRunning, InputError, NotFound, RollbackRefused
from twotower.registry.versions import NOTIFY_CHANNEL, SWITCH_LOCK, active_version, process_actor, switch

__all__ = [
    "ARMS",
    "Arm",
    "Experiment",
    "assign",
    "bucket",
    "current",
    "get_experiment",
    "latest",
    "refuse_during_experiment",
    "start",
    "stop",
]

Arm = Literal["control", "candidate"]
ARMS: tuple[Arm, ...] = ("control", "candidate")
_STARTABLE = ("candidate", "retired", "active")  # a version with a complete generation ('active': an A/A test)
_COLUMNS = sql.SQL(
    "id, control_version, candidate_version, share, hash_key, status, started_at, stopped_at, stop_reason, "
    "started_by, stopped_by"
)


@dataclass(frozen=True)
class Experiment:
    id: int
    control_version: str
    candidate_version: str
    share: float
    hash_key: str
    status: str  # running, stopped, promoted, guardrail
    started_at: datetime
    stopped_at: datetime | None
    stop_reason: str | None
    started_by: str | None
    stopped_by: str | None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def arm(self, user: uuid.UUID) -> Arm:
        return "candidate" if assign(self.hash_key, user, self.share) else "control"

    def version(self, arm: str) -> str:
        return self.candidate_version if arm == "candidate" else self.control_version

    def as_json(self) -> dict[str, Any]:
        """Everything but the key (it would let a client pick its arm)."""
        return {
            "id": self.id, "control_version": self.control_version, "candidate_version": self.candidate_version,
            "share": self.share, "status": self.status, "started_at": self.started_at, "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason, "started_by": self.started_by, "stopped_by": self.stopped_by,
        }  # fmt: skip


def bucket(key: str, user: uuid.UUID) -> float:
    """The user's place in [0, 1) for the experiment keyed ``key``: HMAC-SHA256(key, user id bytes), first 8 bytes."""
    return int.from_bytes(hmac.digest(key.encode(), user.bytes, hashlib.sha256)[:8], "big") / 2.0**64


def assign(key: str, user: uuid.UUID, share: float) -> bool:
    """True when ``user`` is in the candidate arm (their bucket is below ``share``). The edge functions compute the
    same with WebCrypto."""
    return bucket(key, user) < share


def _one(conn: psycopg.Connection[Any], where: str, params: tuple[Any, ...] = ()) -> Experiment | None:
    """``where``: constant text of this module (values go in ``params``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("SELECT {} FROM experiments WHERE {}").format(_COLUMNS, sql.SQL(where)), params)
        row = cur.fetchone()
    return None if row is None else Experiment(**row)


def current(conn: psycopg.Connection[Any]) -> Experiment | None:
    """The running experiment, if any."""
    return _one(conn, "status = 'running'")


def latest(conn: psycopg.Connection[Any]) -> Experiment | None:
    """The running experiment, or else the one that stopped last."""
    return _one(conn, "true ORDER BY (status = 'running') DESC, id DESC LIMIT 1")


def get_experiment(conn: psycopg.Connection[Any], experiment_id: int) -> Experiment:
    found = _one(conn, "id = %s", (experiment_id,))
    if found is None:
        raise NotFound(f"experiment {experiment_id} does not exist (see `twotower experiment status`)")
    return found


def refuse_during_experiment(db: Database) -> None:
    """Refuse (before any work) what would switch the active version while an experiment compares against it."""
    with db.connection() as conn:
        running = current(conn)
    if running is not None:
        raise RollbackRefused(
            f"experiment {running.id} is running (candidate {running.candidate_version} vs "
            f"{running.control_version}): stop it first (`twotower experiment stop`), or deploy with --candidate"
        )


def start(conn: psycopg.Connection[Any], candidate: str, share: float, actor: str | None = None) -> Experiment:
    """Start answering ``share`` of the users with ``candidate`` (one transaction; the servers are notified)."""
    if not 0.0 < share < 1.0:  # NaN too
        raise InputError(f"--share must be between 0 and 1 (exclusive), got {share}")
    with conn.transaction():
        locks.xact_lock(conn, SWITCH_LOCK)  # no promote or rollback between the checks and the insert
        running = current(conn)
        if running is not None:
            raise ExperimentRunning(
                f"experiment {running.id} is running ({running.candidate_version} vs {running.control_version}): "
                "stop it first (`twotower experiment stop`)"
            )
        control = active_version(conn)
        if control is None:
            raise RollbackRefused("no version is active: an experiment compares a candidate with the active version")
        row = conn.execute("SELECT status FROM model_versions WHERE version = %s", (candidate,)).fetchone()
        if row is None:
            raise NotFound(f"model version {candidate!r} is not registered (see `twotower models list`)")
        if row[0] not in _STARTABLE:
            raise RollbackRefused(
                f"version {candidate} is {row[0]}: a candidate needs a complete embedding generation "
                "(deploy it with `twotower deploy --candidate`)"
            )
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO experiments (control_version, candidate_version, share, hash_key, started_by) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING {}"
                ).format(_COLUMNS),
                (control, candidate, share, secrets.token_hex(16), actor or process_actor()),
            )
            created = cur.fetchone()
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"experiment:{created['id'] if created else ''}"))
    assert created is not None
    return Experiment(**created)


def stop(
    conn: psycopg.Connection[Any], *, promote: bool = False, reason: str | None = None, status: str = "stopped",
    actor: str | None = None, experiment_id: int | None = None,
) -> Experiment:  # fmt: skip
    """Stop the running experiment (every user back on the active version), or with ``promote`` make its
    candidate the active version in the same transaction. ``experiment_id``: stop only if it is still that one
    (a guardrail acting on what it measured). ``status`` 'guardrail' marks a stop by the guardrail."""
    with conn.transaction():
        locks.xact_lock(conn, SWITCH_LOCK)
        running = current(conn)
        if running is None or (experiment_id is not None and running.id != experiment_id):
            raise NotFound("no experiment is running" if experiment_id is None
                           else f"experiment {experiment_id} is not running")  # fmt: skip
        final = "promoted" if promote else status
        conn.execute(
            "UPDATE experiments SET status = %s, stopped_at = now(), stop_reason = %s, stopped_by = %s WHERE id = %s",
            (final, reason, actor or process_actor(), running.id),
        )
        if promote and running.candidate_version != running.control_version:
            switch(conn, running.candidate_version, "promote", actor)  # notifies
        else:
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"experiment:{running.id}"))
    return get_experiment(conn, running.id)

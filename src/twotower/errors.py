"""The one exception tree of twotower: every error the engine raises on purpose, with its exit code and HTTP status.

The edges translate it: the CLI prints ``error: <message>`` on one line and exits with
:attr:`TwoTowerError.exit_code`; the HTTP API answers ``{"error": code, "message": ...}`` with
:attr:`TwoTowerError.http_status`. The README's exit-code table is checked against these classes
(tests/test_errors.py).

    TwoTowerError
    ├── ConfigError              78  settings that cannot work (bad URL, unsafe secret, bad path)
    ├── StoreError               69  the database
    │   ├── DatabaseUnavailable  69  cannot connect, or the connection dropped
    │   ├── EmbeddedServerError  69  the embedded Postgres could not start
    │   ├── PermissionDenied     77  the role may not do what is needed (create the pgvector extension)
    │   └── MigrationError       70  a migration failed or the schema is newer/foreign
    ├── UpstreamError            69  the content provider's API failed (after its retries) or refused a request
    ├── InputError               65  bad input from a file, a flag or a request
    │   ├── ImportRejected       65  ``--strict`` import refused because some rows were bad
    │   └── VersionConflict      65  a model version name that is taken
    ├── NotFound                 66  a referenced object does not exist
    ├── ArtifactError            65  an artifact is missing, incomplete or fails its checksum
    ├── QualityGateFailed        65  the new model does not beat the linear model / regresses
    ├── EmbeddingAlerts          65  the new embeddings failed their quality checks
    ├── RollbackRefused          65  no version to switch to, or one that cannot serve (or an experiment runs)
    ├── ExperimentRunning        65  an experiment runs: another cannot start (HTTP 409)
    ├── DeployFailed             --  a deploy stage failed: the exit code is its cause's
    ├── SyncInProgress           75  another catalog sync runs
    ├── DeployInProgress         75  another deploy runs
    ├── DemoError                70  the demo could not finish
    └── (HTTP only) Unauthorized 401, Forbidden 403, AuthUnavailable 503, ModelUnavailable 503

:func:`report` is the one table both edges read: for an exception of this tree or one of the few library
exceptions that can escape a command or a request (the pool's timeout, a dropped connection, a cancelled query,
a missing schema, a value out of range), the HTTP status and body code, the exit code, whether a retry may
succeed, and the message a client sees where the exception's own would show a server's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import psycopg
from psycopg_pool import PoolTimeout

__all__ = [
    "DB_DOWN",
    "ArtifactError",
    "AuthUnavailable",
    "ConfigError",
    "DatabaseUnavailable",
    "DemoError",
    "DeployFailed",
    "DeployInProgress",
    "EmbeddedServerError",
    "EmbeddingAlerts",
    "ExperimentRunning",
    "Forbidden",
    "ImportRejected",
    "InputError",
    "MigrationError",
    "ModelUnavailable",
    "NotFound",
    "PermissionDenied",
    "QualityGateFailed",
    "Report",
    "RollbackRefused",
    "StoreError",
    "SyncInProgress",
    "TwoTowerError",
    "Unauthorized",
    "UpstreamError",
    "VersionConflict",
    "report",
    "reported_types",
]


class TwoTowerError(Exception):
    """Base class: a failure the user can act on, with a message that says what was expected."""

    code: str = "error"
    exit_code: int = 1
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TwoTowerError):
    code = "config_error"
    exit_code = 78  # EX_CONFIG


class StoreError(TwoTowerError):
    code = "store_error"
    exit_code = 69  # EX_UNAVAILABLE
    http_status = 503


class DatabaseUnavailable(StoreError):
    code = "database_unavailable"


class EmbeddedServerError(StoreError):
    code = "embedded_server_error"


class MigrationError(StoreError):
    code = "migration_error"
    exit_code = 70  # EX_SOFTWARE


class InputError(TwoTowerError):
    code = "invalid_input"
    exit_code = 65  # EX_DATAERR
    http_status = 422


class ImportRejected(InputError):
    """A ``--strict`` import found bad rows; nothing was written."""

    code = "import_rejected"

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


class NotFound(TwoTowerError):
    code = "not_found"
    exit_code = 66  # EX_NOINPUT
    http_status = 404


class UpstreamError(TwoTowerError):
    """The content provider's API kept failing (or refused the request); what was synced so far is kept."""

    code = "upstream_error"
    exit_code = 69  # EX_UNAVAILABLE
    http_status = 502


class ArtifactError(TwoTowerError):
    """An artifact is missing, incomplete or does not match its checksum."""

    code = "artifact_error"
    exit_code = 65
    http_status = 409


class PermissionDenied(StoreError):
    code = "permission_denied"
    exit_code = 77  # EX_NOPERM


class SyncInProgress(TwoTowerError):
    code = "sync_in_progress"
    exit_code = 75  # EX_TEMPFAIL
    http_status = 409


class DeployInProgress(TwoTowerError):
    """Another deploy holds the lock."""

    code = "deploy_in_progress"
    exit_code = 75  # EX_TEMPFAIL: try again later
    http_status = 409


class VersionConflict(InputError):
    """The version name is taken (registered, or in the store with other files)."""

    code = "version_conflict"


class QualityGateFailed(TwoTowerError):
    code = "quality_gate_failed"
    exit_code = 65
    http_status = 422


class RollbackRefused(TwoTowerError):
    code = "rollback_refused"
    exit_code = 65
    http_status = 409


class ExperimentRunning(TwoTowerError):
    """An experiment is running: another cannot start until it stops."""

    code = "experiment_running"
    exit_code = 65
    http_status = 409


class EmbeddingAlerts(TwoTowerError):
    """The new generation failed its quality checks (see ``twotower monitor``)."""

    code = "embedding_alerts"
    exit_code = 65  # EX_DATAERR: the model's output is bad


class DeployFailed(TwoTowerError):
    """A stage failed; the active version was left serving. ``exit_code`` is the cause's."""

    code = "deploy_failed"

    def __init__(self, message: str, stage: str, cause: BaseException) -> None:
        super().__init__(message)
        self.stage = stage
        self.cause = cause
        self.exit_code = getattr(cause, "exit_code", 70)


class ModelUnavailable(TwoTowerError):
    code = "model_unavailable"
    http_status = 503


class Unauthorized(TwoTowerError):
    code = "unauthorized"
    http_status = 401


class AuthUnavailable(TwoTowerError):
    code = "auth_unavailable"
    http_status = 503


class Forbidden(TwoTowerError):
    code = "forbidden"
    http_status = 403


class DemoError(TwoTowerError):
    code = "demo_failed"
    exit_code = 70


DB_DOWN = "the database is unavailable; retry shortly"


@dataclass(frozen=True)
class Report:
    """How the edges report an exception. ``public``: what an HTTP client is told instead of the exception's own
    message (which may name a server); ``prefix``: what the CLI prints before a library exception's text."""

    status: int
    code: str
    exit_code: int
    retry: bool = False
    public: str | None = None
    prefix: str = ""


def report(exc: BaseException) -> Report | None:
    """The row of the table for ``exc`` (None: not one the edges expect, an internal error)."""
    if isinstance(exc, TwoTowerError):
        public = DB_DOWN if isinstance(exc, DatabaseUnavailable) else None
        return Report(exc.http_status, exc.code, exc.exit_code, exc.http_status == 503, public)
    return next((row for kind, row in _library() if isinstance(exc, kind)), None)


def reported_types() -> tuple[type[BaseException], ...]:
    """Every exception type the table has a row for."""
    return (TwoTowerError, *(kind for kind, _ in _library()))


@cache
def _library() -> tuple[tuple[type[BaseException], Report], ...]:
    """Library exceptions, most specific first (QueryCanceled is an OperationalError)."""
    schema = "the database has no twotower schema: run `twotower db upgrade` first"
    return (
        (PoolTimeout, Report(503, "database_unavailable", 69, True, DB_DOWN, "no database connection: ")),
        (psycopg.errors.QueryCanceled, Report(503, "timeout", 69, True, "the query took too long; retry shortly",
                                              "a query took too long: ")),
        (psycopg.errors.UndefinedTable, Report(503, "schema_missing", 78, False, schema, f"{schema} (")),
        (psycopg.OperationalError, Report(503, "database_unavailable", 69, True, DB_DOWN,
                                          "lost the database connection: ")),
        (psycopg.DataError, Report(422, "invalid_request", 65, False,
                                   "a value in the request is out of range for the database", "invalid value: ")),
    )  # fmt: skip

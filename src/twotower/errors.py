"""The one exception tree of twotower.

Every error the engine raises on purpose is a :class:`TwoTowerError`. The edges translate it:
the CLI prints ``error: <message>`` on one line and exits with :attr:`TwoTowerError.exit_code`;
the HTTP API answers ``{"error": code, "message": ...}`` with :attr:`TwoTowerError.http_status`.

    TwoTowerError
    ├── ConfigError              settings that cannot work (bad URL, unsafe secret, bad path)
    ├── StoreError               the database
    │   ├── DatabaseUnavailable  cannot connect, or the connection dropped
    │   ├── EmbeddedServerError  the embedded Postgres could not start
    │   └── MigrationError       a migration failed or the schema is newer/foreign
    ├── UpstreamError            the content provider's API failed (after its retries) or refused a request
    ├── InputError               bad input from a file, a flag or a request
    │   └── ImportRejected       ``--strict`` import refused because some rows were bad
    └── NotFound                 a referenced object does not exist
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "EmbeddedServerError",
    "ImportRejected",
    "InputError",
    "MigrationError",
    "NotFound",
    "StoreError",
    "TwoTowerError",
    "UpstreamError",
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

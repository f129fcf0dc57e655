"""The store: Postgres + pgvector, embedded or at ``DATABASE_URL``; migrations; row-level security."""

from twotower.db.conninfo import redact
from twotower.db.database import Database
from twotower.db.embedded import EmbeddedServer
from twotower.db.migrations import MigrationStatus, UpgradeResult, status, upgrade

__all__ = ["Database", "EmbeddedServer", "MigrationStatus", "UpgradeResult", "redact", "status", "upgrade"]

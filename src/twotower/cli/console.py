"""Shared rich consoles and helpers for opening the store from a command."""

from __future__ import annotations

import sys

from rich.console import Console

from twotower.db import Database
from twotower.settings import get_settings

__all__ = ["err", "open_db", "out"]

# when stdout is not a terminal (CI logs, pipes) rich would wrap tables at 80 columns
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays on one line


def open_db(*, migrate: bool | None = None) -> Database:
    """The configured store (embedded by default); pending migrations applied on the embedded one."""
    return Database.open(get_settings(), migrate=migrate)

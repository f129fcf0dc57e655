"""Local directories the engine writes to: checked up front, so a bad path is one clear line, not a traceback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from twotower.errors import TwoTowerError

__all__ = ["writable_directory"]


def writable_directory(path: Path, error: type[TwoTowerError], what: str) -> Path:
    """Create ``path`` if needed and prove it is writable; otherwise raise ``error("<what> <path> ...")``."""
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise error(f"{what} {path} is not usable: {ancestor} is a file, not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a name of its own: several processes may check the same directory at once
        with tempfile.NamedTemporaryFile(dir=path, prefix=".twotower-write-probe-"):
            pass
    except OSError as exc:
        raise error(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"{what} {path} is not writable")
    return path

"""The item table a deploy ships with a version: every video's encoded features as of the deploy.

Servers start from it (``ItemIndex.open``) instead of reading and encoding the whole catalog, and read from the
database only the videos changed since. It is one more checksummed file of the version (plain arrays, no pickle).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from twotower.db import Database
from twotower.features.pipeline import FeaturePipeline
from twotower.inference.items import ITEMS_FILE, ItemIndex
from twotower.registry.store import MANIFEST, sha256, verify_directory

__all__ = ["with_item_table"]


def with_item_table(db: Database, model_dir: Path, target: Path) -> dict[str, Any]:
    """Copy the version in ``model_dir`` to ``target`` with ``items.npz`` added (the catalog read now, encoded with
    the version's pipeline) and the manifest's checksums updated; return the new manifest. ``model_dir`` is left
    as it is."""
    manifest = verify_directory(model_dir)
    checksums: dict[str, str] = {k: v for k, v in manifest["checksums"].items() if k != ITEMS_FILE}
    target.mkdir(parents=True, exist_ok=True)
    for name in checksums:
        try:
            os.link(model_dir / name, target / name)  # the files are immutable: no need for a copy
        except OSError:
            shutil.copy2(model_dir / name, target / name)
    pipeline = FeaturePipeline.load(model_dir / "features.json")
    with db.direct(autocommit=True) as conn:
        index = ItemIndex.load(conn, pipeline)
    index.save(target / ITEMS_FILE)
    checksums[ITEMS_FILE] = sha256(target / ITEMS_FILE)
    manifest = {**manifest, "checksums": checksums,
                "item_table": {"videos": len(index), "as_of": index.as_of.isoformat()}}  # fmt: skip
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest

"""What a deploy finds of an earlier run of itself: the model directory's export, the version it names, and whether
that version is already active with the same files (a deploy killed after its promote, during its prune)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from twotower.db import Database
from twotower.embeddings.generation import GenerationStats
from twotower.errors import ArtifactError, InputError, TwoTowerError, VersionConflict
from twotower.inference.items import ITEMS_FILE
from twotower.registry.store import verify_directory
from twotower.registry.versions import drop_generation, prune_generations
from twotower.train.run import TrainOptions

__all__ = ["already_active", "exported", "model_files", "prune", "version_of"]


def prune(lock: psycopg.Connection[Any], keep: int, say: Callable[[str], None]) -> list[str]:
    """Archive and drop the generations beyond ``keep``, and finish the drops a killed prune left half done
    (archived versions whose rows are still there). After a promote: a failure is only a warning."""
    try:
        pruned = prune_generations(lock, keep)
        leftovers = lock.execute(
            "SELECT version FROM model_versions m WHERE status = 'archived' AND "
            "(EXISTS (SELECT 1 FROM video_embeddings WHERE model_version = m.version) "
            "OR EXISTS (SELECT 1 FROM user_embeddings WHERE model_version = m.version)) ORDER BY version"
        ).fetchall()
        for (version,) in leftovers:
            drop_generation(lock, version)
            pruned.append(str(version))
    except (psycopg.Error, TwoTowerError) as exc:
        say(f"warning: pruning old generations failed ({exc}); they stay until the next deploy")
        return []
    return pruned


def already_active(db: Database, model_dir: Path | None, train: TrainOptions) -> tuple[str, GenerationStats] | None:
    """The version this deploy would register, when it is the active one already and this is the same deploy
    run again (a deploy killed after its promote, during its prune): the same model directory, every file as
    the registered manifest lists it, and, for a deploy that trains, the same training options. A different
    model under an active version's name is refused (versions are immutable); None in every other case."""
    trains = model_dir is None
    if model_dir is not None:
        if not (model_dir / "training.json").is_file():
            return None  # the train stage says what is wrong with it
        try:
            version = version_of(model_dir)
        except InputError:
            return None
    elif train.version is not None:
        version = train.version
        model_dir = train.output_dir / version
    else:
        return None  # a new timestamped name
    with db.connection() as conn:
        row = conn.execute(
            "SELECT status, manifest, videos_embedded, users_embedded FROM model_versions WHERE version = %s",
            (version,),
        ).fetchone()
    if row is None or row[0] != "active":
        return None
    taken = VersionConflict(f"version {version} is already registered (active) with other files or training "
                            "options; versions are immutable (deploy this model under a new version name)")  # fmt: skip
    mine = exported(model_dir) if (model_dir / "training.json").is_file() else None
    registered = (row[1] or {}).get("checksums", {})
    if mine is None or model_files(mine["checksums"]) != model_files(registered):
        raise taken
    if trains and not _same_training(model_dir, train):
        raise taken
    return version, GenerationStats(int(row[2] or 0), int(row[3] or 0), 0.0)


def model_files(checksums: dict[str, str]) -> dict[str, str]:
    """A version's files but the item table (read from the catalog at upload, not part of the model)."""
    return {name: digest for name, digest in checksums.items() if name != ITEMS_FILE}


def _same_training(model_dir: Path, options: TrainOptions) -> bool:
    """Whether ``model_dir`` was trained with these options (as ``train`` records them in training.json)."""
    try:
        recorded = json.loads((model_dir / "training.json").read_text())["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(recorded == {k: str(v) for k, v in asdict(options).items()})


def exported(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of an earlier export of exactly these weights (the export is deterministic), else None.
    ``verify_directory`` checks every listed file, the weights included, against the manifest's checksums."""
    try:
        manifest = verify_directory(model_dir)
    except ArtifactError:
        return None
    names = set(manifest.get("checksums", {}))
    if not {"model.safetensors", "item_tower.onnx", "user_tower.onnx", "features.json"} <= names:
        return None
    return manifest if manifest.get("version") == version_of(model_dir) else None


def version_of(model_dir: Path) -> str:
    try:
        return str(json.loads((model_dir / "training.json").read_text())["version"])
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{model_dir}: no readable training.json ({exc})") from None

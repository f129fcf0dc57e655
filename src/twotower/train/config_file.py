"""Training settings from a JSON file (what ``twotower tune`` writes; ``train`` and ``deploy`` read it).

The file holds a ``"train"`` object with ``TrainOptions`` fields and a ``"tower"`` object of ``TowerConfig``
fields; anything else at the top level (``"tuned"``: where the settings came from) is kept for people.
A flag given on the command line wins over the file, the file wins over the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from twotower.errors import InputError
from twotower.model.config import TowerConfig

__all__ = ["TOWER_FIELDS", "TRAIN_FIELDS", "apply_config", "read_config"]

# what a config file may set: the recipe, never where or under which name a model is written
TRAIN_FIELDS = {
    "embedding_dim": int, "batch_size": int, "epochs": int, "learning_rate": float, "lr_schedule": str,
    "id_weight_decay": float, "patience": int, "seed": int,
}  # fmt: skip
# TowerConfig fields that come from the data (vocabulary sizes, widths) are not settings
_FROM_DATA = {
    "n_items", "n_tags", "n_performers", "n_categorical", "numeric_width", "stats_width", "max_tags",
    "max_performers", "embedding_dim",
}  # fmt: skip
_AT_LEAST_ONE = {"field_dim", "hidden_dim", "max_likes", "target_window", "targets_per_history", "next_likes",
                 "batch_size", "epochs", "patience"}  # fmt: skip
TOWER_FIELDS = {f.name: f.type for f in dataclasses.fields(TowerConfig) if f.name not in _FROM_DATA}
_MAX_BYTES = 1 << 20


def read_config(path: Path) -> dict[str, Any]:
    """``{"train": {...}, "tower": {...}}`` checked field by field; one clear error for anything wrong."""
    try:
        if path.stat().st_size > _MAX_BYTES:
            raise InputError(f"--config {path}: larger than 1 MiB, not a settings file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--config {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f'--config {path}: expected a JSON object with "train" and "tower"')
    train = _section(path, data, "train", TRAIN_FIELDS)
    tower = _section(path, data, "tower", {name: _kind(kind) for name, kind in TOWER_FIELDS.items()})
    if "tuned" in data and "tower" in data and "next_likes" not in tower:
        # tuned before next_likes was a setting: the trials trained each user state on its next like only
        tower["next_likes"] = 1
    try:
        TowerConfig(**tower, embedding_dim=int(train.get("embedding_dim", 64)))  # values in range
    except (InputError, TypeError, ValueError) as exc:
        raise InputError(f"--config {path}: {exc}") from None
    return {"train": train, "tower": tower}


def apply_config(options: Any, config: dict[str, Any], explicit: set[str]) -> None:
    """Set ``options`` (a ``TrainOptions``) from ``config``, except the fields given in ``explicit``."""
    for name, value in config["train"].items():
        if name not in explicit:
            setattr(options, name, value)
    options.tower = {**config["tower"], **options.tower}


def _kind(annotation: object) -> type:
    text = str(annotation).removesuffix(" | None")  # an optional setting: given, it is a value of the type
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text == name or annotation is kind:
            return kind
    return object


def _section(path: Path, data: dict[str, Any], name: str, allowed: dict[str, type]) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise InputError(f'--config {path}: "{name}" must be an object')
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise InputError(f"--config {path}: unknown {name} setting(s) {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for key, value in section.items():
        kind = allowed[key]
        ok = (
            isinstance(value, bool) if kind is bool
            else isinstance(value, int) and not isinstance(value, bool) if kind is int
            else isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if kind is float
            else isinstance(value, str) if kind is str
            else False
        )  # fmt: skip
        if not ok:
            raise InputError(f"--config {path}: {name}.{key} must be a {kind.__name__}, got {json.dumps(value)}")
        if kind is int and not (1 if key in _AT_LEAST_ONE else 0) <= value <= 1 << 20:
            raise InputError(f"--config {path}: {name}.{key} = {value} is out of range")
        out[key] = float(value) if kind is float else value
    return out

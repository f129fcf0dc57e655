"""``--update-db``: register the model version and write its embedding generation into pgvector."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from psycopg.types.json import Jsonb

from twotower.db import Database
from twotower.embeddings.generation import write_embeddings
from twotower.errors import InputError
from twotower.train.scorer import TwoTowerScorer

if TYPE_CHECKING:
    from twotower.train.run import TrainResult

__all__ = ["publish_embeddings"]


def publish_embeddings(db: Database, result: TrainResult) -> tuple[int, int]:
    """Write every video's and every user's embedding for ``result.version`` (status ``ready``, not active).

    Users are embedded from all their decisions (not only the training period): this is what they look like
    now. Versions are immutable: an existing version is refused.
    """
    prepared, model = result.prepared, result.model
    cfg = model.cfg
    scorer = TwoTowerScorer(model, prepared.features)
    with torch.no_grad():
        items = scorer.item_embeddings
        everything = np.ones(len(prepared.log), dtype=bool)
        scorer.use_history(prepared.log, everything)
        users = scorer.user_embeddings(np.arange(prepared.log.n_users))
    training: dict[str, Any] = json.loads((result.directory / "training.json").read_text())
    with db.direct() as conn, conn.transaction():
        row = conn.execute(
            "INSERT INTO model_versions (version, status, embedding_dim, artifact_uri, manifest, metrics) "
            "VALUES (%s, 'building', %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING RETURNING version",
            (
                result.version, cfg.embedding_dim, str(result.directory.absolute()),
                Jsonb({"tower_config": cfg.to_json(), "window": training.get("window", {})}),
                Jsonb({"best_valid_recall_at_20": training.get("best_valid_recall_at_20")}),
            ),
        ).fetchone()  # fmt: skip
        if row is None:
            raise InputError(f"model version {result.version} already exists in the database (versions are immutable)")
        write_embeddings(conn, "video_embeddings", "video_id", result.version, prepared.catalog.ids, items)
        write_embeddings(conn, "user_embeddings", "user_id", result.version, prepared.log.user_ids, users)
        conn.execute("UPDATE model_versions SET status = 'ready' WHERE version = %s", (result.version,))
    return len(items), len(users)

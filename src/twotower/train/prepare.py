"""From the database to training inputs: catalog, decisions, the temporal split, fitted features."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg

from twotower.errors import InputError
from twotower.evaluation.split import Split, temporal_split
from twotower.features.catalog import Catalog, load_catalog
from twotower.features.decisions import DecisionLog, load_decision_log
from twotower.features.pipeline import FeaturePipeline, ItemFeatures

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    catalog: Catalog
    log: DecisionLog
    split: Split
    pipeline: FeaturePipeline
    features: ItemFeatures

    @property
    def fingerprint(self) -> str:
        """Identifies the data a model was trained on: same data, same split."""
        h = hashlib.sha256()
        h.update(np.int64(len(self.catalog)).tobytes())
        for array in (self.log.user, self.log.item, self.log.like, self.log.ts):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]

    def window(self) -> dict[str, Any]:

        ts = self.log.ts[self.split.train]
        if ts.size == 0:
            return {}
        return {
            "train_from": datetime.fromtimestamp(float(ts.min()), UTC).isoformat(),
            "train_until": datetime.fromtimestamp(float(ts.max()), UTC).isoformat(),
        }

    def summary(self) -> dict[str, int]:
        s = self.split
        return {
            "videos": len(self.catalog),
            "users": self.log.n_users,
            "decisions": len(self.log),
            "train_decisions": int(s.train.sum()),
            "train_likes": int((s.train & self.log.like).sum()),
            "validation_likes": int(s.valid.sum()),
            "test_likes": int(s.test.sum()),
            "test_users": int(np.unique(self.log.user[s.test]).size),
        }


def prepare(conn: psycopg.Connection[Any], *, min_count: int = 2) -> Prepared:
    catalog = load_catalog(conn)
    if len(catalog) == 0:
        raise InputError("the catalog is empty: import or sync videos first (e.g. `twotower import movielens DIR`)")
    log = load_decision_log(conn, catalog.ids)
    if len(log) == 0:
        raise InputError("there are no decisions to train on: import swipes first (`twotower import decisions`)")
    if not log.like.any():
        raise InputError(f"all {len(log):,} decisions are nopes: training needs likes")
    split = temporal_split(log)
    # only items the model actually trains on get an ID embedding; the rest are cold: content alone
    train_likes = split.fit & log.like
    id_counts = np.bincount(log.item[train_likes], minlength=len(catalog)).astype(np.int64)
    reference = float(log.ts[split.train].max()) if split.train.any() else float(log.ts.max())
    pipeline = FeaturePipeline.fit(catalog, id_counts, reference, min_count=min_count)
    return Prepared(catalog, log, split, pipeline, pipeline.transform(catalog))

"""The deploy's quality gate: Recall@20 on the temporal split's test period, the new model against the linear
model the API falls back to and against the active version (within a tolerance)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twotower.db import Database
from twotower.evaluation import evaluate, served_linear
from twotower.features.pipeline import FeaturePipeline
from twotower.model.weights import load_model
from twotower.registry.store import ArtifactStore, fetch
from twotower.registry.versions import active_version, get_version
from twotower.train.prepare import prepare
from twotower.train.scorer import TwoTowerScorer

__all__ = ["GATE_METRIC", "GateResult", "quality_gate"]

GATE_METRIC = "recall@20"


@dataclass
class GateResult:
    metric: str
    model: float
    linear: float
    active_version: str | None
    active: float | None
    tolerance: float
    passed: bool
    reasons: list[str]
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _recall(result: Any) -> float:
    return float(result.metrics["all"][GATE_METRIC])


def _active_model_dir(db: Database, store: ArtifactStore, version: str, cache_dir: Path) -> Path | None:
    """The active version's artifacts: from the store (checksums verified), else its recorded directory."""
    if store.exists(version):
        return fetch(store, version, cache_dir)
    with db.connection() as conn:
        uri = get_version(conn, version).artifact_uri
    if uri and (Path(uri) / "model.safetensors").is_file() and (Path(uri) / "features.json").is_file():
        return Path(uri)
    return None


def quality_gate(db: Database, model_dir: Path, store: ArtifactStore, tolerance: float, cache_dir: Path) -> GateResult:
    """Recall@20 on the temporal split's test period: the model vs the linear baseline and the active model."""
    with db.direct() as conn:
        prepared = prepare(conn)
        active = active_version(conn)
    pipeline = FeaturePipeline.load(model_dir / "features.json")
    features = pipeline.transform(prepared.catalog)
    results = {}
    for name, scorer in (
        ("model", TwoTowerScorer(load_model(model_dir), features)),
        ("linear", served_linear(prepared.catalog.tags)),  # the fallback the API serves
    ):
        scorer.fit(prepared.split)
        results[name] = _recall(evaluate(scorer, prepared.split))
    active_recall: float | None = None
    note = None
    if active is not None:
        active_dir = _active_model_dir(db, store, active, cache_dir)
        if active_dir is None:
            note = f"the active version {active} has no artifacts to evaluate: regression check skipped"
        else:
            active_pipeline = FeaturePipeline.load(active_dir / "features.json")
            scorer = TwoTowerScorer(load_model(active_dir), active_pipeline.transform(prepared.catalog))
            scorer.fit(prepared.split)
            active_recall = _recall(evaluate(scorer, prepared.split))
    reasons = []
    model, linear = results["model"], results["linear"]
    if math.isnan(model):
        reasons.append("no test users in the temporal split: not enough swipes to measure the model")
    elif not model > linear:
        reasons.append(f"Recall@20 {model:.4f} does not beat the linear model's {linear:.4f}")
    if active_recall is not None and not math.isnan(model) and model < active_recall * (1 - tolerance):
        reasons.append(
            f"Recall@20 {model:.4f} regresses vs the active version {active} ({active_recall:.4f}) by more than "
            f"{tolerance:.0%}"
        )
    return GateResult(GATE_METRIC, model, linear, active, active_recall, tolerance, not reasons, reasons, note)

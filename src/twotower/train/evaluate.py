"""``twotower evaluate``: a trained model and the baselines on the same temporal split, in one report."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twotower.db import Database
from twotower.errors import InputError
from twotower.evaluation import EASEScorer, EvalResult, PopularityScorer, evaluate, served_linear, to_json
from twotower.evaluation.als import ALSScorer, als_available
from twotower.evaluation.scorers import EASE_MAX_ITEMS, RandomScorer, Scorer
from twotower.features.pipeline import FeaturePipeline
from twotower.model.weights import load_model
from twotower.train.prepare import Prepared, prepare
from twotower.train.scorer import TwoTowerScorer

__all__ = ["EvaluationReport", "evaluate_model", "latest_model_dir"]


@dataclass
class EvaluationReport:
    results: list[EvalResult]
    data: dict[str, Any]
    warnings: list[str]
    json: dict[str, Any]


def latest_model_dir(models: Path) -> Path:
    """The most recently trained model under ``models`` (directories written by ``twotower train``)."""
    candidates = [p for p in models.glob("*/training.json")] if models.is_dir() else []
    if not candidates:
        raise InputError(f"no trained model under {models}: run `twotower train --output-dir {models}` first")
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


def scorers_for(prepared: Prepared, model_scorer: Scorer | None, baselines: bool = True) -> list[Scorer]:
    """The model (if any) and the baselines: random, popularity, the served linear model, EASE, ALS."""
    out: list[Scorer] = [] if model_scorer is None else [model_scorer]
    if baselines:
        n = len(prepared.catalog)
        out += [RandomScorer(n), PopularityScorer(n), served_linear(prepared.catalog.tags)]
        if n <= EASE_MAX_ITEMS:
            out.append(EASEScorer(n, lam=200.0))
        if als_available():
            out.append(ALSScorer(n))
    return out


def evaluate_model(
    db: Database,
    model_dir: Path | None,
    *,
    baselines: bool = True,
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    warnings: list[str] = []
    with db.direct() as conn:
        prepared = prepare(conn)
    model_scorer: Scorer | None = None
    if model_dir is not None:
        training = (
            json.loads((model_dir / "training.json").read_text()) if (model_dir / "training.json").is_file() else {}
        )
        if training.get("data_fingerprint") not in (None, prepared.fingerprint):
            warnings.append(
                "the decisions changed since this model was trained: the split differs from the training split"
            )
        pipeline = FeaturePipeline.load(model_dir / "features.json")
        model_scorer = TwoTowerScorer(load_model(model_dir), pipeline.transform(prepared.catalog))
    elif not baselines:
        raise InputError("nothing to evaluate: give --model-dir or keep the baselines")
    if len(prepared.catalog) > EASE_MAX_ITEMS and baselines:
        warnings.append(f"EASE skipped: {len(prepared.catalog):,} videos (> {EASE_MAX_ITEMS:,}, dense inverse too big)")
    if baselines and not als_available():
        warnings.append("ALS skipped: the `implicit` package is not installed (pip install 'twotower[train]')")
    results = []
    for scorer in scorers_for(prepared, model_scorer, baselines):
        if progress is not None:
            progress(f"evaluating {scorer.name} ...")
        scorer.fit(prepared.split)
        results.append(evaluate(scorer, prepared.split))
    data = prepared.summary()
    return EvaluationReport(results, data, warnings, to_json(results, data))

"""Benchmark the baselines (random, popularity, simple linear model, EASE, ALS) on MovieLens ml-latest-small.

    .venv/bin/python bench/eval_baselines.py [--movielens data/movielens/ml-latest-small --lam 200]
    .venv/bin/python bench/eval_baselines.py --synthetic   # also time evaluate() on 10k users x 100k items

Starts an embedded Postgres in a temporary directory, imports MovieLens, splits temporally, fits and
evaluates each baseline, prints the tables and writes ``bench/results/eval_baselines.json``.
Reference (an independent implementation of the same protocol): Recall@20 ≈ 0.09 popularity, ≈ 0.16 EASE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import embedded_database

from twotower.evaluation import (
    EASEScorer,
    EvalResult,
    LinearScorer,
    PopularityScorer,
    Scorer,
    describe_split,
    evaluate,
    render_slices,
    render_table,
    tag_matrix,
    to_json,
)
from twotower.evaluation.als import ALSScorer, als_available
from twotower.evaluation.scorers import RandomScorer
from twotower.evaluation.split import Split, temporal_split
from twotower.features.catalog import load_catalog
from twotower.features.decisions import DecisionLog, load_decision_log
from twotower.ingest.service import import_movielens

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = ROOT / "data" / "movielens" / "ml-latest-small"
RESULTS = ROOT / "bench" / "results" / "eval_baselines.json"


def synthetic_split(n_users: int, n_items: int, likes_per_user: int, seed: int = 0) -> Split:
    """Random likes, ``likes_per_user`` per user, one second apart."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users, dtype=np.int32), likes_per_user)
    item = rng.integers(0, n_items, size=user.size, dtype=np.int32)
    ts = np.tile(np.arange(likes_per_user, dtype=np.float64), n_users)
    user_ids = [uuid.UUID(int=i) for i in range(n_users)]
    return temporal_split(DecisionLog(user_ids, user, item, np.ones(user.size, dtype=bool), ts))


def time_synthetic(console: Console, users: int, items: int) -> dict[str, Any]:
    split = synthetic_split(users, items, likes_per_user=50)
    scorer = RandomScorer(items)
    scorer.fit(split)
    result = evaluate(scorer, split)
    console.print(
        f"synthetic random scorer: {users:,} users x {items:,} items in {result.seconds:.1f}s "
        f"(recall@20 {result.metrics['all']['recall@20']:.5f}, auc {result.metrics['all']['auc']:.3f}, "
        f"{result.auc_method})"
    )
    return {"users": users, "items": items, "seconds": round(result.seconds, 2), "auc_method": result.auc_method}


def fit_and_evaluate(scorer: Scorer, split: Split) -> tuple[EvalResult, float]:
    started = time.perf_counter()
    scorer.fit(split)
    fit_seconds = time.perf_counter() - started
    return evaluate(scorer, split), fit_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", type=Path, default=MOVIELENS)
    parser.add_argument("--lam", type=float, default=200.0, help="EASE regularisation")
    parser.add_argument("--synthetic", action="store_true", help="also time 10k users x 100k items")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 180))  # the metric table is wide

    with embedded_database("tt-bench-eval-") as db:
        started = time.perf_counter()
        import_movielens(db, args.movielens)
        import_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with db.direct() as conn:
            catalog = load_catalog(conn)
            log = load_decision_log(conn, catalog.ids)
        load_seconds = time.perf_counter() - started

    split = temporal_split(log)
    n_items = len(catalog)
    scorers: list[Scorer] = [
        RandomScorer(n_items),
        PopularityScorer(n_items),
        LinearScorer(tag_matrix(catalog.tags)),
        EASEScorer(n_items, lam=args.lam),
        *([ALSScorer(n_items)] if als_available() else []),
    ]
    results: list[EvalResult] = []
    timings: dict[str, dict[str, float]] = {}
    for scorer in scorers:
        result, fit_seconds = fit_and_evaluate(scorer, split)
        results.append(result)
        timings[scorer.name] = {"fit_seconds": round(fit_seconds, 3), "evaluate_seconds": round(result.seconds, 3)}

    console.print(f"MovieLens import {import_seconds:.1f}s, load {load_seconds:.1f}s")
    console.print(render_table(results))
    console.print(render_slices(results))
    report = to_json(results, describe_split(split, n_items))
    report["timings"] = timings
    report["ease_lambda"] = args.lam
    report["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    if args.synthetic:
        report["synthetic"] = time_synthetic(console, 10_000, 100_000)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

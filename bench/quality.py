"""Quality on the bundled MovieLens sample: the two-tower model vs popularity, the linear model and EASE.

    .venv/bin/python bench/quality.py [--epochs 20]

Imports ml-latest-small into a fresh embedded database, trains with the defaults of `twotower train`, and
evaluates everything on the same temporal split (`twotower evaluate`). Targets (SPEC): Recall@20 >= 1.5x
popularity and >= 0.9x EASE, AUC > 0.65, and cold-item Recall@20 above popularity's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import embedded_database, machine, write
from rich.console import Console

from twotower.evaluation import render_slices, render_table
from twotower.ingest.service import import_movielens
from twotower.train.evaluate import evaluate_model
from twotower.train.run import TrainOptions, train

MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--movielens", type=Path, default=MOVIELENS)
    args = parser.parse_args(argv)
    console = Console(width=160)
    with embedded_database("tt-bench-quality-") as db, tempfile.TemporaryDirectory() as out:
        import_movielens(db, args.movielens)
        started = time.perf_counter()
        result = train(db, TrainOptions(epochs=args.epochs, output_dir=Path(out), resume=False))
        train_seconds = time.perf_counter() - started
        report = evaluate_model(db, result.directory)
    console.print(render_table(report.results))
    console.print(render_slices(report.results))
    by = {r.name: r.metrics for r in report.results}
    ours, pop, ease = by["two-tower"]["all"], by["popularity"]["all"], by["ease"]["all"]
    checks = {
        "recall@20 >= 1.5x popularity": ours["recall@20"] >= 1.5 * pop["recall@20"],
        "recall@20 >= 0.9x EASE": ours["recall@20"] >= 0.9 * ease["recall@20"],
        "auc > 0.65": ours["auc"] > 0.65,
        "cold-item recall@20 > popularity's": by["two-tower"]["cold_items"]["recall@20"]
        > by["popularity"]["cold_items"]["recall@20"],
    }
    for name, ok in checks.items():
        console.print(f"{'met    ' if ok else 'NOT met'}  {name}")
    write("quality", {
        "name": "quality_movielens",
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "train_seconds": round(train_seconds, 1),
        "recall_at_20": {n: round(m["all"]["recall@20"], 4) for n, m in by.items()},
        "ratio_vs_popularity": round(ours["recall@20"] / pop["recall@20"], 3),
        "ratio_vs_ease": round(ours["recall@20"] / ease["recall@20"], 3),
        "checks": checks,
        "met": all(checks.values()),
        "evaluation": report.json,
        "machine": machine(),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

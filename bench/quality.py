"""Quality on the bundled MovieLens sample: the two-tower model vs popularity, the linear model and EASE.

    .venv/bin/python bench/quality.py [--epochs 20] [--seeds 3] [--threads N] [--device cuda]
                                      [--tower user_encoder=attention --tower attention_layers=2 ...]

Imports ml-latest-small into a fresh embedded database, trains with the defaults of `twotower train` (seeds 0 ..
N-1), and evaluates everything on the same temporal split (`twotower evaluate`). Prints mean ± std over the
seeds of Recall@20 and NDCG@20 and each model's ratio to EASE; the JSON keeps every seed. Targets: SPEC
(Recall@20 >= 1.5x popularity and >= 0.9x EASE, AUC > 0.65, cold-item Recall@20 above popularity's) and
issue 14 (mean Recall@20 >= 1.00x EASE, every seed >= 0.97x EASE, mean NDCG@20 >= EASE's, and on the cold
catalog — the videos nobody liked in training, ranked on their own — above the linear model and random).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import embedded_database, machine, write
from rich.console import Console

from twotower.evaluation import render_slices, render_table
from twotower.ingest.service import import_movielens
from twotower.train.evaluate import evaluate_model
from twotower.train.run import TrainOptions, train

MOVIELENS = Path(__file__).resolve().parents[1] / "data" / "movielens" / "ml-latest-small"
METRICS = ("recall@20", "ndcg@20")


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=1, help="train seeds 0 .. N-1 and report mean ± std")
    parser.add_argument("--movielens", type=Path, default=MOVIELENS)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="auto", help="train on: auto, cpu, cuda, cuda:N (as `twotower train`)")
    parser.add_argument(
        "--tower",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a TowerConfig field for every seed (JSON value, else a string), repeatable",
    )
    parser.add_argument("--only", action="store_true", help="skip the write to bench/results (an exploration run)")
    args = parser.parse_args(argv)
    tower: dict[str, Any] = {}
    for item in args.tower:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--tower takes FIELD=VALUE, got {item!r}")
        try:
            tower[key] = json.loads(raw)
        except json.JSONDecodeError:
            tower[key] = raw
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.threads > 0:  # on a shared machine, one thread is much faster than two that fight for one core
        import torch

        torch.set_num_threads(args.threads)
    console = Console(width=160)
    runs: list[dict[str, Any]] = []
    with embedded_database("tt-bench-quality-") as db, tempfile.TemporaryDirectory() as out:
        import_movielens(db, args.movielens)
        for seed in range(args.seeds):
            started = time.perf_counter()
            options = TrainOptions(epochs=args.epochs, seed=seed, output_dir=Path(out) / f"seed{seed}", resume=False,
                                   device=args.device, tower=tower)  # fmt: skip
            result = train(db, options, on_epoch=lambda e, better, seed=seed: console.print(
                f"  seed {seed} epoch {e.epoch}: valid Recall@20 {e.valid_recall_at_20:.4f}{' *' if better else ''}, "
                f"{e.examples_per_second:,.0f} positives/s"))  # fmt: skip
            train_seconds = time.perf_counter() - started
            report = evaluate_model(db, result.directory)
            if seed == 0:
                console.print(render_table(report.results))
                console.print(render_slices(report.results))
            by = {r.name: r.metrics for r in report.results}
            ease = by["ease"]["all"]
            run: dict[str, Any] = {
                "seed": seed,
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "best_valid_recall_at_20": round(max(h.valid_recall_at_20 for h in result.history), 4),
                "train_seconds": round(train_seconds, 1),
                **{m.replace("@", "_at_"): {n: round(v["all"][m], 4) for n, v in by.items()} for m in METRICS},
                # cold start: users with a cold test like rank only the videos nobody liked in training
                "cold_catalog_recall_at_20": {n: round(v["cold_catalog"]["recall@20"], 4) for n, v in by.items()},
                "ratio_vs_ease": {n: round(v["all"]["recall@20"] / ease["recall@20"], 3) for n, v in by.items()},
                "ndcg_ratio_vs_ease": {n: round(v["all"]["ndcg@20"] / ease["ndcg@20"], 3) for n, v in by.items()},
                "evaluation": report.json,
            }
            runs.append(run)
            console.print(
                f"seed {seed}: two-tower Recall@20 {run['recall_at_20']['two-tower']:.4f} "
                f"({run['ratio_vs_ease']['two-tower']:.3f}x EASE {run['recall_at_20']['ease']:.4f}), NDCG@20 "
                f"{run['ndcg_at_20']['two-tower']:.4f} (EASE {run['ndcg_at_20']['ease']:.4f}); best epoch "
                f"{result.best_epoch} (valid Recall@20 {run['best_valid_recall_at_20']:.4f}), cold-catalog "
                f"{run['cold_catalog_recall_at_20']['two-tower']:.4f}, {train_seconds:.0f} s"
            )

    names = list(runs[0]["recall_at_20"])
    summary = {
        name: {
            "recall_at_20": _mean_std([r["recall_at_20"][name] for r in runs]),
            "ndcg_at_20": _mean_std([r["ndcg_at_20"][name] for r in runs]),
            "ratio_vs_ease": _mean_std([r["ratio_vs_ease"][name] for r in runs]),
            "cold_catalog_recall_at_20": _mean_std([r["cold_catalog_recall_at_20"][name] for r in runs]),
        }
        for name in names
    }
    console.print(f"\n{len(runs)} seed(s), mean ± std (ratio to EASE on the same split):")
    for name in names:
        s = summary[name]
        console.print(
            f"  {name:<11} Recall@20 {s['recall_at_20']['mean']:.4f} ± {s['recall_at_20']['std']:.4f}  "
            f"NDCG@20 {s['ndcg_at_20']['mean']:.4f} ± {s['ndcg_at_20']['std']:.4f}  "
            f"{s['ratio_vs_ease']['mean']:.3f}x EASE (min {s['ratio_vs_ease']['min']:.3f}x)  "
            f"cold-catalog Recall@20 {s['cold_catalog_recall_at_20']['mean']:.4f}"
        )
    ours, pop, ease_s = summary["two-tower"], summary["popularity"], summary["ease"]
    first = runs[0]["evaluation"]["models"]
    checks = {
        "recall@20 >= 1.5x popularity": ours["recall_at_20"]["mean"] >= 1.5 * pop["recall_at_20"]["mean"],
        "recall@20 >= 0.9x EASE": ours["ratio_vs_ease"]["mean"] >= 0.9,
        "auc > 0.65": all(r["evaluation"]["models"]["two-tower"]["metrics"]["all"]["auc"] > 0.65 for r in runs),
        "cold-item recall@20 > popularity's": (first["two-tower"]["metrics"]["cold_items"]["recall@20"] or 0.0)
        > (first["popularity"]["metrics"]["cold_items"]["recall@20"] or 0.0),
        "mean recall@20 >= 1.00x EASE (issue 14)": ours["ratio_vs_ease"]["mean"] >= 1.0,
        "every seed recall@20 >= 0.97x EASE (issue 14)": ours["ratio_vs_ease"]["min"] >= 0.97,
        "mean ndcg@20 >= EASE's (issue 14)": ours["ndcg_at_20"]["mean"] >= ease_s["ndcg_at_20"]["mean"],
        "cold-catalog recall@20 > linear's and random's (issue 14)": all(
            r["cold_catalog_recall_at_20"]["two-tower"]
            > max(r["cold_catalog_recall_at_20"]["linear"], r["cold_catalog_recall_at_20"]["random"])
            for r in runs
        ),
    }
    for name, ok in checks.items():
        console.print(f"{'met    ' if ok else 'NOT met'}  {name}")
    if args.only:
        return 0
    write("quality", {
        "name": "quality_movielens",
        "tower": tower,
        "device": args.device,
        "seeds": len(runs),
        "epochs_run": runs[0]["epochs_run"],
        "best_epoch": runs[0]["best_epoch"],
        "train_seconds": round(statistics.fmean(r["train_seconds"] for r in runs), 1),
        # means over the seeds (one seed: that seed's figures)
        "recall_at_20": {n: s["recall_at_20"]["mean"] for n, s in summary.items()},
        "ndcg_at_20": {n: s["ndcg_at_20"]["mean"] for n, s in summary.items()},
        "ratio_vs_popularity": round(ours["recall_at_20"]["mean"] / pop["recall_at_20"]["mean"], 3),
        "ratio_vs_ease": round(ours["recall_at_20"]["mean"] / ease_s["recall_at_20"]["mean"], 3),
        "summary": summary,
        "checks": checks,
        "met": all(checks.values()),
        "runs": runs,
        "evaluation": runs[0]["evaluation"],
        "machine": machine(),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

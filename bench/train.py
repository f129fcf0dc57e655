"""Training throughput at dim 64 on the 100k videos / 10k users / 1M decisions synthetic set.

    .venv/bin/python bench/train.py [--batch-sizes 512 2048] [--device auto] [--small]

One epoch per batch size through the real `twotower train` path (data from Postgres, temporal split, feature
pipeline); examples/s counts the training loop only (validation excluded). Target (SPEC): >= 50,000/s on CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import embedded_database, machine, write

from twotower.synth import SynthConfig, generate
from twotower.train.run import TrainOptions, train

TARGET = 50_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--small", action="store_true", help="10k/1k/100k instead of 100k/10k/1M (a smoke run)")
    args = parser.parse_args(argv)
    size = (10_000, 1_000, 100_000) if args.small else (100_000, 10_000, 1_000_000)
    config = SynthConfig(videos=size[0], users=size[1], decisions=size[2], seed=0)
    results = {}
    with embedded_database("tt-bench-train-") as db, tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        with db.direct() as conn, conn.transaction():
            generate(conn, config)
        print(f"synthetic data: {size[0]:,} videos, {size[1]:,} users, {size[2]:,} decisions "
              f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
        for bs in args.batch_sizes:
            options = TrainOptions(epochs=1, batch_size=bs, embedding_dim=64, output_dir=Path(out),
                                   resume=False, device=args.device, refit=False)  # fmt: skip
            result = train(db, options)
            stats = result.history[-1]
            results[str(bs)] = {
                "examples": stats.examples,
                "seconds": round(stats.seconds, 2),
                "examples_per_second": round(stats.examples_per_second),
                "valid_recall_at_20_after_1_epoch": round(stats.valid_recall_at_20, 4),
            }
            print(f"batch {bs:>5}: {stats.examples_per_second:>9,.0f} examples/s "
                  f"({stats.examples:,} examples in {stats.seconds:.1f} s; target {TARGET:,}/s)")  # fmt: skip
    best = max(r["examples_per_second"] for r in results.values())
    device = str(result.model.encoder.ids.weight.device)
    write("train" if not args.small else "train_small", {
        "name": "train_throughput",
        "data": {"videos": size[0], "users": size[1], "decisions": size[2]},
        "embedding_dim": 64,
        "device": device,
        "by_batch_size": results,
        "best_examples_per_second": best,
        "target_examples_per_second": TARGET,
        "met": best >= TARGET,
        "machine": machine(),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

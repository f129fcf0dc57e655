"""Benchmark ``twotower synth``: generate and load a catalog and swipes into a fresh embedded Postgres.

    .venv/bin/python bench/synth.py [--videos 100000 --users 10000 --decisions 1000000 --seed 0]

Prints the time and rows/s, and writes ``bench/results/synth.json``. Target: the full size in < 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from twotower.db import EmbeddedServer, upgrade
from twotower.synth import SynthConfig, generate

TARGET_SECONDS = 120
RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--tastes", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    config = SynthConfig(
        videos=args.videos, users=args.users, decisions=args.decisions, seed=args.seed, tastes=args.tastes
    )

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tt-bench-synth-") as tmp:
        server = EmbeddedServer(Path(tmp) / "pg")
        uri = server.start()
        try:
            with psycopg.connect(uri) as conn:
                upgrade(conn)
            started = time.perf_counter()
            last = started

            def progress(message: str) -> None:
                nonlocal last
                now = time.perf_counter()
                print(f"  {now - started:7.2f}s (+{now - last:6.2f}s)  {message}", flush=True)
                last = now

            with psycopg.connect(uri) as conn:
                result = generate(conn, config, progress)
                conn.commit()
            seconds = time.perf_counter() - started
            progress("committed")
        finally:
            server.stop()

    rows = config.videos + config.decisions
    met = seconds < TARGET_SECONDS and result.decisions.inserted == config.decisions
    print(
        f"synth: {config.videos:,} videos, {config.users:,} users, {config.decisions:,} decisions "
        f"in {seconds:.1f} s ({rows / seconds:,.0f} rows/s, {config.decisions / seconds:,.0f} decisions/s); "
        f"target {TARGET_SECONDS} s: {'met' if met else 'NOT met'}"
    )
    report = {
        "name": "synth",
        "videos": config.videos,
        "users": config.users,
        "decisions": config.decisions,
        "tastes": config.tastes,
        "seed": config.seed,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds, 1),
        "decisions_per_second": round(config.decisions / seconds, 1),
        "videos_inserted": result.videos.inserted,
        "decisions_inserted": result.decisions.inserted,
        "target_seconds": TARGET_SECONDS,
        "met": met,
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            # other work on the machine skews the time: the 1-minute load average before and after
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), **report}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

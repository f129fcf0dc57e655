"""Batch re-embedding into pgvector, end to end, and what it does to live traffic.

    .venv/bin/python bench/batch.py [--data-dir DIR] [--small] [--max-rate 5000] [--seconds 15]

On the 100k/10k/1M synthetic set with a deployed model (the same environment as bench/serve.py; --data-dir
reuses one), runs `twotower batch-update --no-users` over every video and prints videos/s (SPEC target
>= 5,000/s, HNSW index maintenance included). Then drives /v1/recommendations at 200 req/s from 32 clients
and prints the p99 latency with no batch running, during an unthrottled batch, and during a throttled one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write

from serve import SECRET, _drive, _environment, _wait_ready

TARGET = 5000.0


def _batch(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "twotower", "batch-update", "--no-users", "--model-version", "bench", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rate(output: str) -> float:
    # "... in 12 chunk(s), 9.1s (10,989 rows/s)"
    return float(output.rsplit("(", 1)[1].split()[0].replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    import jwt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--small", action="store_true", help="10k/1k/100k instead of 100k/10k/1M")
    parser.add_argument("--max-rate", type=float, default=5000.0, help="the throttled run's rows/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="load duration per phase")
    args = parser.parse_args(argv)
    size = (10_000, 1_000, 100_000) if args.small else (100_000, 10_000, 1_000_000)
    report: dict[str, Any] = {"machine": machine(), "target_videos_per_second": TARGET}
    with _environment(args.data_dir, size) as (db, data, _):
        env = {**os.environ, "DATABASE_URL": db.conninfo, "TWOTOWER_DATA_DIR": str(data),
               "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_JWT_SECRET": SECRET}  # fmt: skip
        started = time.perf_counter()
        out, err = _batch(env, "--chunk-size", "5000").communicate()
        wall = time.perf_counter() - started
        with db.direct() as conn:
            videos = int(conn.execute("SELECT count(*) FROM videos").fetchone()[0])  # type: ignore[index]
            users = [r[0] for r in conn.execute("SELECT DISTINCT user_id FROM user_video_decisions").fetchall()]
        report["reembed"] = {"videos": videos, "videos_per_second": _rate(out), "process_seconds": round(wall, 2),
                             "videos_per_second_incl_start_up": videos / wall}  # fmt: skip
        print(
            f"re-embedded {videos:,} videos: {_rate(out):,.0f} videos/s in the job "
            f"({videos / wall:,.0f}/s including process start and model load); target >= {TARGET:,.0f}/s"
        )
        if err.strip():
            print(err.strip().splitlines()[-1])

        port = 19000 + os.getpid() % 1000
        server = subprocess.Popen([sys.executable, "-m", "twotower", "serve", "--port", str(port), "--workers", "2"],
                                  env={**env, "TWOTOWER_DB_POOL_MAX_SIZE": "20"})  # fmt: skip
        phases: dict[str, Any] = {}
        try:
            _wait_ready(f"http://127.0.0.1:{port}")
            exp = int(time.time()) + 7200
            tokens = [jwt.encode({"sub": str(u), "aud": "authenticated", "exp": exp}, SECRET) for u in users]
            asyncio.run(_drive(port, tokens, 32, 3.0, 200.0))  # warm-up
            for name, batch_args in (
                ("no batch", None),
                ("batch, unthrottled", ()),
                (f"batch, --max-rate {args.max_rate:g}", ("--max-rate", str(args.max_rate))),
            ):
                job = _batch(env, *batch_args) if batch_args is not None else None
                latencies, errors, _ = asyncio.run(_drive(port, tokens, 32, args.seconds, 200.0))
                if job is not None:
                    job.communicate()
                ordered = sorted(latencies)
                phases[name] = {"p50_ms": 1000 * ordered[len(ordered) // 2],
                                "p99_ms": 1000 * ordered[int(len(ordered) * 0.99)], "errors": errors}  # fmt: skip
                print(f"  {name:<28} p50 {phases[name]['p50_ms']:7.2f} ms  p99 {phases[name]['p99_ms']:7.2f} ms  "
                      f"errors {errors}")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
        report["live_traffic_at_200_rps"] = phases
    write("batch_small" if args.small else "batch", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Embedding quality checks at scale: `twotower monitor` on 100k videos x 64 dimensions (SPEC C10: < 10 s).

    .venv/bin/python bench/monitor.py [--data-dir DIR] [--small]

On the 100k/10k/1M synthetic set with a deployed model (the environment of bench/serve.py; --data-dir reuses
one), a second generation is made from the first with a little noise, so the drift check has a previous
generation to compare with, and the whole check (load from pgvector, every metric, record, HTML report) is
timed, end to end and per part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write

from serve import _environment

TARGET_SECONDS = 10.0


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    from psycopg.types.json import Jsonb

    from twotower.embeddings.generation import write_embeddings
    from twotower.monitor import Thresholds, history, monitor_version
    from twotower.monitor.checks import check_vectors
    from twotower.monitor.report import render_report
    from twotower.monitor.run import _generation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--small", action="store_true", help="10k/1k/100k instead of 100k/10k/1M")
    args = parser.parse_args(argv)
    size = (10_000, 1_000, 100_000) if args.small else (100_000, 10_000, 1_000_000)
    report: dict[str, Any] = {"machine": machine(), "target_seconds": TARGET_SECONDS}
    with _environment(args.data_dir, size) as (db, _, _):
        with db.direct() as conn:
            dim = int(conn.execute("SELECT embedding_dim FROM model_versions WHERE version = 'bench'").fetchone()[0])  # type: ignore[index]
            ids, vectors = _generation(conn, "bench", dim)
            rng = np.random.default_rng(0)
            noisy = vectors + rng.normal(scale=0.02, size=vectors.shape).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            with conn.transaction():
                conn.execute("DELETE FROM model_versions WHERE version = 'bench-next'")
                conn.execute(
                    "INSERT INTO model_versions (version, status, embedding_dim, manifest) VALUES "
                    "('bench-next', 'ready', %s, %s)", (dim, Jsonb({})),
                )  # fmt: skip
                write_embeddings(conn, "video_embeddings", "video_id", "bench-next", ids, noisy)
            conn.commit()
        print(f"{len(ids):,} x {dim} embeddings; checking 'bench-next' against the active 'bench' ...", flush=True)
        started = time.perf_counter()
        result = monitor_version(db, Thresholds(), version="bench-next", record=True)
        seconds = time.perf_counter() - started
        arrays = time.perf_counter()
        check_vectors(noisy, dim, Thresholds(), previous=(noisy, vectors))
        checks_only = time.perf_counter() - arrays
        with db.direct() as conn:
            past = history(conn, "bench-next")
        rendered = time.perf_counter()
        page = render_report(result, past)
        render_seconds = time.perf_counter() - rendered
        with db.direct() as conn:
            conn.execute("DELETE FROM model_versions WHERE version = 'bench-next'")  # cascades to its rows
            conn.commit()
        with db.direct(autocommit=True) as conn:  # its 100k dead rows: vacuumed here, not under the next bench
            conn.execute("VACUUM (ANALYZE) video_embeddings")
    report["monitor"] = {
        "rows": len(ids), "dim": dim, "seconds_end_to_end": round(seconds, 3),
        "seconds_checks_on_arrays": round(checks_only, 3), "seconds_html_report": round(render_seconds, 3),
        "report_kb": round(len(page.encode()) / 1024, 1), "alerts": [a.name for a in result.alerts],
        "drift": result.check.metrics.get("drift"),
    }  # fmt: skip
    m = report["monitor"]
    print(
        f"monitor on {m['rows']:,} x {dim}: {m['seconds_end_to_end']:.2f}s end to end (load, checks, drift vs the "
        f"previous generation, record; target < {TARGET_SECONDS:g}s), "
        f"checks alone {m['seconds_checks_on_arrays']:.2f}s, "
        f"HTML report {m['seconds_html_report']:.2f}s ({m['report_kb']} KB); alerts: {m['alerts'] or 'none'}"
    )
    write("monitor_small" if args.small else "monitor", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

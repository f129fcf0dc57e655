"""The benches' own checks: a bench whose baseline is itself out of bounds fails instead of reporting a ratio."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_the_batch_bench_refuses_a_saturated_baseline() -> None:
    """Issue 29: on a quiet machine the batch bench's no-job phase gave p50 118.5 / p99 231.9 ms, and "p99 during the
    job ≤ 2× without" passed at 1.04×. Such a baseline now fails the run."""
    sys.path.insert(0, str(BENCH))
    try:
        import batch
    finally:
        sys.path.remove(str(BENCH))
    saturated = {"no batch": {"p50_ms": 118.5, "p99_ms": 231.9}, "no batch, after": {"p50_ms": 164.3, "p99_ms": 290.0},
                 "every vector changes": {"p50_ms": 120.0, "p99_ms": 241.0}}  # fmt: skip
    assert not batch.baseline_is_sane(saturated)
    one_slow = {"no batch": {"p50_ms": 4.1, "p99_ms": 12.0}, "no batch, after": {"p50_ms": 5.0, "p99_ms": 58.2}}
    assert not batch.baseline_is_sane(one_slow)
    assert not batch.baseline_is_sane({"every vector changes": {"p50_ms": 4.0, "p99_ms": 9.0}})  # no baseline at all
    quiet = {"no batch": {"p50_ms": 4.1, "p99_ms": 12.0}, "no batch, after": {"p50_ms": 3.9, "p99_ms": 17.2},
             "every vector changes": {"p50_ms": 9.0, "p99_ms": 30.0}}  # fmt: skip
    assert batch.baseline_is_sane(quiet)

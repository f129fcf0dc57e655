"""Write bench/results/SUMMARY.md: every SPEC target beside the figure measured for it, and whether it is met.

    .venv/bin/python bench/_summary.py        (`make bench` runs it after every script in bench/)

Reads the JSON files the bench scripts wrote; a target whose file is missing is listed as "not measured".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    what: str
    target: str
    source: str  # results file, without .json
    measure: Callable[[dict[str, Any]], tuple[str, bool]]


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        data = data[key]
    return data


def _serve(d: dict[str, Any]) -> tuple[str, bool]:
    r = _get(d, "serve", "at_target_rate")
    sat = _get(d, "serve", "saturation", "requests_per_second")
    share = float(d["serve"].get("two_tower_share", 0.0))
    ok = r["p50_ms"] <= 10 and r["p99_ms"] <= 50 and sat >= 300 and r["errors"] == 0 and share >= 0.999
    return (f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms at {r['requests_per_second']:.0f} req/s offered "
            f"200; {sat:.0f} req/s at saturation; {r['errors']} errors; {share:.2%} two_tower", ok)  # fmt: skip


def _ready(d: dict[str, Any]) -> tuple[str, bool]:
    ready = float(d.get("ready_seconds", float("nan")))
    return f"{ready:.1f} s to /readyz with the model", ready <= 10


def _fallbacks(d: dict[str, Any]) -> tuple[str, bool]:
    pop = _get(d, "serve", "popularity_fallback", "p50_ms")
    lin = _get(d, "serve", "linear_fallback", "p50_ms")
    return f"popularity p50 {pop:.1f} ms, linear p50 {lin:.1f} ms", max(pop, lin) <= 20


def _towers(d: dict[str, Any]) -> tuple[str, bool]:
    t = d["towers"]
    return (f"{t['user_tower_ms']:.2f} ms / {t['item_tower_1000_ms']:.1f} ms",
            t["user_tower_ms"] <= 1 and t["item_tower_1000_ms"] <= 20)  # fmt: skip


def _rss(d: dict[str, Any]) -> tuple[str, bool]:
    per = [p["rss_mb"] if isinstance(p, dict) else p for p in _get(d, "serve", "rss_mb_per_process")]
    worst = max(float(x) for x in per)
    return (
        f"{worst:.0f} MB (largest of {len(per)} processes; {float(_get(d, 'serve', 'rss_mb')):.0f} MB in all)",
        worst <= 500,
    )


def _batch(d: dict[str, Any]) -> tuple[str, bool]:
    r = d["reembed"]
    changed = r["every_vector_changes"]["videos_per_second"]
    same = r["vectors_unchanged"]["videos_per_second"]
    return (f"{changed:,.0f} videos/s when every vector changes; {same:,.0f} videos/s when none does "
            "(only changed rows are written)", changed >= 5000)  # fmt: skip


def _train(d: dict[str, Any]) -> tuple[str, bool]:
    best = d.get("best_positives_per_second", d.get("best_examples_per_second", 0))
    runs = d.get("by_batch_size", {}).values()
    shown = "; ".join(f"batch {r['batch_size']}: {r['positives_per_second']:,}/s = {r['share_of_control']:.2f}x a "
                      f"minimal loop of the same shape ({r['control_examples_per_second']:,}/s)"
                      for r in runs if "share_of_control" in r)  # fmt: skip
    return f"{best:,} positives/s" + (f" ({shown})" if shown else ""), best >= 50_000


def _quality(d: dict[str, Any]) -> tuple[str, bool]:
    r = d["recall_at_20"]
    return (f"Recall@20 {r['two-tower']:.4f} vs popularity {r['popularity']:.4f} ({d['ratio_vs_popularity']:.2f}x) "
            f"and EASE {r['ease']:.4f} ({d['ratio_vs_ease']:.2f}x)",
            d["ratio_vs_popularity"] >= 1.5 and d["ratio_vs_ease"] >= 0.9)  # fmt: skip


def _monitor(d: dict[str, Any]) -> tuple[str, bool]:
    m = d["monitor"]
    return f"{m['seconds_end_to_end']:.1f} s ({m['rows']:,} x {m['dim']}, drift included)", m["seconds_end_to_end"] < 10


def _synth(d: dict[str, Any]) -> tuple[str, bool]:
    return f"{d['seconds']:.1f} s", d["seconds"] < 120


def _console(d: dict[str, Any]) -> tuple[str, bool]:
    worst = max(d["routes"].items(), key=lambda kv: kv[1]["p95_ms"])
    return (f"worst p95 {worst[1]['p95_ms']:.1f} ms ({worst[0]}); /healthz p50 "
            f"{d['control_healthz']['p50_ms']:.1f} ms", worst[1]["p95_ms"] <= 200)  # fmt: skip


def _edge(d: dict[str, Any]) -> tuple[str, bool]:
    api, edge = d["serve"]["api"], d["serve"]["edge"]
    ratio = edge["p50_ms"] / api["p50_ms"]
    ok = not d.get("missed") and edge["algorithms"].keys() == {"two_tower"}
    bundle, cold = d["bundle"]["total_mb"], d["cold_start_seconds"]
    return (f"p50 {edge['p50_ms']:.1f} ms = {ratio:.2f}× the Python API's {api['p50_ms']:.1f} ms; RSS "
            f"{d['rss_mb']:.0f} MB; cold start {cold:.2f} s; bundle {bundle:.1f} MB", ok)  # fmt: skip


TARGETS = [
    Target("`/v1/recommendations`, 100k videos, 10k users, 1M decisions, 32 clients", "p50 ≤ 10 ms, p99 ≤ 50 ms "
           "at 200 req/s, ≥ 300 req/s at saturation, 0 errors, 100% two_tower", "serve", _serve),
    Target("server ready with the model after start, 100k videos", "≤ 10 s", "serve", _ready),
    Target("fallback answers (popularity, linear), 100k videos", "p50 ≤ 20 ms", "serve", _fallbacks),
    Target("user embedding (tower only) / 1,000 item embeddings", "≤ 1 ms / ≤ 20 ms", "serve", _towers),
    Target("batch re-embedding into pgvector, end to end", "≥ 5,000 videos/s", "batch", _batch),
    Target("training throughput, dim 64, CPU", "≥ 50,000 examples/s", "train", _train),
    Target("serving process memory with 100k videos", "≤ 500 MB RSS", "serve", _rss),
    Target("quality on MovieLens (temporal split)", "Recall@20 ≥ 1.5× popularity and ≥ 0.9× EASE", "quality",
           _quality),
    Target("embedding quality checks, 100k × 64 (C10)", "< 10 s", "monitor", _monitor),
    Target("synthetic data, 100k / 10k / 1M (`twotower synth`)", "< 120 s", "synth", _synth),
    Target("operator console routes, 100k videos", "each ≤ 200 ms (p95)", "console", _console),
    Target("edge function, 100k videos (C14)", "warm p50 ≤ 2× the API's; RSS ≤ 200 MB; cold start ≤ 1.5 s",
           "edge", _edge),
]  # fmt: skip


def main() -> int:
    lines = [
        "# Benchmark summary",
        "",
        f"Written {datetime.now(UTC):%Y-%m-%d %H:%M UTC} by `bench/_summary.py` from `bench/results/*.json`; "
        "targets from SPEC.md (2-core CPU). *When* says when each figure was measured.",
        "",
        "| what | target | measured | met | when | source |",
        "|---|---|---|---|---|---|",
    ]
    missing = 0
    for t in TARGETS:
        path = RESULTS / f"{t.source}.json"
        try:
            data = json.loads(path.read_text())
            figure, met = t.measure(data)
            when = str(data.get("measured_at", "")).replace("T", " ")[:16] or "before 2026-11-24"
            verdict = "yes" if met else "**no**"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            figure, verdict, when = f"not measured ({type(exc).__name__})", "—", "—"
            missing += 1
        lines.append(f"| {t.what} | {t.target} | {figure} | {verdict} | {when} | `bench/{t.source}.py` |")
    out = RESULTS / "SUMMARY.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[4:]))
    print(f"wrote {out}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""A 1M bench (issue 31): time and peak memory of every stage at 1M videos / 100k users / 10M decisions, next to
the same figure at 100k from the same code, as a growth ratio.

    .venv/bin/python bench/scale.py --videos 1000000 --users 100000 --decisions 10000000 --data-dir DIR
                                    [--stages synth,train,...] [--seconds 20] [--train-full-timeout S]
    .venv/bin/python bench/scale.py --videos 100000 --users 10000 --decisions 1000000 --data-dir DIR2

A bench, not in `make test`. Every stage runs the product's own command as a subprocess (`twotower synth`,
`train`, `export`, `validate`, `deploy`, `serve`, `batch-update`, `monitor`; the item table through the library
call a deploy's upload step makes), so each one's wall time and peak RSS are its own: the peak is the larger of
``os.wait4``'s ru_maxrss of the stage's process and a 0.2 s psutil sample of its whole process tree (the
embedded Postgres is not counted: its memory is the database's). The data (an embedded Postgres, the trained
model, the artifact store) stays in --data-dir, so --stages reruns some stages against it; every finished stage
is written to bench/results/scale.json at once, beside the other size's figure and the growth ratio (this size
/ the other, for a 10x data ratio), so a run cut off keeps what it measured.

Stages, in the order they run (the most informative first; `train_full`, to early stopping, last):
  synth       `twotower synth`
  train       `twotower train --epochs 1 --no-refit` (the model every later stage uses, version 'bench')
  export      `twotower export`
  validate    `twotower validate --js skip` (PyTorch vs ONNX Runtime on rows from the database)
  item_table  the item table a deploy ships (every video's encoded features: ``with_item_table``)
  deploy      `twotower deploy --model-dir ... --no-gate --no-monitor`: validate, upload (item table), the
              embedding generation (videos and users, the HNSW index included), promote; per-step seconds
  serve       `twotower serve --workers 2`: start to ready, then p50/p99 at 200 req/s and saturation from 32
              clients, the `algorithm` of every answer, RSS per process; the control in the same run: the raw HNSW
              query alone (bench/serve.py's ANN floor)
  monitor     `twotower monitor --no-record` on the active version
  batch       `twotower batch-update --no-users`, 2 workers sharing one job (the nightly case: vectors unchanged)
  train_full  `twotower train --no-refit` to early stopping (20 epochs at most, patience 5)

Then the targets at 1M (serving p99 <= 50 ms at 200 req/s and 100% two_tower, ready <= 30 s, RSS <= 1 GB per
worker, training peak memory <= 8 GB, deploy end to end <= 30 min) and a 10M estimate computed from the growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from _common import RESULTS, machine, write

from serve import RATE, SECRET, _ann_floor, _drive, _quiet, _rss_mb, _server, _summary, _wait_ready

STAGES = ("synth", "train", "export", "validate", "item_table", "deploy", "serve", "monitor", "batch", "train_full")
VERSION = "bench"  # the names bench/serve.py's and bench/batch.py's helpers use
TARGETS = {"serve_p99_ms": 50.0, "two_tower_share": 1.0, "ready_seconds": 30.0, "worker_rss_mb": 1024.0,
           "train_peak_rss_mb": 8192.0, "deploy_end_to_end_seconds": 1800.0}  # fmt: skip
TWOTOWER = [sys.executable, "-m", "twotower"]
DEADLINE: list[float | None] = [None]  # --deadline as a time.time(): stages are killed or skipped at it


class _Peak(threading.Thread):
    """Samples, every 0.2 s, the RSS of the processes ``pids()`` names (never Postgres): peak total and peak of one."""

    def __init__(self, pids: Any) -> None:
        super().__init__(daemon=True)
        self.pids, self.total_mb, self.process_mb = pids, 0.0, 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            sizes = []
            for p in self.pids():
                try:
                    if not p.name().startswith(("postgres", "pg_ctl")):
                        sizes.append(p.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            self.total_mb = max(self.total_mb, sum(sizes))
            self.process_mb = max(self.process_mb, max(sizes, default=0.0))
            self.stopping.wait(0.2)

    def __enter__(self) -> _Peak:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.join(timeout=5)


def _cores(since: Any, seconds: float) -> dict[str, float]:
    """Cores used on average since the ``psutil.cpu_times()`` snapshot ``since``, by kind. Everything this bench
    starts runs niced (its embedded Postgres included), so un-niced user time is other work on the machine: the
    control that says how much of the 2 cores a stage had."""
    now = psutil.cpu_times()
    kinds = ("user", "nice", "system", "idle", "iowait", "steal")
    used = {k: (getattr(now, k) - getattr(since, k)) / seconds for k in kinds}
    return {"unniced_user": round(used["user"], 2), "niced_user": round(used["nice"], 2),
            "system": round(used["system"], 2), "idle": round(used["idle"] + used["iowait"], 2),
            "steal": round(used["steal"], 2)}  # fmt: skip


def _tree(pid: int) -> Any:
    def pids() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return pids


def _mine() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _run(name: str, args: list[str], env: dict[str, str], logs: Path, timeout: float | None = None) -> dict[str, Any]:
    """Run one stage's command; its output goes to logs/NAME.log. Wall seconds, exit code, peak RSS."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    shown = " ".join(a if "\n" not in a else "<script>" for a in args)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}  (log: {log})", flush=True)
    load, cpu = round(os.getloadavg()[0], 2), psutil.cpu_times()
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        if DEADLINE[0] is not None:  # --deadline: no stage runs past it
            left = DEADLINE[0] - time.time()
            timeout = min(timeout, left) if timeout else left
        killer = threading.Timer(timeout, proc.kill) if timeout else None
        if killer:
            killer.start()
        with _Peak(_tree(proc.pid)) as peak:
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if killer:
            killer.cancel()
    return {
        "seconds": round(seconds, 2), "returncode": proc.returncode, "timed_out": bool(killer and proc.returncode < 0),
        # CPU seconds of the stage's processes (not Postgres's): what a busy machine does not change much
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "load_average_at_start": load,
        "machine_cores_used": _cores(cpu, seconds),
        "peak_rss_mb": round(max(usage.ru_maxrss / 1024, peak.process_mb), 1),
        "peak_tree_rss_mb": round(max(usage.ru_maxrss / 1024, peak.total_mb), 1), "log": str(log),
    }  # fmt: skip


def _tail(path: str, lines: int = 15) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def _training(model_dir: Path) -> dict[str, Any]:
    info = json.loads((model_dir / "training.json").read_text())
    history = info["history"]
    positives = sum(h["examples"] for h in history)
    loop = sum(h["seconds"] for h in history)
    return {
        "epochs": len(history), "best_epoch": info["best_epoch"],
        "best_valid_recall_at_20": round(info["best_valid_recall_at_20"], 4), "positives": positives,
        "training_loop_seconds": round(loop, 1), "positives_per_second": round(positives / loop) if loop else None,
        "data": info["data"], "batch_size": info["batch_size_per_process"],
    }  # fmt: skip


def _one(db: Any, query: str, params: Any = ()) -> Any:
    with db.direct() as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


# -- the stages -----------------------------------------------------------------------------------------------------


def stage_synth(ctx: dict[str, Any]) -> dict[str, Any]:
    if _one(ctx["db"], "SELECT count(*) FROM videos"):
        raise SystemExit(f"{ctx['data']} already has videos: synth runs on an empty data dir only")
    a = ctx["args"]
    r = _run("synth", [*TWOTOWER, "synth", "--videos", str(a.videos), "--users", str(a.users),
                       "--decisions", str(a.decisions), "--seed", "0"], ctx["env"], ctx["logs"])  # fmt: skip
    r["decisions_in_db"] = _one(ctx["db"], "SELECT count(*) FROM user_video_decisions")
    return r


def stage_train(ctx: dict[str, Any]) -> dict[str, Any]:
    registered = _one(ctx["db"], "SELECT status FROM model_versions WHERE version = %s", (VERSION,))
    version = VERSION if registered is None else "scale-1ep"  # 'bench' is taken (a rerun): timings only
    out = ctx["data"] / "trained"
    r = _run("train", [*TWOTOWER, "train", "--epochs", "1", "--no-refit", "--no-resume", "--device", "cpu",
                       "--version", version, "--output-dir", str(out)], ctx["env"], ctx["logs"])  # fmt: skip
    if r["returncode"] == 0:
        r.update(_training(out / version))
        ctx["trained"] = out / version  # what this run's export and validate stages then check
    r["version"] = version
    return r


def _model_dir(ctx: dict[str, Any]) -> Path:
    return ctx["args"].model or ctx.get("trained") or ctx["data"] / "trained" / VERSION


def stage_export(ctx: dict[str, Any]) -> dict[str, Any]:
    return _run("export", [*TWOTOWER, "export", str(_model_dir(ctx))], ctx["env"], ctx["logs"])


def stage_validate(ctx: dict[str, Any]) -> dict[str, Any]:
    return _run("validate", [*TWOTOWER, "validate", str(_model_dir(ctx)), "--js", "skip"], ctx["env"], ctx["logs"])


_ITEM_TABLE = """
import sys, time
from pathlib import Path
from twotower.db import Database
from twotower.settings import get_settings
from twotower.pipeline.snapshot import with_item_table
db = Database.open(get_settings(), migrate=False)
try:
    started = time.perf_counter()
    manifest = with_item_table(db, Path(sys.argv[1]), Path(sys.argv[2]))
    print("item_table_seconds", time.perf_counter() - started, manifest["item_table"]["videos"])
finally:
    db.close()
"""


def stage_item_table(ctx: dict[str, Any]) -> dict[str, Any]:
    import shutil

    target = ctx["data"] / "item_table_probe"
    shutil.rmtree(target, ignore_errors=True)
    r = _run("item_table", [sys.executable, "-c", _ITEM_TABLE, str(_model_dir(ctx)), str(target)], ctx["env"],
             ctx["logs"])  # fmt: skip
    if r["returncode"] == 0:
        r["items_npz_mb"] = round((target / "items.npz").stat().st_size / 2**20, 1)
        shutil.rmtree(target, ignore_errors=True)
    return r


def stage_deploy(ctx: dict[str, Any]) -> dict[str, Any]:
    db = ctx["db"]
    redeployed = _one(db, "SELECT status FROM model_versions WHERE version = %s", (VERSION,)) is not None
    if redeployed:  # a rerun: the version, its generation and its stored copy go first (a version is immutable)
        import shutil

        from twotower.registry.versions import drop_generation

        with db.direct(autocommit=True) as conn:
            drop_generation(conn, VERSION)
            conn.execute("DELETE FROM model_deployments WHERE %s IN (version, previous_version)", (VERSION,))
            conn.execute("DELETE FROM model_versions WHERE version = %s", (VERSION,))
            conn.execute("VACUUM (ANALYZE) video_embeddings")
            conn.execute("VACUUM (ANALYZE) user_embeddings")
        for folder in ("store", "models"):
            shutil.rmtree(ctx["data"] / folder / VERSION, ignore_errors=True)
    from batch import _Maintenance

    polls = _Maintenance(db.conninfo)  # what builds an index on video_embeddings, every 0.5 s: the HNSW build's time
    polls.start()
    try:
        r = _run("deploy", [*TWOTOWER, "deploy", "--model-dir", str(_model_dir(ctx)), "--no-gate", "--no-monitor"],
                 ctx["env"], ctx["logs"])  # fmt: skip
    finally:
        polls.stopping.set()
        polls.join(timeout=5)
    building = [t for t, what, _ in polls.samples if what and "CREATE INDEX" in what]
    r["hnsw_build_seconds"] = round(building[-1] - building[0] + 0.5, 1) if building else None
    text = Path(r["log"]).read_text(errors="replace")
    found = re.search(r"generation: ([\d,]+) videos, ([\d,]+) users \(([^)]*)\)", text)
    if found:
        r["videos"], r["users"] = (int(found.group(i).replace(",", "")) for i in (1, 2))
        r["step_seconds"] = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)s", found.group(3))}
    r.update(_index_facts(db), redeployed=redeployed)
    return r


def _index_facts(db: Any) -> dict[str, Any]:
    """Size of the generation's HNSW index and of its table."""
    with db.direct() as conn:
        row = conn.execute(
            "SELECT sum(pg_relation_size(i.indexrelid)) FILTER (WHERE am.amname = 'hnsw'), "
            "pg_total_relation_size('video_embeddings') FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = 'video_embeddings'::regclass"
        ).fetchone()  # fmt: skip
    return {"hnsw_index_mb": round(float(row[0] or 0) / 2**20, 1),
            "video_embeddings_total_mb": round(float(row[1]) / 2**20, 1)}  # fmt: skip


def stage_serve(ctx: dict[str, Any]) -> dict[str, Any]:
    import jwt

    db, a = ctx["db"], ctx["args"]
    waited = _quiet(db)
    with db.direct() as conn:
        users = [r[0] for r in conn.execute("SELECT user_id FROM user_embeddings WHERE model_version = %s",
                                            (VERSION,)).fetchall()]  # fmt: skip
    exp = int(time.time()) + 7200
    tokens = [jwt.encode({"sub": str(u), "aud": "authenticated", "exp": exp}, SECRET) for u in users]
    algorithms: Counter[str] = Counter()
    runs: dict[str, Any] = {}
    print(f"[{time.strftime('%H:%M:%S')}] serve: 2 workers, {len(users):,} users", flush=True)
    load, cpu, began = round(os.getloadavg()[0], 2), psutil.cpu_times(), time.perf_counter()
    with _server(ctx["env"], 2) as (port, started, pid), _Peak(_tree(pid)) as peak:
        ready = _wait_ready(f"http://127.0.0.1:{port}", started, expect=VERSION, timeout=600)
        ready_rss = _rss_mb(pid)
        asyncio.run(_drive(port, tokens, 32, 3.0))  # warm-up
        for name, rate in (("at_200_rps", RATE), ("saturation", None)):
            at, t0 = psutil.cpu_times(), time.perf_counter()
            latencies, errors, short = asyncio.run(_drive(port, tokens, 32, a.seconds, rate, algorithms=algorithms))
            runs[name] = {**_summary(latencies, errors, short, a.seconds, rate),
                          "machine_cores_used": _cores(at, time.perf_counter() - t0)}  # fmt: skip
        rss = _rss_mb(pid)
    floor = _ann_floor(db, users[:300])  # the control: the HNSW query alone, one client
    answered = sum(algorithms.values())
    return {
        "ready_seconds": ready, "waited_for_vacuum_seconds": waited, "users": len(users), **runs,
        "algorithms": dict(algorithms), "two_tower_share": algorithms["two_tower"] / answered if answered else 0.0,
        "rss_mb_per_process_at_ready": [round(x, 1) for x in ready_rss[1]],
        "rss_mb_per_process_after_load": [round(x, 1) for x in rss[1]],
        "peak_rss_mb": round(peak.process_mb, 1), "peak_tree_rss_mb": round(peak.total_mb, 1),
        "seconds": round(time.monotonic() - started, 1), "ann_floor": floor, "load_average_at_start": load,
        "machine_cores_used": _cores(cpu, time.perf_counter() - began),
    }  # fmt: skip


def stage_monitor(ctx: dict[str, Any]) -> dict[str, Any]:
    r = _run("monitor", [*TWOTOWER, "monitor", "--model-version", VERSION, "--no-record", "--json"], ctx["env"],
             ctx["logs"])  # fmt: skip
    r["note"] = "exit 1 means alerts fired (the check itself ran)" if r["returncode"] == 1 else None
    return r


def stage_batch(ctx: dict[str, Any]) -> dict[str, Any]:
    from batch import _Maintenance, _reembed

    print(f"[{time.strftime('%H:%M:%S')}] batch: batch-update --no-users, 2 workers", flush=True)
    load = round(os.getloadavg()[0], 2)
    _quiet(ctx["db"])
    started, cpu = time.perf_counter(), psutil.cpu_times()
    with _Peak(_mine) as peak:  # everything this bench started now: the two workers
        r = _reembed(ctx["env"], ctx["db"], 2, _Maintenance(ctx["db"].conninfo))
    return {**r, "seconds": round(time.perf_counter() - started, 2), "load_average_at_start": load,
            "machine_cores_used": _cores(cpu, time.perf_counter() - started),
            "peak_rss_mb": round(peak.process_mb, 1),
            "peak_tree_rss_mb": round(peak.total_mb, 1)}  # fmt: skip


def stage_train_full(ctx: dict[str, Any]) -> dict[str, Any]:
    version = f"scale-es-{int(time.time())}"
    out = ctx["data"] / "trained"
    r = _run("train_full", [*TWOTOWER, "train", "--no-refit", "--no-resume", "--device", "cpu", "--version", version,
                            "--output-dir", str(out)], ctx["env"], ctx["logs"],
             timeout=ctx["args"].train_full_timeout)  # fmt: skip
    if r["returncode"] == 0:
        r.update(_training(out / version))
    r["version"] = version
    return r


# -- the report ------------------------------------------------------------------------------------------------------


def _label(videos: int) -> str:
    return f"{videos // 1_000_000}M" if videos % 1_000_000 == 0 else f"{videos // 1000}k"


def _figures(stage: str, r: dict[str, Any]) -> dict[str, float | None]:
    """The figures of a stage compared across sizes: seconds and peak RSS (and serving's latencies)."""
    if stage == "serve":
        return {"ready_seconds": r["ready_seconds"], "p50_ms_at_200_rps": r["at_200_rps"]["p50_ms"],
                "p99_ms_at_200_rps": r["at_200_rps"]["p99_ms"],
                "saturation_rps": r["saturation"]["requests_per_second"],
                "ann_floor_p50_ms": r["ann_floor"]["p50_ms"], "peak_rss_mb": r["peak_rss_mb"],
                "peak_tree_rss_mb": r["peak_tree_rss_mb"]}  # fmt: skip
    figures = {"seconds": r.get("seconds"), "cpu_seconds": r.get("cpu_seconds"), "peak_rss_mb": r.get("peak_rss_mb")}
    if stage == "deploy":
        figures.update({f"{k}_seconds": v for k, v in r.get("step_seconds", {}).items()})
        figures.update(hnsw_build_seconds=r.get("hnsw_build_seconds"), hnsw_index_mb=r.get("hnsw_index_mb"))
    if stage == "batch":
        figures.update(job_seconds=r.get("job_seconds"))
    if stage in ("train", "train_full"):
        figures.update(training_loop_seconds=r.get("training_loop_seconds"), epochs=r.get("epochs"))
    if stage == "item_table":
        figures.update(items_npz_mb=r.get("items_npz_mb"))
    return figures


def _ok(report: dict[str, Any], label: str) -> dict[str, Any]:
    """The stages of a size that finished."""
    stages = report["runs"].get(label, {}).get("stages", {})
    return {k: v for k, v in stages.items() if "error" not in v and v.get("returncode") in (None, 0, 1)}


def _ratio(small: float | None, large: float | None) -> float | None:
    return round(large / small, 2) if small and large else None


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _growth(report: dict[str, Any]) -> dict[str, Any]:
    small, large = (_ok(report, "100k"), _ok(report, "1M"))
    growth: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in small or stage not in large:
            continue
        a, b = _figures(stage, small[stage]), _figures(stage, large[stage])
        growth[stage] = {k: {"100k": a[k], "1M": b.get(k), "ratio": _ratio(a[k], b.get(k))} for k in a}
    return growth


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    s = _ok(report, "1M")
    checks: dict[str, Any] = {}
    if "serve" in s:
        r = s["serve"]
        checks["serve_p99_ms"] = r["at_200_rps"]["p99_ms"]
        checks["two_tower_share"] = r["two_tower_share"]
        checks["ready_seconds"] = r["ready_seconds"]
        workers = r["rss_mb_per_process_after_load"][1:] or r["rss_mb_per_process_after_load"]
        checks["worker_rss_mb"] = max(max(workers), r["peak_rss_mb"])
    if "train" in s:
        checks["train_peak_rss_mb"] = max(
            s["train"]["peak_tree_rss_mb"], s.get("train_full", {}).get("peak_tree_rss_mb", 0)
        )
    parts = ("export", "deploy")
    train = "train_full" if s.get("train_full", {}).get("returncode") == 0 else "train"
    if train in s and all(p in s for p in parts):
        checks["deploy_end_to_end_seconds"] = round(s[train]["seconds"] + sum(s[p]["seconds"] for p in parts), 1)
        checks["deploy_end_to_end_training"] = "to early stopping" if train == "train_full" else "one epoch only"
    out = {}
    for key, target in TARGETS.items():
        if key not in checks:
            out[key] = {"target": target, "measured": None, "met": None}
            continue
        value = checks[key]
        met = value >= target if key == "two_tower_share" else value <= target
        out[key] = {"target": target, "measured": value, "met": met}
    if "deploy_end_to_end_training" in checks:
        out["deploy_end_to_end_seconds"]["training"] = checks["deploy_end_to_end_training"]
    return out


def _estimate_10m(report: dict[str, Any]) -> dict[str, Any]:
    """10M videos by computation: each 1M figure times its measured 100k -> 1M growth (the same growth per 10x)."""
    g = report.get("growth", {})
    picks = {"hnsw_index_mb": ("deploy", "hnsw_index_mb"), "hnsw_build_seconds": ("deploy", "hnsw_build_seconds"),
             "generation_build_seconds": ("deploy", "build_seconds"),
             "item_table_seconds": ("item_table", "seconds"), "item_table_peak_rss_mb": ("item_table", "peak_rss_mb"),
             "items_npz_mb": ("item_table", "items_npz_mb"), "serve_worker_peak_rss_mb": ("serve", "peak_rss_mb"),
             "ready_seconds": ("serve", "ready_seconds"), "train_epoch_seconds": ("train", "seconds"),
             "train_peak_rss_mb": ("train", "peak_rss_mb"), "synth_seconds": ("synth", "seconds")}  # fmt: skip
    out: dict[str, Any] = {"method": "the 1M figure x its 100k->1M growth ratio (assumes the same growth per 10x)"}
    for name, (stage, key) in picks.items():
        f = g.get(stage, {}).get(key)
        if f and f["ratio"] is not None:
            out[name] = round(f["1M"] * f["ratio"], 1)
    return out


def _print(report: dict[str, Any]) -> None:
    print(f"\n{'stage':<12} {'figure':<24} {'100k':>10} {'1M':>10} {'growth':>8}")
    for stage in STAGES:
        a, b = _ok(report, "100k").get(stage), _ok(report, "1M").get(stage)
        if a is None and b is None:
            continue
        fa = _figures(stage, a) if a else {}
        fb = _figures(stage, b) if b else {}
        for key in dict.fromkeys([*fa, *fb]):
            x, y = fa.get(key), fb.get(key)
            ratio = _ratio(x, y)
            print(f"{stage:<12} {key:<24} {_show(x):>10} {_show(y):>10} {_show(ratio) + 'x' if ratio else '-':>8}")
    print("\ntargets at 1M:")
    for key, t in report.get("targets", {}).items():
        verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  {key:<28} {t['measured']!s:>12}  target {t['target']:g}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    from twotower.db import Database
    from twotower.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=10_000_000)
    parser.add_argument("--data-dir", type=Path, help="keep the data here; --stages reruns against it (required)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration of each serving run")
    parser.add_argument("--train-full-timeout", type=float, default=None, help="kill train_full after this long")
    parser.add_argument("--model", type=Path, help="the model export, validate and item_table use (default: what "
                        "this run's train stage wrote, else DATA_DIR/trained/bench)")  # fmt: skip
    parser.add_argument("--model-from", type=Path, help="copy this trained model (of another size) in as "
                        "DATA_DIR/trained/bench instead of training one (to deploy before training)")  # fmt: skip
    parser.add_argument("--deadline", help="HH:MM UTC today: a stage still running then is killed (its peak memory "
                        "so far is kept), later ones are skipped")  # fmt: skip
    args = parser.parse_args(argv)
    if args.data_dir is None:
        if os.environ.get("TWOTOWER_BENCH_DATA_DIR"):  # `make bench`: hours at 1M, run on purpose only
            print("bench/scale.py: skipped in `make bench` (run it with --data-dir, see its docstring)")
            return 0
        parser.error("--data-dir is required")
    if args.deadline:
        hour, minute = (int(x) for x in args.deadline.split(":"))
        now = time.gmtime()
        DEADLINE[0] = time.time() + ((hour * 60 + minute) * 60 - (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec))
    stages = [s for s in args.stages.split(",") if s]  # run in the order given
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages: {', '.join(sorted(unknown))}")
    label = _label(args.videos)
    data = args.data_dir.absolute()
    data.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scale.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.setdefault("runs", {})
    run = report["runs"].setdefault(label, {})
    size = {"videos": args.videos, "users": args.users, "decisions": args.decisions}
    if run.get("data") not in (None, size):
        run["stages"] = {}  # figures of another size under this label: start over
    run.update(data=size, data_dir=str(data), machine=machine())
    run.setdefault("stages", {})
    db = Database.open(Settings(data_dir=data), migrate=True)
    env = {**os.environ, "DATABASE_URL": db.conninfo, "TWOTOWER_DATA_DIR": str(data),
           "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_JWT_SECRET": SECRET}  # fmt: skip
    ctx = {"db": db, "data": data, "env": env, "args": args, "logs": data / "logs"}
    failed = []
    if args.model_from is not None and not (data / "trained" / VERSION).exists():
        import shutil

        shutil.copytree(args.model_from, data / "trained" / VERSION)
        run["model_from"] = {"path": str(args.model_from.absolute()), "note": (
            "deploy, serve, monitor and batch use this model, trained on another size (its ID embedding table has "
            "that size's rows; every other array is this size's): the train stage ran after them")}  # fmt: skip
    try:
        for stage in stages:
            if DEADLINE[0] is not None and time.time() > DEADLINE[0] - 60:
                print(f"  {stage}: skipped, the deadline {args.deadline} UTC has come", flush=True)
                continue
            try:
                result = globals()[f"stage_{stage}"](ctx)
            except (Exception, SystemExit) as exc:  # one stage's failure is reported, the next runs
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if result.get("error") or result.get("returncode") not in (None, 0, 1 if stage == "monitor" else 0):
                failed.append(stage)
                if "log" in result:
                    result["log_tail"] = _tail(result["log"])
                print(f"  {stage} FAILED: {result.get('error') or result.get('log_tail')}", flush=True)
            run["stages"][stage] = result
            shown = {k: v for k, v in _figures(stage, result).items() if v is not None} if "error" not in result else {}
            print(f"  {stage}: {shown}", flush=True)
            if path.exists():  # another size's run may have written meanwhile: keep its figures
                on_disk = json.loads(path.read_text())
                report = {**on_disk, "runs": {**on_disk.get("runs", {}), label: run}}
            report["data_ratio"] = 10
            report["growth"] = _growth(report)
            report["targets"] = _targets(report)
            report["estimate_10M"] = _estimate_10m(report)
            report.pop("measured_at", None)
            report = json.loads(json.dumps(report, default=str))  # a Decimal or UUID from the database: as text
            write("scale", report)  # after every stage: a run cut off keeps what it measured
    finally:
        db.close()
    _print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

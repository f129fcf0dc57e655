"""The Supabase Edge Function beside the Python API, on the 100k videos / 10k users / 1M decisions synthetic set.

    .venv/bin/python bench/edge.py [--clients 1] [--seconds 20] [--small]

Serves supabase/functions/two_tower_recommendations with Deno (``Deno.serve``, as Supabase runs it: one process, one
thread) and the Python API (``twotower serve``, one worker) over the same database and model, and drives both with
the same load in the same run: warm p50/p99 of each, the function's RSS (steady and peak) with the 100k user tower
loaded, its cold start (a new process: artifacts read from the store and verified, the towers loaded, the first
answer) and the size of what ``supabase functions deploy`` uploads. Every answer's ``algorithm`` is counted: a
fallback doing the work fails the run. The same function on ONNX Runtime Web (``TWOTOWER_EDGE_ONNX=web``) is
measured too, also with V8's baseline WebAssembly compiler only (``--v8-flags=--liftoff-only``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write

from serve import SECRET, _drive, _environment, _quiet, _server, _summary, _wait_ready
from twotower.db.conninfo import as_url

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "supabase" / "functions"
TARGETS = {"p50_ratio": 2.0, "rss_mb": 200.0, "cold_start_seconds": 1.5, "bundle_mb": 20.0, "cpu_ms_per_request": 50.0,
           "api_p50_ms": 10.0}  # fmt: skip
DENO = Path(sys.executable).parent / "deno"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


@contextmanager
def _function(env: dict[str, str], port: int, flags: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[bytes]]:
    from urllib.parse import parse_qs, urlsplit

    entry = FUNCTIONS / "two_tower_recommendations" / "index.ts"
    socket = parse_qs(urlsplit(env["SUPABASE_DB_URL"]).query).get("host", [""])[0]  # a Unix socket is written to
    write = [f"--allow-write={socket}"] if socket else []
    command = [str(DENO), "run", "--quiet", f"--config={FUNCTIONS / 'deno.json'}", "--allow-env", "--allow-net",
               "--allow-read", "--allow-sys", *write, *flags, str(entry)]  # fmt: skip
    process = subprocess.Popen(command, env={**env, "PORT": str(port)}, cwd=ROOT)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _first_answer(port: int, token: str, process: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Seconds from now until the function's first 200 answer by the two-tower model."""
    import httpx

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise SystemExit(f"the function exited with {process.returncode}")
        try:
            response = httpx.post(f"http://127.0.0.1:{port}", json={"limit": 20},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
            if response.status_code == 200 and response.json()["algorithm"] == "two_tower":
                return time.monotonic() - started
            if response.status_code == 200:
                raise SystemExit(f"the function answered with a fallback: {response.json().get('fallback_reason')}")
        except httpx.TransportError:  # not listening yet
            pass
        time.sleep(0.02)
    raise SystemExit("the function did not answer")


def _bundle_bytes(env: dict[str, str]) -> dict[str, Any]:
    """What ``supabase functions deploy`` uploads: the function's module graph bundled into one file (its sources
    and the npm packages' modules it imports; ``deno bundle``) and the WebAssembly file ONNX Runtime Web loads."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle.js"
        subprocess.run([str(DENO), "bundle", "--quiet", "--platform=deno", f"--config={FUNCTIONS / 'deno.json'}",
                        "-o", str(out), str(FUNCTIONS / "two_tower_recommendations" / "index.ts")],
                       env=env, capture_output=True, check=True, cwd=ROOT)  # fmt: skip
        modules = out.stat().st_size
    info = json.loads(subprocess.run([str(DENO), "info", "--json", f"--config={FUNCTIONS / 'deno.json'}",
                                      str(FUNCTIONS / "_shared" / "runtime.ts")],
                                     env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout)  # fmt: skip
    wasm = 0
    for package in info.get("npmPackages", {}).values():
        if package.get("name") == "onnxruntime-web":
            cache = Path(os.environ.get("DENO_DIR", Path.home() / ".cache" / "deno"))
            found = list(cache.glob(f"npm/*/onnxruntime-web/{package['version']}/dist/ort-wasm-simd-threaded.wasm"))
            wasm = found[0].stat().st_size if found else 0
    return {"modules_bytes": modules, "wasm_bytes": wasm, "total_mb": (modules + wasm) / 2**20}


def _web_runtime(env: dict[str, str], port: int, tokens: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The same function on ONNX Runtime Web (TWOTOWER_EDGE_ONNX=web): cold start, p50 and RSS, for comparison;
    and its RSS with V8's baseline WebAssembly compiler only (``--liftoff-only``, a flag hosted code cannot set)."""
    web = {**env, "TWOTOWER_EDGE_ONNX": "web"}
    out: dict[str, Any] = {}
    for name, flags in (("default", ()), ("liftoff_only", ("--v8-flags=--liftoff-only",))):
        with _function(web, port, flags) as function:
            cold = _first_answer(port, tokens[0], function)
            algorithms: Counter[str] = Counter()
            latencies, errors, short = asyncio.run(
                _drive(port, tokens, args.clients, args.seconds / 2, algorithms=algorithms, path="/")
            )
            summary = _summary(latencies, errors, short, args.seconds / 2, None)
            out[name] = {"cold_start_seconds": cold, "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
                         "algorithms": dict(algorithms), **_status(function.pid)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    import jwt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--small", action="store_true", help="10k/1k/100k instead of 100k/10k/1M (a smoke run)")
    parser.add_argument("--data-dir", type=Path, help="keep the data and the deployed model here, reuse them next time")
    args = parser.parse_args(argv)
    if not DENO.is_file():
        raise SystemExit(f"{DENO} is missing: `make install` installs Deno from the dev extras")
    size = (10_000, 1_000, 100_000) if args.small else (100_000, 10_000, 1_000_000)
    data_size = dict(zip(("videos", "users", "decisions"), size, strict=True))
    report: dict[str, Any] = {"machine": machine(), "data": data_size, "clients": args.clients, "targets": TARGETS}
    with _environment(args.data_dir, size) as (db, data, _seconds):
        report["waited_for_vacuum_seconds"] = _quiet(db)
        with db.direct() as conn:
            users = [r[0] for r in conn.execute("SELECT DISTINCT user_id FROM user_video_decisions").fetchall()]
        exp = int(time.time()) + 7200
        tokens = [jwt.encode({"sub": str(u), "aud": "authenticated", "exp": exp}, SECRET) for u in users]
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TWOTOWER_", "SUPABASE_"))}
        api_env = {**base, "DATABASE_URL": db.conninfo, "TWOTOWER_DATA_DIR": str(data),
                   "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_JWT_SECRET": SECRET}  # fmt: skip
        edge_env = {**base, "SUPABASE_DB_URL": as_url(db.conninfo), "TWOTOWER_JWT_SECRET": SECRET,
                    "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "NO_COLOR": "1"}  # fmt: skip
        report["bundle"] = _bundle_bytes(edge_env)
        runs: dict[str, Any] = {}
        port = 19000 + os.getpid() % 500
        with _function(edge_env, port) as function:
            cold = _first_answer(port, tokens[0], function)  # the process start is in it: a new worker
            with _server(api_env, 1) as (api_port, started, _pid):
                _wait_ready(f"http://127.0.0.1:{api_port}", started, expect="bench")
                sides = (("api", api_port, "/functions/v1/two_tower_recommendations"), ("edge", port, "/"))
                for _name, target, path in sides:
                    asyncio.run(_drive(target, tokens, args.clients, 3.0, path=path))  # warm-up
                for round_ in range(2):  # interleaved: each side is measured twice, beside the other
                    for name, target, path in sides:
                        algorithms: Counter[str] = Counter()
                        cpu = _cpu_seconds(function.pid)
                        latencies, errors, short = asyncio.run(
                            _drive(target, tokens, args.clients, args.seconds / 2, algorithms=algorithms, path=path)
                        )
                        cpu = _cpu_seconds(function.pid) - cpu  # the function's (all but idle for the API's runs)
                        runs[f"{name}_{round_}"] = {**_summary(latencies, errors, short, args.seconds / 2, None),
                                                    "algorithms": dict(algorithms), "latencies": latencies,
                                                    "function_cpu_seconds": cpu}  # fmt: skip
            memory = _status(function.pid)
        report["cold_start_seconds"] = cold
        report["onnxruntime_web"] = _web_runtime(edge_env, port + 1, tokens, args)
    report["rss_mb"], report["peak_rss_mb"] = memory["VmRSS"], memory["VmHWM"]
    return _print(report, runs, args)


def _print(report: dict[str, Any], runs: dict[str, Any], args: argparse.Namespace) -> int:
    merged: dict[str, Any] = {}
    for side in ("api", "edge"):
        latencies = runs[f"{side}_0"].pop("latencies") + runs[f"{side}_1"].pop("latencies")
        summary = _summary(latencies, 0, 0, args.seconds, None)
        algorithms = Counter(runs[f"{side}_0"]["algorithms"]) + Counter(runs[f"{side}_1"]["algorithms"])
        errors = runs[f"{side}_0"]["errors"] + runs[f"{side}_1"]["errors"]
        short = runs[f"{side}_0"]["short_answers"] + runs[f"{side}_1"]["short_answers"]
        merged[side] = {**summary, "errors": errors, "short_answers": short, "algorithms": dict(algorithms)}
    report["runs"], report["serve"] = runs, merged
    api, edge = merged["api"], merged["edge"]
    cpu = runs["edge_0"]["function_cpu_seconds"] + runs["edge_1"]["function_cpu_seconds"]
    edge["cpu_ms_per_request"] = 1000 * cpu / max(edge["requests"], 1)
    ratio = edge["p50_ms"] / api["p50_ms"]
    measured = {"p50_ratio": ratio, "rss_mb": report["rss_mb"], "cold_start_seconds": report["cold_start_seconds"],
                "bundle_mb": report["bundle"]["total_mb"], "cpu_ms_per_request": edge["cpu_ms_per_request"],
                "api_p50_ms": api["p50_ms"]}  # fmt: skip
    print(f"two_tower_recommendations (limit 20), {args.clients} client(s) closed loop, {args.seconds:.0f}s per side:")
    for label, run in (("Python API ", api), ("edge (Deno)", edge)):
        print(f"  {label} p50 {run['p50_ms']:.2f} ms  p99 {run['p99_ms']:.2f} ms  {run['requests_per_second']:.0f} "
              f"req/s  answered by {run['algorithms']}")  # fmt: skip
    missed = []
    for key, value in measured.items():
        ok = value <= TARGETS[key]
        missed += [] if ok else [key]
        print(f"  {key:<20} {value:>9.2f}   target <= {TARGETS[key]:g}   {'ok' if ok else 'MISSED'}")
    print(f"  RSS peak {report['peak_rss_mb']:.0f} MB (the towers on onnx.ts, the default)")
    for name, run in report["onnxruntime_web"].items():
        cold = run["cold_start_seconds"]
        print(f"  on ONNX Runtime Web ({name}): RSS {run['VmRSS']:.0f} MB (peak {run['VmHWM']:.0f}), p50 "
              f"{run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, cold start {cold:.2f} s")  # fmt: skip
    print(f"  bundle: modules {report['bundle']['modules_bytes'] / 2**20:.1f} MB + ONNX Runtime's WebAssembly "
          f"{report['bundle']['wasm_bytes'] / 2**20:.1f} MB")  # fmt: skip
    report["missed"] = missed
    write("edge_small" if args.small else "edge", report)
    failed = []
    for side, run in merged.items():
        total = sum(run["algorithms"].values())
        if not total or run["algorithms"].get("two_tower", 0) != total:
            failed.append(f"{side}: answered by {run['algorithms']}: a fallback did the work")
        if run["errors"] or run["short_answers"]:
            failed.append(f"{side}: {run['errors']} errors, {run['short_answers']} short answers")
    if api["p50_ms"] > TARGETS["api_p50_ms"]:
        failed.append(f"the baseline (the Python API) missed its own p50 target: {api['p50_ms']:.1f} ms")
    for line in failed:
        print(f"FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

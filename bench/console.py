"""The operator console's routes at 100k videos: each must answer in <= 200 ms.

    .venv/bin/python bench/console.py [--data-dir .twotower/bench] [--requests 40]

Reads the environment bench/serve.py keeps (100k videos / 10k users / 1M decisions, version "bench" deployed;
built as bench/serve.py builds it when missing): starts `twotower serve` on it as its own process (one
worker) and times every read-only console route (and the pages) one request at a time, as the console calls
them, against /healthz timed the same way (the control: HTTP and auth overhead alone). The rollback route is not
timed: it would switch the bench's active version. Writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write

from serve import SECRET, _environment, _server, _wait_ready

TARGET_MS = 200.0


def _time(client: Any, path: str, headers: dict[str, str], n: int, post: Any = None) -> dict[str, float]:
    def call() -> Any:
        return client.get(path, headers=headers) if post is None else client.post(path, json=post, headers=headers)

    call()  # warm: the first call of a route plans its statements
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = call()
        times.append(1000 * (time.perf_counter() - started))
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(ordered[int(0.95 * (n - 1))], 2),
            "max_ms": round(ordered[-1], 2)}  # fmt: skip


def _measure(conninfo: str, data: Path, active: str, heavy: Any, video: Any, n: int) -> dict[str, Any]:
    import httpx
    import jwt

    service = {"Authorization": "Bearer " + jwt.encode({"role": "service_role", "exp": int(time.time()) + 3600},
                                                       SECRET)}  # fmt: skip
    env = {**os.environ, "DATABASE_URL": conninfo, "TWOTOWER_DATA_DIR": str(data),
           "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_JWT_SECRET": SECRET}  # fmt: skip
    routes = ["/v1/admin/versions", "/v1/admin/quality/trend", "/v1/admin/serving", "/v1/admin/jobs",
              f"/v1/admin/users/{heavy}", f"/v1/admin/videos/{video}", "/console", "/pages/console.js"]  # fmt: skip
    report: dict[str, Any] = {"active_version": active, "requests_per_route": n, "target_ms": TARGET_MS,
                              "routes": {}}  # fmt: skip
    with _server(env, 1) as (port, started, _pid):
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, started, expect=active)
        with httpx.Client(base_url=base, timeout=30) as client:
            report["control_healthz"] = _time(client, "/healthz", {}, n)
            # the user lookup's feed is this request's work: the control of /v1/admin/users/{user_id}
            user = {"Authorization": "Bearer " + jwt.encode({"sub": str(heavy), "aud": "authenticated",
                                                             "exp": int(time.time()) + 3600}, SECRET)}  # fmt: skip
            report["control_recommendations"] = _time(client, "/v1/recommendations", user, n, post={"limit": 20})
            for path in routes:
                name = path.replace(str(heavy), "{user_id}").replace(str(video), "{video_id}")
                report["routes"][name] = _time(client, path, service, n)
            # not a console route (the console reads stored checks): the live like-rate over the served log
            report["not_console"] = {"/v1/admin/quality": _time(client, "/v1/admin/quality", service, 10)}
    return report


def main(argv: list[str] | None = None) -> int:
    from twotower.db import Database
    from twotower.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("TWOTOWER_BENCH_DATA_DIR", ".twotower/bench"))
    parser.add_argument("--data-dir", type=Path, default=default)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args(argv)
    data = args.data_dir.absolute()
    if not (data / "pg").is_dir():  # bench/serve.py's environment is not there yet: build it (as it does)
        with _environment(data, (100_000, 10_000, 1_000_000)):
            pass
    with Database.open(Settings(data_dir=data), migrate=False) as db:  # attached while the server runs
        with db.direct() as conn:
            active = conn.execute("SELECT version FROM model_versions WHERE status = 'active'").fetchone()
            if active is None:
                print(f"no deployed version in {data}: run `bench/serve.py --data-dir {args.data_dir}` first")
                return 1
            videos = conn.execute("SELECT count(*) FROM videos").fetchone()[0]
            heavy = conn.execute(
                "SELECT user_id FROM user_video_decisions GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
            ).fetchone()[0]
            video = conn.execute("SELECT video_id FROM video_embeddings WHERE model_version = %s LIMIT 1",
                                 (active[0],)).fetchone()[0]  # fmt: skip
        report = _measure(db.conninfo, data, str(active[0]), heavy, video, args.requests)
    report = {"videos": videos, **report}
    worst = max(r["p95_ms"] for r in report["routes"].values())
    report["worst_p95_ms"] = worst
    report["met"] = worst <= TARGET_MS
    print(f"console routes at {videos:,} videos, {args.requests} sequential requests each "
          f"(controls: /healthz p50 {report['control_healthz']['p50_ms']:.1f} ms, the heaviest user's "
          f"/v1/recommendations p50 {report['control_recommendations']['p50_ms']:.1f} ms):")  # fmt: skip
    for name, r in report["routes"].items():
        print(f"  {name:<32} p50 {r['p50_ms']:>7.1f}  p95 {r['p95_ms']:>7.1f}  max {r['max_ms']:>7.1f} ms   "
              f"{'ok' if r['p95_ms'] <= TARGET_MS else 'MISSED'}")  # fmt: skip
    q = report["not_console"]["/v1/admin/quality"]
    print(f"  (not a console route) /v1/admin/quality with the live like-rate: p50 {q['p50_ms']:.1f} ms")
    write("console", report)
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())

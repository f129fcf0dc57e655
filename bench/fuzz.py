"""Schema-driven fuzzing of the API: every schemathesis check, 300 examples per operation and mode.

    .venv/bin/python bench/fuzz.py [--examples 300] [--data-dir D] [--small]

Starts `twotower serve` over the data of bench/serve.py (a deployed model), generates valid and invalid requests
for every operation from the OpenAPI document, as a user and as the service role, and runs every check
schemathesis has on each answer (server errors, status codes, content types, response schemas, rejected valid
data, accepted invalid data). Prints the failures and writes bench/results/fuzz.json; exits non-zero on any.
`make test` runs the same at 25 examples (tests/serve/test_resilience.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write

from serve import SECRET, _environment, _server, _wait_ready

SWITCHES = {("POST", "/v1/admin/rollback")}  # not fuzzed as the service role


def _checker(
    strategy: Any, examples: int, base: str, token: str, name: str, counts: dict[str, int], failures: list[str]
) -> Any:
    """A hypothesis test over ``strategy``: each request as ``token``, every check on the answer."""
    from hypothesis import HealthCheck, given, settings

    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              derandomize=True)  # fmt: skip
    def check(case: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        response = case.call(base_url=base, timeout=30)
        counts[name] += 1
        try:
            case.validate_response(response)
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{name}: {' '.join(str(exc).split())[:500]}")
        if response.status_code >= 400 and set(response.json()) != {"error", "message"}:
            failures.append(f"{name}: error body {response.text[:200]}")

    return check


def main(argv: list[str] | None = None) -> int:
    import jwt
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--small", action="store_true", help="10k/1k/100k instead of 100k/10k/1M")
    args = parser.parse_args(argv)
    size = (10_000, 1_000, 100_000) if args.small else (100_000, 10_000, 1_000_000)
    exp = int(time.time()) + 7200
    callers = {
        "user": jwt.encode({"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": exp}, SECRET),
        "service": jwt.encode({"role": "service_role", "iss": "supabase", "exp": exp}, SECRET),
    }
    failures: list[str] = []
    counts: dict[str, int] = {}
    started = time.perf_counter()
    with _environment(args.data_dir, size) as (db, data, _seconds):
        env = {**os.environ, "DATABASE_URL": db.conninfo, "TWOTOWER_DATA_DIR": str(data),
               "TWOTOWER_ARTIFACT_STORE": str(data / "store"), "TWOTOWER_JWT_SECRET": SECRET}  # fmt: skip
        with _server(env, 1) as (port, up, _pid):
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base, up, expect="bench")
            api = schemathesis.openapi.from_url(f"{base}/openapi.json")
            for result in api.get_all_operations():
                operation = result.ok()
                for who, token in callers.items():
                    if who == "service" and (operation.method.upper(), operation.path) in SWITCHES:
                        continue  # it would switch the bench's active version (tests/serve/test_pages.py covers it)
                    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                        name = f"{operation.method.upper()} {operation.path} as {who}, {mode.value}"
                        counts[name] = 0

                        check = _checker(operation.as_strategy(generation_mode=mode), args.examples, base, token,
                                         name, counts, failures)  # fmt: skip
                        with contextlib.suppress(Unsatisfiable):  # nothing invalid to send for this one
                            check()
                        print(f"  {name}: {counts[name]} requests", flush=True)
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    print(f"{total} requests over {len(counts)} operation/caller/mode combinations in {seconds:.0f} s; "
          f"{len(failures)} failures")  # fmt: skip
    for line in failures[:20]:
        print(f"FAILED: {line}")
    write("fuzz", {"machine": machine(), "examples_per_operation": args.examples, "requests": total,
                   "per_operation": counts, "failures": failures, "seconds": round(seconds, 1)})  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``twotower simulate``: synthetic users with planted tastes swipe through the real API; like-rate by swipe index."""

from __future__ import annotations

import json
import secrets
import socket
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer
from pydantic import SecretStr
from rich.progress import Progress
from rich.table import Table

from twotower.cli.console import open_db, out
from twotower.db.conninfo import as_url
from twotower.errors import ConfigError, InputError, NotFound
from twotower.settings import get_settings


def simulate(
    users: int = typer.Option(100, "--users", help="New users (no history)."),
    swipes: int = typer.Option(30, "--swipes", help="Measured swipes per user."),
    api: str | None = typer.Option(
        None, "--api", help="The API's base URL (its TWOTOWER_JWT_SECRET in the environment signs the users' tokens); "
        "default: serve one in this process on 127.0.0.1.", show_default=False,
    ),
    existing: int = typer.Option(0, "--existing-users", help="Users who first post --history swipes, then swipe."),
    history: int = typer.Option(20, "--history", help="Swipes an existing user brings."),
    feed: int = typer.Option(10, "--feed", help="Videos per feed request."),
    seed: int = typer.Option(0, "--seed", help="The users' tastes and swipes derive from it (the users are new in "
                             "every run)."),
    concurrency: int = typer.Option(8, "--concurrency", help="Users swiping at the same time."),
    json_out: Path | None = typer.Option(None, "--json-out", help="Also write the table as JSON here."),
) -> None:  # fmt: skip
    """Close the loop: users drawn from `twotower synth`'s taste model sign in with JWTs, ask the API for feeds,
    swipe each served video by their planted taste and post it through /v1/decisions. Prints like-rate by swipe
    index (1-10, 11-20, ...) per arm and cohort, the exposure of cold videos, and the running experiment's verdict."""
    from twotower.simulate.oracle import Oracle  # lazy: numpy+httpx, 0.4 s of CLI start
    from twotower.simulate.run import SimulationConfig, summarise  # lazy: numpy+httpx, 0.4 s of CLI start
    from twotower.simulate.run import simulate as run  # lazy: numpy+httpx, 0.4 s of CLI start

    config = SimulationConfig(users=users, existing=existing, swipes=swipes, history=history, feed=feed, seed=seed,
                              concurrency=concurrency)  # fmt: skip
    config.validate()
    settings = get_settings()
    if api is not None and not api.startswith(("http://", "https://")):
        raise InputError(f"--api must be an http(s) URL, got {api!r}")
    if api is None:
        secret = SecretStr(secrets.token_urlsafe(32))  # this process's server accepts only these users' tokens
        settings = settings.model_copy(update={"jwt_secret": secret, "jwt_jwks_url": None, "serve_try_page": False})
    elif settings.jwt_secret is None:
        raise ConfigError("set TWOTOWER_JWT_SECRET to the API's JWT secret: the simulated users sign in with tokens "
                          "signed by it")  # fmt: skip
    from twotower.demo.api import background_server  # lazy: fastapi, 1 s of CLI start
    from twotower.serve.auth import mint_token  # lazy: fastapi, 1 s of CLI start

    with open_db() as db:
        with db.direct() as conn:
            oracle = Oracle.load(conn)
        if api is None and db.embedded is not None:  # the server shares this process's embedded one, not owns it
            settings = settings.model_copy(update={"database_url": SecretStr(as_url(db.conninfo))})
        with ExitStack() as stack, Progress(console=out, transient=True) as progress:
            base = api
            if base is None:
                base = stack.enter_context(background_server(settings, _free_port()))[0]
                _wait_ready(base)
            task = progress.add_task(f"{users + existing:,} users swiping", total=users + existing)
            done = run(base.rstrip("/"), oracle, config, lambda user: mint_token(settings, 3600, user=user),
                       on_user=lambda: progress.advance(task))  # fmt: skip
        if api is not None:
            time.sleep(2.5)  # the API writes what it served once a second
        summary = summarise(done, config.bucket)
        verdict = _verdict(db, summary)
    _print(summary, verdict, config)
    if json_out is not None:
        body = {"config": config.__dict__, "arms": summary, "experiment": verdict}
        try:
            json_out.write_text(json.dumps(body, indent=2, default=str))
        except OSError as exc:
            raise InputError(f"cannot write {json_out}: {exc.strerror}") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(base: str, timeout: float = 120.0) -> None:
    import httpx  # lazy: 0.2 s of CLI start

    deadline = time.monotonic() + timeout
    while httpx.get(f"{base}/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise ConfigError("the API was not ready (its model did not load) within 120 s")
        time.sleep(0.1)


def _verdict(db: Any, summary: dict[str, Any]) -> dict[str, Any] | None:
    """The experiment's figures when the simulation ran inside one (a look: recorded, guardrail included)."""
    if set(summary) <= {"none"}:
        return None
    from twotower.monitor.experiment import check_experiment  # lazy: numpy+httpx, 0.4 s of CLI start

    with db.direct() as conn:
        try:
            return check_experiment(conn, get_settings(), actor="guardrail (simulate)").as_json()
        except NotFound:
            return None


def _print(summary: dict[str, Any], verdict: dict[str, Any] | None, config: Any) -> None:
    for arm, row in summary.items():
        algorithms = ", ".join(f"{k} {v:,}" for k, v in row["algorithms"].items())
        out.print(f"[bold]{arm if arm != 'none' else 'no experiment'}[/]: {row['users']:,} users, {row['swipes']:,} "
                  f"swipes; cold videos {row['cold_exposure']:.1%} of exposures; answered by {algorithms}")  # fmt: skip
        for cohort in ("new", "existing"):
            if cohort not in row:
                continue
            table = Table(title=f"{arm} — {cohort} users: like-rate by swipe index")
            table.add_column("")
            for b in row[cohort]:
                table.add_column(b["swipes"], justify="right")
            table.add_row("like-rate", *[_cell(b) for b in row[cohort]])
            table.add_row("swipes", *[f"{b['n']:,}" for b in row[cohort]])
            out.print(table)
    if verdict is not None:
        comp = verdict["comparison"]
        out.print(f"experiment {verdict['experiment']['id']} ({verdict['experiment']['status']}): {verdict['verdict']}"
                  f" — {comp['reason']}")  # fmt: skip


def _cell(bucket: dict[str, Any]) -> str:
    if bucket["like_rate"] is None:
        return "-"
    half = f" ± {bucket['ci95']:.1%}" if bucket["ci95"] is not None else ""
    return f"{bucket['like_rate']:.1%}{half}"

"""``twotower monitor``: check an embedding generation; exit non-zero when an alert fires."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from twotower.cli.console import err, open_db, out
from twotower.errors import InputError
from twotower.registry.experiments import current
from twotower.settings import get_settings


def monitor(
    model_version: str | None = typer.Option(
        None, "--model-version", help="The version to check (default: the active one).", show_default=False
    ),
    report: Path | None = typer.Option(
        None, "--report", help="Also write a self-contained HTML report with plots here.", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    record: bool = typer.Option(True, "--record/--no-record", help="Keep the result in the quality_reports table."),
) -> None:
    """Check the embeddings of a model version: NaN/Inf, dimension, norms, collapse, duplicates, coverage,
    staleness, drift vs the previous generation, and the live like-rate of served recommendations; and the running
    experiment, if any (its guardrail applies). Alerts go to the log and TWOTOWER_MONITOR_WEBHOOK_URL; the exit code
    is 1 when any alert fires (thresholds: TWOTOWER_MONITOR_*)."""
    from twotower.monitor import Thresholds, monitor_version  # lazy: numpy+httpx, 0.4 s of CLI start

    settings = get_settings()
    if report is not None and report.is_dir():
        raise InputError(f"--report {report}: is a directory; give a file name like quality.html")
    with open_db() as db:
        with out.status("checking embeddings ..."):
            result = monitor_version(
                db, Thresholds.from_settings(settings), version=model_version,
                like_window_hours=settings.monitor_like_window_hours, record=record,
                webhook_url=settings.monitor_webhook_url,
            )  # fmt: skip
        experiment = _look_at_experiment(db, settings) if model_version is None else None
        if report is not None:
            from twotower.monitor.report import write_report  # lazy: matplotlib, 1.5 s of CLI start

            write_report(db, result, report)
    if as_json:
        print(json.dumps({**result.as_json(), "experiment": experiment}, default=str))
    else:
        _print(result)
        if experiment is not None:
            comp = experiment["comparison"]
            out.print(f"experiment {experiment['experiment']['id']} ({experiment['experiment']['status']}): "
                      f"{experiment['verdict']} — {comp['reason']}")  # fmt: skip
        if report is not None:
            out.print(f"report: {report}")
    if result.alerts:
        raise typer.Exit(1)


def _look_at_experiment(db: Any, settings: Any) -> dict[str, Any] | None:
    """The running experiment's figures (a look: recorded, and the guardrail applies), when one runs."""
    from twotower.monitor.experiment import check_experiment  # lazy: numpy+httpx, 0.4 s of CLI start

    with db.direct() as conn:
        running = current(conn)
        if running is None:
            return None
        return check_experiment(conn, settings, experiment=running, actor="guardrail (monitor)").as_json()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _print(result: object) -> None:
    from twotower.monitor import QualityReport  # lazy: numpy+httpx, 0.4 s of CLI start

    assert isinstance(result, QualityReport)
    against = f" vs {result.previous}" if result.previous else " (no previous generation to compare with)"
    out.print(f"version {result.version}{against}: {'passed' if result.passed else 'ALERT'} in {result.seconds:.2f}s")
    table = Table(show_header=False)
    table.add_column("metric")
    table.add_column("value")
    for key, value in result.check.metrics.items():
        table.add_row(key, _fmt(value))
    live = result.live
    rate = f"{live.like_rate:.1%}" if live.like_rate is not None else "no swipes yet"
    table.add_row(
        "live like-rate", f"{rate} ({live.decided:,} swipes on {live.served:,} served, {live.window_hours:g} h)"
    )
    out.print(table)
    for alert in result.alerts:
        err.print(f"alert {alert.name}: {alert.message}", markup=False)

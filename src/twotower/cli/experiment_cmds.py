"""``twotower experiment``: start, look at and stop an online experiment between two model versions."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from twotower.cli.console import open_db, out
from twotower.registry.experiments import start as run_start
from twotower.registry.experiments import stop as run_stop
from twotower.settings import get_settings

__all__ = ["app"]

app = typer.Typer(
    help="Online experiments: a candidate version answers a share of the users, the active version the rest; "
    "like-rates are compared per user with an interval that stays valid however often you look.",
    no_args_is_help=True,
)


@app.command("start")
def start(
    candidate: str = typer.Argument(
        ..., help="A deployed, not active version (`twotower deploy --candidate`), a retired one, or the active one "
        "itself for an A/A test.", show_default=False,
    ),
    share: float = typer.Option(0.1, "--share", help="Share of the users answered by the candidate (0-1)."),
) -> None:  # fmt: skip
    """Start answering --share of the users with CANDIDATE (every server loads it beside the active version)."""
    with open_db() as db, db.direct() as conn:
        exp = run_start(conn, candidate, share)
    out.print(f"experiment {exp.id} running: {exp.candidate_version} answers {exp.share:.1%} of the users, "
              f"{exp.control_version} the rest; servers notified. Look with `twotower experiment status`.")  # fmt: skip


@app.command("status")
def status(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The running (or last) experiment: per arm users, exposures, swipes, like-rate; the difference with its
    intervals and the verdict. Each look is recorded and applies the guardrail (a significantly worse candidate is
    stopped)."""
    from twotower.monitor.experiment import check_experiment  # lazy: numpy+httpx, 0.4 s of CLI start

    settings = get_settings()
    with open_db() as db, db.direct() as conn:
        result = check_experiment(conn, settings, actor="guardrail (experiment status)")
    if json_out:
        print(json.dumps(result.as_json(), default=str, indent=2))
        return
    exp = result.experiment
    out.print(f"experiment {exp.id}: {exp.candidate_version} (candidate, {exp.share:.1%}) vs {exp.control_version} "
              f"(control) — {exp.status}, since {exp.started_at:%Y-%m-%d %H:%M %Z}")  # fmt: skip
    if exp.stop_reason:
        out.print(f"stopped: {exp.stop_reason}")
    table = Table()
    for col in ("arm", "version", "users", "exposures", "swipes", "swipes/exposure", "like-rate (95% CI)"):
        table.add_column(col, justify="left" if col in ("arm", "version") else "right")
    for arm, stats in result.arms.items():
        table.add_row(arm, exp.version(arm), f"{stats.users:,}", f"{stats.exposures:,}", f"{stats.decisions:,}",
                      _rate(stats.decision_rate, None), _rate(stats.like_rate, stats.like_rate_se))  # fmt: skip
    out.print(table)
    comp = result.comparison
    if comp.difference is not None:
        out.print(
            f"like-rate difference (candidate - control): {comp.difference:+.4f}; 95% interval "
            f"{_pair(comp.ci95)} (one look), always-valid {_pair(comp.always_valid)} (any number of looks)"
        )
    out.print(f"[bold]verdict:[/] {comp.verdict} — {comp.reason}" + ("; the guardrail stopped it now" if result.stopped
                                                                     else ""))  # fmt: skip


@app.command("stop")
def stop(
    promote: bool = typer.Option(False, "--promote", help="Make the candidate the active version (atomic switch)."),
) -> None:
    """Stop the running experiment: everyone is answered by the active version again, or with --promote by the
    candidate (the same atomic switch as deploy and rollback)."""
    with open_db() as db, db.direct() as conn:
        exp = run_stop(conn, promote=promote, reason="promoted" if promote else "stopped by hand")
    now = exp.candidate_version if promote else exp.control_version
    out.print(f"experiment {exp.id} {exp.status}; every user is answered by {now}; servers notified")


def _rate(value: float | None, se: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if se is None else f"{value:.2%} ± {1.96 * se:.2%}"


def _pair(pair: Any) -> str:
    return "n/a" if not pair else f"[{pair[0]:+.4f}, {pair[1]:+.4f}]"

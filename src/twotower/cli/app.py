"""The root ``twotower`` command, and the one place where errors become a line on stderr and an exit code."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

import typer

from twotower import __version__
from twotower.cli import (
    db_cmds,
    demo_cmds,
    deploy_cmds,
    experiment_cmds,
    export_cmds,
    ingest_cmds,
    jobs_cmds,
    monitor_cmds,
    serve_cmds,
    simulate_cmds,
    sync_cmds,
    synth_cmds,
    train_cmds,
    tune_cmds,
)  # fmt: skip
from twotower.cli.console import err
from twotower.errors import ImportRejected, TwoTowerError, report

__all__ = ["app", "main"]

app = typer.Typer(
    name="twotower",
    help="Two-tower recommendations for swipe-style video apps, on PostgreSQL + pgvector.\n\n"
    "With no DATABASE_URL, an embedded Postgres+pgvector is started under ./.twotower/pg "
    "(TWOTOWER_PG_DIR) and shared by every twotower process using it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(db_cmds.app, name="db")
app.add_typer(ingest_cmds.app, name="import")
app.add_typer(sync_cmds.app, name="sync")
app.command("synth")(synth_cmds.synth)
app.command("train")(train_cmds.train)
app.command("evaluate")(train_cmds.evaluate)
app.command("tune")(tune_cmds.tune)
app.command("export")(export_cmds.export)
app.command("validate")(export_cmds.validate)
app.command("deploy")(deploy_cmds.deploy)
app.command("rollback")(deploy_cmds.rollback)
app.add_typer(deploy_cmds.models_app, name="models")
app.add_typer(experiment_cmds.app, name="experiment")
app.command("serve")(serve_cmds.serve)
app.command("simulate")(simulate_cmds.simulate)
app.command("batch-update")(jobs_cmds.batch_update)
app.command("schedule")(jobs_cmds.schedule)
app.command("monitor")(monitor_cmds.monitor)
app.command("demo")(demo_cmds.demo)


def _version(value: bool) -> None:
    if value:
        print(f"twotower {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (to stderr)."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):  # their INFO lines carry full URLs, with API keys in the query
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # exit through SystemExit so atexit handlers run: the embedded server is detached (and stopped if last)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run a command; print ``error: ...`` and exit non-zero on failure."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        # standalone mode: typer prints usage errors itself (exit 2); our errors propagate to here
        app(args=argv, prog_name="twotower")
    except KeyboardInterrupt:
        err.print("error: interrupted", highlight=False)
        sys.exit(130)
    except ImportRejected as exc:
        for line in exc.problems:
            err.print(f"  {line}", highlight=False, markup=False)
        err.print(f"error: {exc.message}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except TwoTowerError as exc:
        err.print(f"error: {exc.message}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except Exception as exc:
        row = report(exc)  # a library exception the table knows (the database went away, say)
        if row is not None and not os.environ.get("TWOTOWER_DEBUG"):
            text = " ".join(str(exc).split())
            close = ")" if row.prefix.endswith("(") else ""
            err.print(f"error: {row.prefix}{text}{close}", highlight=False, markup=False)
            sys.exit(row.exit_code)
        if os.environ.get("TWOTOWER_DEBUG"):
            raise
        err.print(
            f"error: internal error ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "set TWOTOWER_DEBUG=1 for the traceback",
            highlight=False,
            markup=False,
        )
        sys.exit(70)

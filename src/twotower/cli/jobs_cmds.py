"""``twotower batch-update``."""

from __future__ import annotations

import sys

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from twotower.cli.console import err, open_db, out
from twotower.db.priority import Priority, is_local
from twotower.errors import InputError, TwoTowerError
from twotower.registry.store import open_store
from twotower.settings import get_settings


def batch_update(
    videos: bool = typer.Option(True, "--videos/--no-videos", help="Re-embed every video."),
    users: bool = typer.Option(True, "--users/--no-users", help="Re-embed every user who has decisions."),
    model_version: str | None = typer.Option(
        None, "--model-version", help="The version to update (default: the active one).", show_default=False
    ),
    chunk_size: int = typer.Option(5000, "--chunk-size", help="Rows per chunk (the unit of checkpoints and retries)."),
    max_rate: float = typer.Option(0.0, "--max-rate", help="Throttle: at most this many rows/s per worker (0: none)."),
    retries: int = typer.Option(3, "--retries", min=1, max=100, help="Attempts per chunk before it is marked failed."),
    shadow: bool | None = typer.Option(
        None,
        "--shadow/--in-place",
        help="Rebuild the generation in a shadow table and switch it in, or rewrite "
        "changed rows in place (default: a shadow generation when a sample says most vectors change).",
        show_default=False,
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change nothing."),
    nice: str = typer.Option(
        "idle",
        "--nice",
        help="CPU priority of this worker and, when the database runs on this machine, of its database processes: "
        "a nice value 0-19 (0: unchanged), or 'idle' (Linux: only CPU time nothing else wants). On a machine shared "
        "with the API, requests come first.",
    ),
) -> None:
    """(Re)embed videos and users for a model version in checkpointed chunks. Run it on several machines at once
    to share the work; a killed run started again resumes where it stopped."""

    try:
        priority = Priority.parse(nice)
    except ValueError:
        raise typer.BadParameter(f"expected 'idle' or a nice value 0-19, got {nice!r}", param_hint="--nice") from None
    priority.apply()  # this worker, first: the threads that numpy and ONNX Runtime start below inherit it
    from twotower.jobs import BatchOptions, plan_batch, run_batch  # lazy: numpy's threads get the priority above

    settings = get_settings()
    with open_db() as db:
        db.lower_priority(priority)  # and its database sessions, when the database runs here
        with db.direct() as conn:  # a gentle job keeps a core free for the API of a machine it shares
            gentle = priority.lowered and is_local(conn)
        options = BatchOptions(
            version=model_version, videos=videos, users=users, chunk_size=chunk_size, max_rate=max_rate,
            retries=retries, cache_dir=settings.model_cache_dir, shadow=shadow, gentle=gentle,
        )  # fmt: skip
        plan = plan_batch(db, options, open_store(settings) if dry_run else None)
        chunks = ", ".join(f"{n:,} {target} chunk(s)" for target, n in plan.chunks.items())
        resume = f"; resumes job {plan.job_id} ({plan.done_chunks:,} chunk(s) done)" if plan.job_id else ""
        out.print(f"plan: version {plan.version}: {plan.videos:,} videos, {plan.users:,} users in {chunks}{resume}")
        if dry_run:
            for target, (how, why) in plan.paths.items():
                written = "a shadow generation, switched in at the end" if how == "shadow" else "changed rows in place"
                out.print(f"{target}: {written} ({why})")
            out.print("dry run: nothing was changed")
            return
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=out,
            transient=True,
        )  # fmt: skip
        task = progress.add_task("embedding", total=sum(plan.chunks.values()), completed=plan.done_chunks)

        def advance(done: int, total: int, rows: int) -> None:
            progress.update(task, completed=done, total=total)

        with progress:
            result = run_batch(db, open_store(settings), options, on_chunk=advance)
    rate = sum(result.rows.values()) / result.seconds if result.seconds else 0.0
    out.print(
        f"job {result.job_id} ({result.status}): this worker embedded {result.rows['videos']:,} videos and "
        f"{result.rows['users']:,} users in {result.chunks_done:,} chunk(s), {result.seconds:.1f}s ({rate:,.0f} rows/s)"
    )
    if result.failed_chunks or result.status == "failed":
        raise TwoTowerError(f"job {result.job_id}: {result.failed_chunks} chunk(s) failed after all retries")


def schedule(
    once: str | None = typer.Option(
        None, "--once", help="Run this job now and exit with its exit code (for a plain crontab): sync, "
        "batch-update, retrain or monitor.", show_default=False,
    ),
    max_runs: int | None = typer.Option(None, "--max-runs", min=1, help="Stop after this many runs.",
                                        show_default=False),
) -> None:  # fmt: skip
    """Run the catalog sync (with DMM credentials set), the nightly batch update, the weekly retrain and the daily
    quality check at the times of TWOTOWER_SCHEDULE_SYNC, _BATCH_UPDATE, _RETRAIN and _MONITOR (cron, UTC). Every
    run logs one JSON line on stdout; a quality alert makes the monitor run fail."""
    from twotower.jobs.schedule import run_job, run_schedule, scheduled_jobs  # lazy: numpy, 0.4 s of CLI start

    jobs = scheduled_jobs(get_settings())
    if once is not None:
        job = next((j for j in jobs if j.name == once), None)
        if job is None:
            names = ", ".join(j.name for j in jobs) or "none"
            raise InputError(f"--once {once!r}: not a scheduled job (scheduled: {names})")
        raise typer.Exit(run_job(job, sys.stdout))
    err.print(", ".join(f"{j.name} at '{j.cron}'" for j in jobs) or "nothing scheduled", highlight=False)
    status = run_schedule(jobs, sys.stdout, max_runs=max_runs)
    if status:
        raise typer.Exit(status)

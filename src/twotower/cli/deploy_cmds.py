"""``twotower deploy``, ``twotower rollback`` and ``twotower models list``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from twotower.cli.console import err, open_db, out
from twotower.cli.train_cmds import BATCH_SIZE_HELP, explicit_options, load_config, parse_batch_size
from twotower.errors import InputError
from twotower.registry.store import open_store
from twotower.registry.versions import list_versions
from twotower.registry.versions import rollback as run_rollback
from twotower.settings import get_settings

models_app = typer.Typer(help="Model versions: what is registered, what is active.", no_args_is_help=True)


def deploy(
    ctx: typer.Context,
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Deploy this trained model instead of training a new one.", show_default=False
    ),
    from_store: str | None = typer.Option(
        None,
        "--from-store",
        help="Re-activate a version whose generation was pruned: rebuild it from its stored "
        "artifacts (no training, no gate).",
        show_default=False,
    ),
    version: str | None = typer.Option(
        None, "--version", help="Version name (default: a timestamp).", show_default=False
    ),
    embedding_dim: int = typer.Option(64, "--embedding-dim", help="Embedding dimension (32-768)."),
    epochs: int = typer.Option(20, "--epochs", help="Maximum training epochs (early stopping)."),
    batch_size: str = typer.Option("512", "--batch-size", help=BATCH_SIZE_HELP),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    output_dir: Path = typer.Option(Path("models"), "--output-dir", help="Where the trained model is written."),
    monitor: bool = typer.Option(
        True,
        "--monitor/--no-monitor",
        help="Check the new embeddings (as `twotower monitor`) before promoting them; any alert stops the deploy.",
    ),
    gate: bool = typer.Option(
        True,
        "--gate/--no-gate",
        help="Refuse a model that does not beat the linear model "
        "or regresses vs the active one (--no-gate: emergencies only).",
    ),
    tolerance: float | None = typer.Option(
        None,
        "--tolerance",
        help="Accepted relative Recall@20 drop vs the active version (default: TWOTOWER_DEPLOY_TOLERANCE, 0.02)",
        show_default=False,
    ),
    keep: int | None = typer.Option(
        None,
        "--keep",
        min=1,
        help="Old generations kept for instant rollback (default: TWOTOWER_KEEP_GENERATIONS, 2)",
        show_default=False,
    ),
    wait: bool = typer.Option(False, "--wait", help="If another deploy is running, wait for it instead of exiting."),
    lock_timeout: float = typer.Option(
        0.0, "--lock-timeout", min=0, help="With --wait: give up after this many seconds (0: no limit)."
    ),
    candidate: bool = typer.Option(
        False,
        "--candidate",
        help="Build and check the version but do not promote it: a candidate for `twotower experiment start`.",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Training settings written by `twotower tune` (flags given here win).",
        show_default=False,
    ),
) -> None:
    """Train, export, validate, gate, upload, build the new embedding generation beside the serving one, and
    promote it atomically (servers are notified and hot-swap). A failure leaves the active version serving."""
    from twotower.train import allocator  # lazy: torch, 2.5 s of CLI start

    allocator.reuse_freed_memory()  # this process trains: a step's tensors reuse the last step's pages
    from twotower.pipeline.deploy import STAGE_TEXT, DeployOptions  # lazy: torch, 2.5 s of CLI start
    from twotower.pipeline.deploy import deploy as run_deploy  # lazy: torch, 2.5 s of CLI start
    from twotower.train.config_file import apply_config  # lazy: torch, 2.5 s of CLI start
    from twotower.train.run import TrainOptions  # lazy: torch, 2.5 s of CLI start

    if tolerance is not None and not 0 <= tolerance <= 1:
        raise InputError(f"--tolerance must be between 0 and 1, got {tolerance:g}")
    settings = get_settings()
    train_options = TrainOptions(
        embedding_dim=embedding_dim,
        epochs=epochs,
        batch_size=parse_batch_size(batch_size),
        seed=seed,
        device=device,
        output_dir=output_dir,
        version=version,
    )
    if model_dir is not None and from_store is not None:
        raise InputError("give --model-dir or --from-store, not both")
    if config is not None:
        if model_dir is not None or from_store is not None:
            raise InputError("--config sets how a model is trained: it cannot go with --model-dir or --from-store")
        apply_config(train_options, load_config(config), explicit_options(ctx))
    if model_dir is None and from_store is None:
        train_options.validate()
    options = DeployOptions.from_settings(
        settings, train=train_options, model_dir=model_dir, from_store=from_store, gate=gate, tolerance=tolerance,
        keep_generations=keep, wait=wait, lock_timeout=lock_timeout, monitor=monitor, candidate=candidate or None,
    )  # fmt: skip
    store = open_store(settings)
    with open_db() as db, out.status("deploying ...") as status:

        def on_stage(stage: str) -> None:
            out.print(f"[bold]{stage:<9}[/] {STAGE_TEXT[stage]}")
            status.update(STAGE_TEXT[stage] + " ...")

        result = run_deploy(db, store, options, on_stage=on_stage, on_progress=lambda m: status.update(m + " ..."))
    for version_name in result.cleaned:
        err.print(f"note: {version_name} was left half-built by an interrupted deploy; marked failed and removed")
    if result.already_active:  # this deploy ran before and was stopped after its promote
        out.print(f"{result.version} is already active, with the same files as registered: nothing to redo "
                  "but the prune")  # fmt: skip
        out.print(f"pruned generations: {', '.join(result.pruned)}" if result.pruned else "nothing left to prune")
        return
    if result.restored:
        out.print(f"{result.version}: rebuilt from {result.restored}")
    if result.gate is not None:
        g = result.gate
        active = f", active {g.active_version} {g.active:.4f}" if g.active is not None else ""
        out.print(f"gate: Recall@20 {g.model:.4f} vs linear {g.linear:.4f}{active} (tolerance {g.tolerance:.0%})")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    out.print(f"generation: {result.generation.videos:,} videos, {result.generation.users:,} users ({timings})")
    if result.pruned:
        out.print(f"pruned generations: {', '.join(result.pruned)}")
    if candidate:
        out.print(f"[bold green]candidate:[/] {result.version} (not serving); compare it with the active version on "
                  f"real users: `twotower experiment start {result.version} --share 0.1`")  # fmt: skip
        return
    was = f" (was {result.previous})" if result.previous else ""
    out.print(f"[bold green]active:[/] {result.version}{was}; undo with `twotower rollback`")


def rollback(
    version: str | None = typer.Argument(
        None, help="The version to activate (default: the most recently retired one).", show_default=False
    ),
) -> None:
    """Switch back to an earlier version instantly: its embedding generation is still there, nothing is recomputed."""
    with open_db() as db, db.direct() as conn:
        started = time.perf_counter()
        active, previous = run_rollback(conn, version)
        took = (time.perf_counter() - started) * 1000
    out.print(f"active: {active} (was {previous or 'none'}), switched in {took:.0f} ms; servers notified")


@models_app.command("list")
def list_models(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Every registered version: status, metrics, when it was created and activated, its generation."""
    with open_db() as db, db.connection() as conn:
        versions = list_versions(conn)
    if json_out:
        rows = [
            {
                "version": v.version,
                "status": v.status,
                "active": v.status == "active",
                "embedding_dim": v.embedding_dim,
                "recall_at_20": _recall(v.metrics),
                "created_at": v.created_at.isoformat(),
                "activated_at": v.activated_at.isoformat() if v.activated_at else None,
                "videos_embedded": v.videos_embedded,
                "users_embedded": v.users_embedded,
                "artifact_uri": v.artifact_uri,
                "error": v.error,
            }
            for v in versions
        ]
        print(json.dumps(rows, indent=2))
        return
    if not versions:
        out.print("no model versions yet: run `twotower deploy`")
        return
    table = Table(title="model versions")
    for col in ("version", "status", "dim", "Recall@20", "created", "activated", "generation", "note"):
        table.add_column(col, justify="right" if col in ("dim", "Recall@20") else "left")
    for v in versions:
        recall = _recall(v.metrics)
        generation = f"{v.videos_embedded:,} videos" if v.has_generation and v.videos_embedded is not None else "-"
        table.add_row(
            v.version,
            f"[bold green]{v.status}[/]" if v.status == "active" else v.status,
            str(v.embedding_dim),
            "-" if recall is None else f"{recall:.4f}",
            f"{v.created_at:%Y-%m-%d %H:%M}",
            f"{v.activated_at:%Y-%m-%d %H:%M}" if v.activated_at else "-",
            generation,
            v.error or "",
        )
    out.print(table)


def _recall(metrics: dict[str, object]) -> float | None:
    gate = metrics.get("gate")
    if isinstance(gate, dict) and isinstance(gate.get("model"), float):
        return float(gate["model"])
    best = metrics.get("best_valid_recall_at_20")
    return float(best) if isinstance(best, (int, float)) else None

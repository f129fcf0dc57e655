"""``twotower train`` and ``twotower evaluate``."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from twotower.cli.console import err, open_db, out
from twotower.errors import InputError
from twotower.registry.store import valid_version
from twotower.settings import get_settings

if TYPE_CHECKING:
    from twotower.train.prepare import Prepared
    from twotower.train.trainer import EpochStats


def db_url_settings(db_url: str | None) -> None:
    if db_url is not None:
        os.environ["DATABASE_URL"] = db_url
        get_settings.cache_clear()


def explicit_options(ctx: typer.Context) -> set[str]:
    """The parameters given on the command line (they win over a --config file)."""
    given = ("COMMANDLINE", "ENVIRONMENT")
    # by name: typer may bundle its own click, whose enum is not click's
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, source in sources.items() if source is not None and source.name in given}


CONFIG_MAX_BYTES = 1 << 20
PROGRESS_LINE_SECONDS = 60.0  # without a terminal, a progress line at most this often
CONFIG_MAX_DEPTH = 32  # a settings file is 3 deep ({"tower": {"n_categorical": [...]}}); json recurses per level
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip


def load_config(path: Path) -> dict[str, Any]:
    """``read_config`` of a ``--config`` file, once it is known to be safe to read: a regular file (a FIFO would
    wait for a writer for ever, a device never end), at most 1 MiB, its JSON nested at most 32 deep (deeper
    would overflow the parser's recursion). Anything else is one line, exit 65, before anything is written."""
    from twotower.train.config_file import read_config  # lazy: torch, 2.5 s of CLI start

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    except OSError as exc:
        raise InputError(f"--config {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        mode, size = info.st_mode, info.st_size
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise InputError(f"--config {path}: {kind}, not a settings file (the JSON file `twotower tune` writes)")
        if size > CONFIG_MAX_BYTES:
            raise InputError(f"--config {path}: {size:,} bytes, larger than 1 MiB: not a settings file")
        with os.fdopen(os.dup(fd), "rb") as file:
            text = file.read(CONFIG_MAX_BYTES + 1).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", _STRING.sub("", text)):
        depth = depth + 1 if bracket in "[{" else depth - 1
        deepest = max(deepest, depth)
        if deepest > CONFIG_MAX_DEPTH:
            raise InputError(f"--config {path}: JSON nested deeper than {CONFIG_MAX_DEPTH} levels: not a settings file")
    try:
        return read_config(path)
    except RecursionError:  # the check above should make this unreachable
        raise InputError(f"--config {path}: JSON nested too deeply: not a settings file") from None


# --batch-size of `train` and `deploy`: one declaration, one parser
BATCH_SIZE_HELP = ("User states per step and process, each trained on its next likes (3 by default: 1,536 positives a "
                   "step at 512); auto: by device (GPU 8192, CPU 512).")  # fmt: skip


def parse_batch_size(value: str) -> int | str:
    """``auto`` or a whole number (its range is checked with the other training options)."""
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--batch-size must be 'auto' or an integer, got {value!r}") from None


def train(
    ctx: typer.Context,
    db_url: str | None = typer.Option(
        None, "--db-url", help="Postgres URL (default: DATABASE_URL, or the embedded database).", show_default=False
    ),
    embedding_dim: int = typer.Option(64, "--embedding-dim", help="Embedding dimension (32-768)."),
    batch_size: str = typer.Option("512", "--batch-size", help=BATCH_SIZE_HELP),
    epochs: int = typer.Option(20, "--epochs", help="Maximum epochs (early stopping on validation Recall@20)."),
    learning_rate: float = typer.Option(2e-3, "--learning-rate", help="Adam learning rate."),
    patience: int = typer.Option(5, "--patience", min=1, help="Epochs without improvement before stopping."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed: the same seed gives the same model."),
    output_dir: Path = typer.Option(Path("models"), "--output-dir", help="Where models are written."),
    version: str | None = typer.Option(None, "--version", help="Model version name (default: a timestamp)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU when available), cpu, cuda, cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, or bf16 (autocast; for GPUs)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an interrupted identical run."),
    update_db: bool = typer.Option(False, "--update-db", help="Write video and user embeddings into pgvector."),
    refit: bool = typer.Option(
        True, "--refit/--no-refit", help="After early stopping, retrain on the whole training period."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Settings written by `twotower tune` (flags given here win).", show_default=False
    ),
) -> None:
    """Train the two-tower model on the swipes in the database (temporal split, early stopping)."""
    from twotower.train import allocator  # lazy: torch, 2.5 s of CLI start

    allocator.reuse_freed_memory()  # this process trains: a step's tensors reuse the last step's pages
    from twotower.train.config_file import apply_config  # lazy: torch, 2.5 s of CLI start
    from twotower.train.publish import publish_embeddings  # lazy: torch, 2.5 s of CLI start
    from twotower.train.run import TrainOptions  # lazy: torch, 2.5 s of CLI start
    from twotower.train.run import train as run_train  # lazy: torch, 2.5 s of CLI start

    if version is not None and not valid_version(version):
        raise InputError(f"--version {version!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    db_url_settings(db_url)
    batch = parse_batch_size(batch_size)
    options = TrainOptions(
        embedding_dim=embedding_dim, batch_size=batch, precision=precision, epochs=epochs, learning_rate=learning_rate,
        seed=seed, patience=patience, output_dir=output_dir, version=version, resume=resume, device=device,
        update_db=update_db, refit=refit,
    )  # fmt: skip
    if config is not None:
        apply_config(options, load_config(config), explicit_options(ctx))
    options.validate()
    # under torchrun only rank 0 reports and publishes; the other ranks train silently
    main_rank = os.environ.get("RANK", "0") == "0"
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(), console=out, transient=True, disable=not main_rank,
    )  # fmt: skip
    task = progress.add_task("preparing", total=None, loss="-")
    size = {"n": 0}

    def on_start(prepared: Prepared, n_examples: int, resumed: int) -> None:
        if not main_rank:
            return
        summary = prepared.summary()
        out.print(
            f"data: {summary['videos']:,} videos, {summary['users']:,} users, {summary['decisions']:,} decisions; "
            f"train {summary['train_likes']:,} likes, validation {summary['validation_likes']:,}, "
            f"test {summary['test_likes']:,}"
        )
        if resumed:
            out.print(f"resuming from the checkpoint of epoch {resumed}")
        size["n"] = n_examples
        progress.reset(task, total=n_examples, description=f"epoch {resumed + 1}", loss="-")
        restart_lines()

    def on_refit(n_examples: int, epochs: int) -> None:
        if not main_rank:
            return
        out.print(f"refit: {epochs} epoch(s) on the whole training period (validation likes included)")
        size["n"] = n_examples
        progress.reset(task, total=n_examples, description="refit epoch 1", loss="-")
        restart_lines()

    # no terminal (a log file, a scheduler): no bar, a line a minute instead (an epoch at 1M videos takes 30 min)
    log_lines = {"last": time.monotonic(), "done": 0, "since": time.monotonic()}

    def on_batch(n: int, loss: float) -> None:
        if not main_rank:
            return
        progress.update(task, advance=n, loss=f"{loss:.3f}")
        if out.is_terminal:
            return
        log_lines["done"] += n
        now = time.monotonic()
        if now - log_lines["last"] >= PROGRESS_LINE_SECONDS:
            done, rate = log_lines["done"], log_lines["done"] / max(now - log_lines["since"], 1e-9)
            left = (size["n"] - done) / rate if rate > 0 else float("nan")
            out.print(f"{progress.tasks[0].description}: {done:,}/{size['n']:,} positives, loss {loss:.3f}, "
                      f"{rate:,.0f} positives/s, about {left / 60:.0f} min left")  # fmt: skip
            log_lines["last"] = now

    def restart_lines() -> None:
        log_lines.update(last=time.monotonic(), done=0, since=time.monotonic())

    def on_epoch(stats: EpochStats, better: bool) -> None:
        if not main_rank:
            return
        valid = "" if math.isnan(stats.valid_recall_at_20) else f"  valid Recall@20 {stats.valid_recall_at_20:.4f}"
        mark = " *" if better and valid else "  "
        out.print(
            f"epoch {stats.epoch:>3}  loss {stats.loss:.4f}{valid}{mark}  {stats.examples_per_second:,.0f} positives/s"
        )
        progress.reset(task, total=size["n"], description=f"epoch {stats.epoch + 1}", loss="-")
        restart_lines()

    with open_db() as db:
        with progress:
            result = run_train(db, options, on_epoch=on_epoch, on_batch=on_batch, on_start=on_start, on_refit=on_refit)
        if not result.is_main:
            return
        out.print(f"best epoch {result.best_epoch}; model {result.version} written to {result.directory}")
        if update_db:
            with out.status("writing embeddings ..."):
                n_videos, n_users = publish_embeddings(db, result)
            out.print(f"embeddings for {result.version}: {n_videos:,} videos, {n_users:,} users written to pgvector")
    out.print(f"next: twotower evaluate --model-dir {result.directory}")


def evaluate(
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        help="A model written by `twotower train` (default: the newest under --models).",
        show_default=False,
    ),
    models: Path = typer.Option(Path("models"), "--models", help="Where to look for the newest model."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also evaluate popularity, linear, EASE."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here.", show_default=False),
    db_url: str | None = typer.Option(
        None, "--db-url", help="Postgres URL (default: DATABASE_URL or embedded).", show_default=False
    ),
) -> None:
    """Recall/Precision/NDCG/HitRate@K, MRR, AUC and coverage, per slice, for the model and the baselines."""
    from twotower.evaluation import render_slices, render_table  # lazy: numpy+scipy, 0.6 s of CLI start
    from twotower.train.evaluate import evaluate_model, latest_model_dir  # lazy: torch, 2.5 s of CLI start

    db_url_settings(db_url)
    if model_dir is None:
        model_dir = latest_model_dir(models)
    elif not (model_dir / "training.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no training.json); see `twotower train`")
    with open_db() as db, out.status("evaluating ...") as status:
        report = evaluate_model(db, model_dir, baselines=baselines, progress=status.update)
    for warning in report.warnings:
        err.print(f"warning: {warning}")
    d = report.data
    out.print(f"model {model_dir.name}; temporal split: {d['test_users']:,} test users, {d['test_likes']:,} test likes")
    out.print(render_table(report.results))
    out.print(render_slices(report.results))
    target = json_out or model_dir / "evaluation.json"
    try:
        target.write_text(json.dumps(report.json, indent=2))
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from None
    out.print(f"report written to {target}")

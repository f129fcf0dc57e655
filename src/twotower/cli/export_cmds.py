"""``twotower export`` and ``twotower validate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from twotower.cli.console import open_db, out
from twotower.errors import InputError

_MODEL_DIR = typer.Argument(..., help="A model directory written by `twotower train`.", show_default=False)


def _check_dir(model_dir: Path) -> None:
    if not (model_dir / "tower_config.json").is_file():
        raise InputError(f"{model_dir}: not a model directory (no tower_config.json); see `twotower train`")


def export(model_dir: Path = _MODEL_DIR) -> None:
    """Export both towers to ONNX (dynamic batch and history length) and write manifest.json with checksums."""
    from twotower.export import export_model  # lazy: torch, 2.5 s of CLI start

    _check_dir(model_dir)
    with out.status("exporting ..."):
        manifest = export_model(model_dir)
    for name, digest in manifest["checksums"].items():
        out.print(f"{name:<20} sha256 {digest[:16]}…")
    out.print(f"model {manifest['version']} exported to {model_dir} (opset {manifest['opset']})")


def validate(
    model_dir: Path = _MODEL_DIR,
    js: str = typer.Option(
        "auto", "--js",
        help="The onnxruntime-node check: auto (run it when node and TWOTOWER_NODE_MODULES are there), "
        "require (fail when it cannot run), skip.",
    ),
) -> None:  # fmt: skip
    """Compare PyTorch and ONNX Runtime on rows from the database and edge cases; non-zero exit if they differ."""
    from twotower.export.validate import MAX_ABS_DIFF, MIN_COSINE, validate_model  # lazy: torch, 2.5 s of CLI start

    if js not in ("auto", "require", "skip"):
        raise InputError(f"--js {js!r}: expected auto, require or skip")
    _check_dir(model_dir)
    with open_db() as db, out.status("validating ..."):
        report = validate_model(db, model_dir, js=js)  # type: ignore[arg-type]
    table = Table(title=f"PyTorch vs ONNX Runtime ({model_dir.name})")
    for col in ("check", "rows", "max abs diff", "min cosine", ""):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in report.checks:
        table.add_row(c.name, f"{c.rows:,}", f"{c.max_abs_diff:.2e}", f"{c.min_cosine:.7f}", "ok" if c.ok else "FAIL")
    out.print(table)
    out.print(
        f"top-20 lists identical for {report.top20_identical:.1%} of {report.users:,} users "
        f"({report.top20_exact:.1%} item for item, ties included); "
        f"tolerance: max abs diff <= {MAX_ABS_DIFF:g}, cosine >= {MIN_COSINE}"
    )
    if report.js_runtime:
        out.print(f"JavaScript check: {report.js_runtime}")
    elif report.js_skipped:
        out.print(f"JavaScript check skipped: {report.js_skipped}")
    if not report.ok:
        raise InputError(f"{model_dir}: the ONNX towers do not match PyTorch within tolerance")
    out.print("valid")

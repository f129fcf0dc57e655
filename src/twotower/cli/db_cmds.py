"""``twotower db``: schema migrations."""

from __future__ import annotations

import typer
from rich.table import Table

from twotower.cli.console import open_db, out
from twotower.db import redact, status, upgrade

app = typer.Typer(help="Database schema: apply and inspect migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_cmd() -> None:
    """Apply pending migrations (and row-level security where Supabase's auth.uid() exists)."""
    with open_db(migrate=False) as db, db.direct() as conn:
        result = upgrade(conn)
    where = "embedded database" if db.embedded else redact(db.conninfo)
    if not result.changed:
        out.print(f"{where}: schema is up to date (version {result.version}); nothing changed")
        return
    for mig in result.applied:
        out.print(f"applied {mig.version:04d}_{mig.name}")
    for change in result.rls_changes:
        out.print(change)
    out.print(f"{where}: schema is at version {result.version}")


@app.command("status")
def status_cmd() -> None:
    """Show applied and pending migrations."""
    with open_db(migrate=False) as db, db.direct() as conn:
        st = status(conn)
    table = Table(title=f"migrations ({'embedded database' if db.embedded else redact(db.conninfo)})")
    table.add_column("version", justify="right")
    table.add_column("name")
    table.add_column("applied at")
    for version, name, applied_at in st.applied:
        table.add_row(f"{version:04d}", name, applied_at.isoformat(timespec="seconds"))
    for mig in st.pending:
        table.add_row(f"{mig.version:04d}", mig.name, "[yellow]pending[/yellow]")
    out.print(table)
    out.print(f"current version {st.current}, {len(st.pending)} pending")

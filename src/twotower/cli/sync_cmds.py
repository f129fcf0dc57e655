"""``twotower sync``: the catalog from the content provider's API, and a local fake of that API."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from twotower.cli.console import err, open_db, out
from twotower.errors import InputError, TwoTowerError
from twotower.registry.store import open_store
from twotower.settings import get_settings

app = typer.Typer(help="Bring the catalog up to date from the content provider's API.", no_args_is_help=True)

_WHEN = "A date (2026-01-01) or time (2026-01-01T12:00:00); without a zone, Japan time like the API."


def _when(value: str | None, flag: str) -> datetime | None:
    from twotower.catalog.dmm import JST  # lazy: numpy+httpx, 0.4 s of CLI start

    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(f"{flag} {value[:40]!r}: expected a date like 2026-01-01 or 2026-01-01T12:00:00") from None
    if flag == "--until" and len(value.strip()) == 10:  # a date alone: up to the end of that day
        ts += timedelta(days=1, seconds=-1)
    return ts.replace(tzinfo=JST) if ts.tzinfo is None else ts


@app.command("dmm")
def dmm(
    since: str | None = typer.Option(
        None, "--since", help=f"Start of the range. Default: the stored watermark (where the last sync ended). {_WHEN}",
        show_default=False,
    ),
    until: str | None = typer.Option(None, "--until", help=f"End of the range. Default: now. {_WHEN}",
                                     show_default=False),
    rate_limit: float | None = typer.Option(
        None, "--rate-limit", min=0.01, max=100, help="Requests/s at most (default TWOTOWER_DMM_RATE_LIMIT).",
        show_default=False,
    ),
    embed: bool = typer.Option(True, "--embed/--no-embed", help="Embed new and changed videos with the active "
                               "model version."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:  # fmt: skip
    """Sync videos, tags and performers from the DMM Affiliate API v3 (ItemList), then embed what is new.

    Credentials come from TWOTOWER_DMM_API_ID and TWOTOWER_DMM_AFFILIATE_ID; site, service and floor from
    TWOTOWER_DMM_SITE/SERVICE/FLOOR. A run that is killed or fails can be started again: it resumes where it
    stopped, with nothing stored twice and nothing skipped."""
    from twotower.catalog import DmmClient, DmmConfig, SyncOptions, sync_dmm  # lazy: numpy+httpx, 0.4 s of CLI start
    from twotower.catalog.dmm import api_time  # lazy: numpy+httpx, 0.4 s of CLI start
    from twotower.catalog.sync import SyncCursor, SyncSummary  # lazy: numpy+httpx, 0.4 s of CLI start

    settings = get_settings()
    config = DmmConfig.from_settings(settings, rate_limit=rate_limit)
    options = SyncOptions(
        since=_when(since, "--since"), until=_when(until, "--until"), embed=embed,
        lookback=timedelta(hours=settings.dmm_lookback_hours),
        cache_dir=settings.model_cache_dir,
    )  # fmt: skip
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                        transient=True, disable=as_json)  # fmt: skip
    task = progress.add_task("syncing")

    def on_page(summary: SyncSummary, cursor: SyncCursor) -> None:
        at = api_time(cursor.window[0]) if cursor.window else api_time(cursor.done_until)
        progress.update(task, description=f"{summary.pages:,} pages, {summary.items:,} items (at {at} JST)")

    with open_db() as db, DmmClient(config) as client, progress:
        summary = sync_dmm(db, client, open_store(settings) if embed else None, options, on_page=on_page)
    if as_json:
        print(json.dumps(summary.as_json(), ensure_ascii=False))
        _embed_failed(summary.embed_error)
        return
    how = "resumed the interrupted sync of" if summary.resumed else "synced"
    out.print(f"{how} {config.scope}: {api_time(summary.since)} .. {api_time(summary.until)} JST")
    out.print(
        f"  {summary.requests:,} requests ({sum(summary.failures.values()):,} failed and retried: "
        f"{', '.join(f'{k} x{v}' for k, v in sorted(summary.failures.items())) or 'none'}), {summary.pages:,} pages "
        f"in {summary.windows:,} date window(s), {summary.seconds:.1f}s"
    )
    out.print(
        f"  {summary.items:,} items: {summary.inserted:,} new, {summary.updated:,} changed, "
        f"{summary.unchanged:,} unchanged, {summary.skipped:,} skipped"
    )
    for problem in summary.problems:
        out.print(f"    {problem}")
    if summary.version:
        out.print(f"  {summary.embedded:,} videos embedded for the active version {summary.version}")
    else:
        out.print("  no active model version: videos are embedded when one is deployed")
    mark = api_time(summary.watermark_after) + " JST" if summary.watermark_after else "unchanged"
    out.print(f"  watermark: {mark}")
    _embed_failed(summary.embed_error)


def _embed_failed(error: str | None) -> None:
    if error:
        raise TwoTowerError(f"the catalog is synced, but embedding new videos failed: {error} (the next sync or "
                            "`twotower batch-update --no-users` catches up)")  # fmt: skip


@app.command("fake-dmm")
def fake_dmm(
    items: int = typer.Option(2000, "--items", min=0, max=1_000_000, help="Items to serve."),
    since: str = typer.Option("2025-01-01", "--since", help="Date of the oldest item (JST)."),
    until: str = typer.Option("2026-01-01", "--until", help="Date of the newest item (JST)."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free one)."),
    failure_rate: float = typer.Option(0.0, "--failure-rate", min=0.0, max=1.0,
                                       help="Share of requests that fail (429, 5xx, slow, malformed)."),
    rate_limit: float | None = typer.Option(None, "--rate-limit", min=0.01, help="Answer 429 above this many "
                                            "requests/s.", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the items and of the failures."),
) -> None:  # fmt: skip
    """Serve a local fake of the DMM ItemList API (for demos and tests) until interrupted."""
    from twotower.catalog.fake import FakeCatalog, FakeDmmServer, Faults, make_items  # lazy: numpy, 0.4 s of CLI start

    start, end = _when(since, "--since"), _when(until, "--until")
    assert start is not None and end is not None
    if start > end:
        raise InputError("--since is after --until")
    catalog = FakeCatalog(make_items(items, start, end, seed=seed))
    server = FakeDmmServer(catalog, faults=Faults(rate=failure_rate, seed=seed), rate_limit=rate_limit, port=port)
    err.print(f"fake DMM API with {len(catalog):,} items at {server.url}")
    err.print(f"  export TWOTOWER_DMM_API_URL={server.url} TWOTOWER_DMM_API_ID={server.state.api_id} "
              f"TWOTOWER_DMM_AFFILIATE_ID={server.state.affiliate_id}")  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()

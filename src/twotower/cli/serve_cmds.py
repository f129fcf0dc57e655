"""``twotower serve``."""

from __future__ import annotations

import typer

from twotower.cli.console import out
from twotower.db import Database
from twotower.errors import ConfigError
from twotower.settings import get_settings


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes (each loads the model)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level: info, warning, error."),
) -> None:
    """Serve the recommendation API (FastAPI on uvicorn; hot-reloads the model on every deploy), the operator
    console at /console (service role) and, with TWOTOWER_SERVE_TRY_PAGE=true, the swipe page at /try."""
    import uvicorn  # lazy: 0.2 s of CLI start

    settings = get_settings()
    if settings.jwt_secret is None and settings.jwt_jwks_url is None:
        raise ConfigError("set TWOTOWER_JWT_SECRET (HS256) and/or TWOTOWER_JWT_JWKS_URL (RS256/ES256) to serve")
    if settings.serve_try_page and settings.jwt_secret is None:
        raise ConfigError("the try page (TWOTOWER_SERVE_TRY_PAGE) signs demo tokens with TWOTOWER_JWT_SECRET: set it")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise ConfigError(f"--log-level {log_level!r}: use critical, error, warning, info or debug")
    urls = [settings.database_url.get_secret_value()] if settings.database_url is not None else []
    for url in urls + settings.read_urls:  # a malformed URL is one line here, not a traceback in every worker
        Database.parse_url(url)
    pages = "/console and /try" if settings.serve_try_page else "/console"
    replicas = f", reads from {len(settings.read_urls)} replica(s)" if settings.read_urls else ""
    out.print(f"serving on http://{host}:{port} ({workers} worker(s){replicas}); docs at /docs, {pages}")
    uvicorn.run("twotower.serve.factory:app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False)  # fmt: skip

"""The FastAPI application: ``create_app(settings)`` builds it and includes the routers of ``serve/routes``.
Serving never imports torch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from twotower import __version__
from twotower.errors import ConfigError
from twotower.serve.console import ServingFigures
from twotower.serve.http import BodyLimit, install_error_handlers, observe
from twotower.serve.routes import ROUTERS
from twotower.serve.service import Service, serving_session
from twotower.settings import Settings

__all__ = ["create_app", "serving_session"]


def create_app(settings: Settings) -> FastAPI:
    if settings.serve_try_page and settings.jwt_secret is None:
        raise ConfigError("the try page (TWOTOWER_SERVE_TRY_PAGE) signs demo tokens with TWOTOWER_JWT_SECRET: set it")
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="twotower",
        version=__version__,
        description="Real-time two-tower recommendations for swipe-style video apps, on PostgreSQL + pgvector.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.figures = ServingFigures(service.metrics)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type", "apikey", "x-client-info"])  # fmt: skip
    app.add_middleware(BodyLimit, limit=settings.serve_max_body_bytes)
    install_error_handlers(app)
    observe(app, service.metrics)
    for router in ROUTERS:
        app.include_router(router)
    return app

"""HTTP plumbing of the API: error bodies, body and header limits, request metrics, exception handlers."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twotower.errors import TwoTowerError, report, reported_types

__all__ = ["BodyLimit", "Measure", "Metrics", "error_response", "install_error_handlers", "observe"]

log = logging.getLogger("twotower.serve")
_MALFORMED = "the request body is not valid JSON (UTF-8, nested less deeply)"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent, and headers over
    ``header_limit`` bytes in all with 431."""

    def __init__(self, app: ASGIApp, limit: int, header_limit: int = 16 << 10) -> None:
        self.app, self.limit, self.header_limit = app, limit, header_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) for k, v in headers) > self.header_limit:
            await error_response(
                431, "headers_too_large", f"request headers are limited to {self.header_limit:,} bytes"
            )(scope, receive, send)
            return
        declared = dict(headers).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await error_response(413, "payload_too_large", f"request bodies are limited to {self.limit:,} bytes")(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await error_response(413, "payload_too_large", f"request bodies are limited to {self.limit:,} bytes")(
                scope, receive, send
            )


class _TooLarge(StarletteHTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTP exceptions met while reading the body as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request bodies are limited to {limit:,} bytes")


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    answers: Counter
    model: Gauge
    arms: Counter
    reads: Counter
    replica_lag: Gauge
    replica_usable: Gauge

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry,
            Counter("twotower_http_requests", "HTTP requests", ["route", "method", "status"], registry=registry),
            Histogram(
                "twotower_http_request_seconds",
                "Request latency",
                ["route"],
                registry=registry,
                buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            ),
            Counter("twotower_recommendations", "Recommendation answers", ["algorithm"], registry=registry),
            Gauge("twotower_model_loaded", "1 for the model version being served", ["version"], registry=registry),
            Counter("twotower_experiment_answers", "Answers inside an experiment", ["arm"], registry=registry),
            Counter(
                "twotower_reads",
                "Request-path reads by the database that ran them, and why the primary did",
                ["database", "reason"],
                registry=registry,
            ),
            Gauge(
                "twotower_replica_lag_seconds",
                "Read replica lag at the last look (-1: down)",
                ["replica"],
                registry=registry,
            ),
            Gauge("twotower_replica_usable", "1 while the read replica takes reads", ["replica"], registry=registry),
        )


def install_error_handlers(app: FastAPI) -> None:
    async def _reported(request: Request, exc: Exception) -> JSONResponse:
        """Every exception by the one table (``errors.report``); one it does not know is an internal error."""
        row = report(exc)
        if row is None:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error_response(500, "internal_error", "internal error (logged)")
        if row.public is not None:  # the exception's own message may name the server: for the logs only
            log.warning("%s on %s: %s", row.code, request.url.path, " ".join(str(exc).split())[:300])
        headers = {"Retry-After": "1"} if row.retry else None
        if row.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        message = row.public or (exc.message if isinstance(exc, TwoTowerError) else row.code)
        return error_response(row.status, row.code, message, headers)

    # the table's types by name (answered, not re-raised); anything else through the catch-all (a 500, logged)
    for kind in (*reported_types(), Exception):
        app.add_exception_handler(kind, _reported)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "malformed_json", "the request body is not valid JSON")
        parts = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):  # a body that is not UTF-8 JSON
            return error_response(400, "malformed_json", _MALFORMED)
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


def observe(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(Measure, metrics=metrics)


class Measure:
    """Request count and latency per route template (a plain ASGI middleware: no per-request task overhead)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()

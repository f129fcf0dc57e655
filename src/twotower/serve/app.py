"""The FastAPI application: ``create_app(settings)``. Serving never imports torch."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from psycopg import sql
from psycopg_pool import PoolTimeout
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twotower import __version__
from twotower.db import Database
from twotower.errors import DatabaseUnavailable, ModelUnavailable, NotFound, TwoTowerError
from twotower.features.catalog import Catalog
from twotower.registry.store import open_store
from twotower.registry.versions import list_versions
from twotower.serve import schemas as s
from twotower.serve.auth import Authenticator, Principal
from twotower.serve.recommend import (
    Algorithm,
    Filters,
    PopularityCache,
    Recommender,
    ann_query,
    fetch_rows,
    load_history,
)
from twotower.serve.runtime import LoadedModel, ModelHolder
from twotower.serve.served import ServedLog
from twotower.settings import Settings

__all__ = ["create_app", "serving_session"]

log = logging.getLogger("twotower.serve")
T = TypeVar("T")
_ERRORS = {"model": s.ErrorOut}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _ERRORS, 401: _ERRORS, 403: _ERRORS, 404: _ERRORS, 413: _ERRORS, 422: _ERRORS, 431: _ERRORS, 503: _ERRORS,
}  # fmt: skip


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
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
            await _error(431, "headers_too_large", f"request headers are limited to {self.header_limit:,} bytes")(
                scope, receive, send
            )
            return
        declared = dict(headers).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _error(413, "payload_too_large", f"request bodies are limited to {self.limit:,} bytes")(
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
            await _error(413, "payload_too_large", f"request bodies are limited to {self.limit:,} bytes")(
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
        )


class Service:
    """What the routes share: the database, the model holder, auth, the recommender."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(settings)
        self.db: Database | None = None
        self.holder: ModelHolder | None = None
        self.popularity = PopularityCache()
        self.recommender = Recommender(self.popularity)
        self.metrics = Metrics.create()
        self.served: ServedLog | None = None

    def start(self) -> None:
        settings = self.settings
        self.db = Database.open(settings, migrate=False, check=False)  # the database may be down: /readyz says so
        self.db.autocommit = True  # one statement per round trip, no COMMIT round trip
        self.db.session = serving_session(settings)
        cache = settings.model_cache_dir
        self.holder = ModelHolder(self.db, open_store(settings), cache, poll_seconds=settings.serve_model_poll_seconds,
                                  threads=settings.serve_onnx_threads, on_poll=self._poll)  # fmt: skip
        self.holder.start()
        self.served = ServedLog(self.db, sample=settings.monitor_served_sample,
                                retention_days=settings.monitor_served_retention_days)  # fmt: skip
        self.served.start()

    def _poll(self, conn: psycopg.Connection[Any]) -> None:
        """The watcher's periodic work, on its own connection: the fallbacks' data."""
        if self.popularity.stale():
            self.popularity.refresh(conn)
        tags = self.recommender.tags
        if self.model is None and tags.stale():  # the linear fallback answers users with likes
            tags.refresh(conn)

    def stop(self) -> None:
        if self.served is not None:
            self.served.stop()
        if self.holder is not None:
            self.holder.stop()
        if self.db is not None:
            self.db.close()

    @property
    def model(self) -> LoadedModel | None:
        return self.holder.current if self.holder else None

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; once more on a fresh one if the connection had died (a database
        restart leaves dead connections in the pool)."""
        assert self.db is not None
        for attempt in (1, 2):
            try:
                with self.db.connection(timeout=self.settings.serve_db_timeout) as conn:
                    return work(conn)
            except psycopg.errors.QueryCanceled:
                raise
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                self.db.pool.check()  # drop every dead idle connection before the retry
        raise AssertionError("unreachable")


def serving_session(settings: Settings) -> dict[str, str]:
    """The settings of every pooled connection of the server (the request path). Every statement it runs must stay
    linear in its input under these, generic plans included (tests/serve/test_scale.py checks them)."""
    return {
        "statement_timeout": str(settings.serve_statement_timeout_ms),
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.ef_search": str(settings.serve_ef_search),
        # the statements are the same for every request (the version is a literal): plan them once
        "plan_cache_mode": "force_generic_plan",
    }


def _principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    service: Service = request.app.state.service
    return service.auth.authenticate(authorization)


Caller = Annotated[Principal, Depends(_principal)]


def _filters(f: s.FiltersIn) -> Filters:
    return Filters(tuple(f.exclude_tags), tuple(f.include_tags), tuple(f.makers), f.max_price, f.released_after)


def create_app(settings: Settings) -> FastAPI:
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
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "OPTIONS"],
                       allow_headers=["authorization", "content-type", "apikey", "x-client-info"])  # fmt: skip
    app.add_middleware(BodyLimit, limit=settings.serve_max_body_bytes)
    _errors(app)
    _observe(app, service)

    # -- recommendations ------------------------------------------------------------------------------------
    def recommend(caller: Principal, limit: int, exclude_liked: bool, filters: Filters) -> s.RecommendationsOut:
        user = caller.require_user()
        model = service.model

        def work(conn: psycopg.Connection[Any]) -> s.RecommendationsOut:
            rec = service.recommender
            if model is not None:
                cfg = model.towers.history
                history = load_history(conn, user, cfg.max_likes, cfg.max_nopes)
                if not history.empty:
                    rows = rec.two_tower(conn, model.version, model.towers, model.items, history, user, limit,
                                         exclude_liked, filters)  # fmt: skip
                    return _answer(rows, "two_tower", model.version)
                return _answer(rec.popular(conn, user, limit, exclude_liked, filters), "popularity", model.version)
            has_likes = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM user_video_decisions WHERE user_id = %s AND decision_type = 'like')",
                (user,),
            ).fetchone()
            if has_likes and has_likes[0]:
                return _answer(rec.linear(conn, user, limit, exclude_liked, filters), "linear", None)
            return _answer(rec.popular(conn, user, limit, exclude_liked, filters), "popularity", None)

        answer = service.run(work)
        service.metrics.answers.labels(answer.algorithm).inc()
        if service.served is not None:
            service.served.record(user, [v.id for v in answer.recommendations], answer.model_version, answer.algorithm)
        return answer

    @app.post("/v1/recommendations", response_model=s.RecommendationsOut, responses=_RESPONSES,
              tags=["recommendations"])  # fmt: skip
    def recommendations(body: s.RecommendationsIn, caller: Caller) -> Response:
        """Videos for the caller, from their decisions so far: exactly ``limit`` unseen ones when that many exist."""
        answer = recommend(caller, body.limit, body.exclude_liked, _filters(body.filters))
        return Response(answer.model_dump_json(), media_type="application/json")  # built and validated once

    @app.post("/functions/v1/two_tower_recommendations", response_model=s.EdgeRecommendationsOut,
              responses=_RESPONSES, tags=["recommendations"])  # fmt: skip
    def edge_function(body: s.EdgeRecommendationsIn, caller: Caller) -> s.EdgeRecommendationsOut:
        """Drop-in for the app's ``two_tower_recommendations`` edge function: same request and response."""
        answer = recommend(caller, body.limit, body.exclude_liked, Filters())
        return s.EdgeRecommendationsOut(
            recommendations=[s.EdgeVideoOut(**v.model_dump()) for v in answer.recommendations],
            total_count=answer.total_count, algorithm=answer.algorithm,
        )  # fmt: skip

    @app.get("/v1/videos/{video_id}/similar", response_model=s.RecommendationsOut, responses=_RESPONSES,
             tags=["recommendations"])  # fmt: skip
    def similar(
        video_id: Annotated[uuid.UUID, Path()], caller: Caller,
        limit: Annotated[int, Query(ge=1, le=s.MAX_LIMIT), BeforeValidator(s.whole_number)] = 20,
    ) -> s.RecommendationsOut:  # fmt: skip
        """Videos closest to this one in the active model's embedding space."""
        if not caller.is_service:
            caller.require_user()
        model = _require_model(service)
        where = sql.SQL("v.is_active AND e.video_id <> %(video)s")

        def work(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            known = conn.execute(
                "SELECT 1 FROM video_embeddings WHERE model_version = %s AND video_id = %s", (model.version, video_id)
            ).fetchone()
            if known is None:
                raise NotFound(f"video {video_id} has no embedding in model {model.version}")
            vector = sql.SQL("SELECT embedding FROM video_embeddings WHERE model_version = {} AND video_id = %(video)s")
            query = ann_query(model.version, model.towers.dim, where, vector.format(sql.Literal(model.version)), limit)
            return fetch_rows(conn, query, {"video": video_id, "limit": limit})

        return _answer(service.run(work), "two_tower", model.version)

    # -- decisions and embeddings ---------------------------------------------------------------------------
    @app.post("/v1/decisions", response_model=s.DecisionOut, status_code=201, responses=_RESPONSES,
              tags=["decisions"])  # fmt: skip
    def decide(body: s.DecisionIn, caller: Caller) -> s.DecisionOut:
        """Record the caller's swipe (a second swipe on the same video replaces the first)."""
        user = caller.require_user()

        def work(conn: psycopg.Connection[Any]) -> s.DecisionOut:
            try:
                row = conn.execute(
                    "INSERT INTO user_video_decisions (user_id, video_id, decision_type) VALUES (%s, %s, %s) "
                    "ON CONFLICT (user_id, video_id) DO UPDATE SET decision_type = EXCLUDED.decision_type, "
                    "created_at = now() RETURNING video_id, decision_type, created_at",
                    (user, body.video_id, body.decision_type),
                ).fetchone()
            except psycopg.errors.ForeignKeyViolation:
                raise NotFound(f"video {body.video_id} does not exist") from None
            assert row is not None
            return s.DecisionOut(video_id=row[0], decision_type=row[1], created_at=row[2])

        return service.run(work)

    @app.post("/v1/embeddings/user", response_model=s.EmbeddingOut, responses=_RESPONSES, tags=["embeddings"])
    def embed_user(caller: Caller) -> s.EmbeddingOut:
        """Compute the caller's embedding from their decisions now, store it for the active version, return it."""
        from twotower.serve.recommend import user_embedding

        user = caller.require_user()
        model = _require_model(service)

        def work(conn: psycopg.Connection[Any]) -> s.EmbeddingOut:
            cfg = model.towers.history
            history = load_history(conn, user, cfg.max_likes, cfg.max_nopes)
            vector = user_embedding(model.towers, model.items, conn, history)
            conn.execute(
                "INSERT INTO user_embeddings (model_version, user_id, embedding) VALUES (%s, %s, %s) "
                "ON CONFLICT (model_version, user_id) DO UPDATE SET embedding = EXCLUDED.embedding, updated_at = now()",
                (model.version, user, vector),
            )
            return s.EmbeddingOut(model_version=model.version, dimension=model.towers.dim,
                                  embedding=[float(x) for x in vector])  # fmt: skip

        return service.run(work)

    @app.post("/v1/embeddings/items", response_model=s.ItemsOut, responses=_RESPONSES, tags=["embeddings"])
    def embed_items(body: s.ItemsIn, caller: Caller) -> s.ItemsOut:
        """Item-tower embeddings of up to 1,000 videos from their metadata (service role)."""
        caller.require_service()
        model = _require_model(service)
        rows = [v.model_dump() for v in body.videos]
        vectors = model.towers.embed_items(model.towers.pipeline.transform(Catalog.from_rows(rows)))
        return s.ItemsOut(model_version=model.version, dimension=model.towers.dim,
                          embeddings=[[float(x) for x in v] for v in vectors])  # fmt: skip

    # -- admin ----------------------------------------------------------------------------------------------
    @app.get("/v1/admin/models", response_model=list[s.ModelOut], responses=_RESPONSES, tags=["admin"])
    def models(caller: Caller) -> list[s.ModelOut]:
        """Registered model versions (service role)."""
        caller.require_service()
        versions = service.run(list_versions)
        return [
            s.ModelOut(version=v.version, status=v.status, embedding_dim=v.embedding_dim, created_at=v.created_at,
                       activated_at=v.activated_at, videos_embedded=v.videos_embedded)
            for v in versions
        ]  # fmt: skip

    @app.get("/v1/admin/quality", responses=_RESPONSES, tags=["admin"])
    def quality(
        caller: Caller,
        model_version: Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = None,
        history_limit: Annotated[int, Query(ge=0, le=1000), BeforeValidator(s.whole_number)] = 20,
    ) -> dict[str, Any]:
        """Embedding quality of a version (default: the active one): its latest check (`twotower monitor`), past
        checks, and the live like-rate of what was served (service role)."""
        from twotower.monitor import history, like_rate

        caller.require_service()
        window = service.settings.monitor_like_window_hours

        def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
            version = model_version
            if version is None:
                row = conn.execute("SELECT version FROM model_versions WHERE status = 'active'").fetchone()
                if row is None:
                    raise NotFound("no active model version")
                version = str(row[0])
            elif conn.execute("SELECT 1 FROM model_versions WHERE version = %s", (version,)).fetchone() is None:
                raise NotFound(f"model version {version} does not exist")
            past = history(conn, version, max(history_limit, 1))
            latest = past[-1] if past else None
            return {
                "model_version": version,
                "latest": latest,
                "history": [{k: r[k] for k in ("id", "passed", "created_at", "alerts")} for r in past[-history_limit:]]
                if history_limit else [],
                "live": like_rate(conn, window, version).as_json(),
            }  # fmt: skip

        return service.run(work)

    @app.post("/v1/admin/reload", responses=_RESPONSES, tags=["admin"])
    def reload(caller: Caller) -> dict[str, Any]:
        """Check the active version now and load it if it changed (service role)."""
        caller.require_service()
        assert service.holder is not None
        changed = service.holder.refresh(force=True)
        return {"changed": changed, "model_version": service.model.version if service.model else None}

    # -- operations -----------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: _ERRORS})
    def readyz() -> Response:
        """Ready to answer: the database responds and the active model version is loaded (or none is active, and
        the fallbacks answer). 503 with the reason while the model loads or after it failed to load."""
        service.run(lambda conn: conn.execute("SELECT 1").fetchone())
        assert service.holder is not None
        state = service.holder.readiness()
        if not state.ready:
            return _error(503, "not_ready", state.reason or "not ready", {"Retry-After": "1"})
        body = {"status": "ready", "model_version": state.serving, "active_version": state.active,
                "algorithm": "two_tower" if state.serving else "fallback", "note": state.reason}  # fmt: skip
        return JSONResponse(body)

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _require_model(service: Service) -> LoadedModel:
    model = service.model
    if model is None:
        raise ModelUnavailable("no model is loaded (deploy one with `twotower deploy`)")
    return model


def _answer(rows: list[dict[str, Any]], algorithm: Algorithm, version: str | None) -> s.RecommendationsOut:
    videos = [s.VideoOut.model_validate({k: r[k] for k in s.VideoOut.model_fields if k in r}) for r in rows]
    return s.RecommendationsOut(
        recommendations=videos,
        total_count=len(videos),
        algorithm=algorithm,
        model_version=version,
    )


def _errors(app: FastAPI) -> None:
    @app.exception_handler(TwoTowerError)
    async def _ours(request: Request, exc: TwoTowerError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.http_status == 503 else None
        if exc.http_status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        message = exc.message
        if isinstance(exc, DatabaseUnavailable):  # the message names the server: for the logs, not for clients
            log.warning("%s", exc.message)
            message = "the database is unavailable; retry shortly"
        return _error(exc.http_status, exc.code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "the request body is not valid JSON")
        parts = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.method in ("POST", "PUT", "PATCH"):  # a body that is not UTF-8 JSON
            return _error(400, "malformed_json", "the request body is not valid JSON (UTF-8, nested less deeply)")
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(psycopg.OperationalError)
    async def _db_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", " ".join(str(exc).split())[:200])
        return _error(503, "database_unavailable", "the database is unavailable; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(PoolTimeout)
    async def _pool(request: Request, exc: PoolTimeout) -> JSONResponse:
        return _error(503, "database_unavailable", "the database is unavailable; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(psycopg.DataError)
    async def _data(request: Request, exc: psycopg.DataError) -> JSONResponse:
        log.info("data error: %s", " ".join(str(exc).split())[:200])
        return _error(422, "invalid_request", "a value in the request is out of range for the database")

    @app.exception_handler(psycopg.errors.QueryCanceled)
    async def _slow(request: Request, exc: psycopg.errors.QueryCanceled) -> JSONResponse:
        return _error(503, "timeout", "the query took too long; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error (logged)")


def _observe(app: FastAPI, service: Service) -> None:
    app.add_middleware(Measure, metrics=service.metrics)


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

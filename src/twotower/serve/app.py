"""The FastAPI application: ``create_app(settings)``. Serving never imports torch."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import psycopg
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg import sql
from pydantic import BeforeValidator

from twotower import __version__
from twotower.errors import ModelUnavailable, NotFound
from twotower.features.catalog import Catalog
from twotower.registry.versions import list_versions
from twotower.serve import schemas as s
from twotower.serve.auth import Principal
from twotower.serve.http import BodyLimit, error_response, install_error_handlers, observe
from twotower.serve.recommend import (
    Algorithm,
    Filters,
    ann_query,
    fetch_rows,
    load_history,
)
from twotower.serve.runtime import LoadedModel
from twotower.serve.service import Service, serving_session
from twotower.settings import Settings

__all__ = ["create_app", "serving_session"]

log = logging.getLogger("twotower.serve")
T = TypeVar("T")
_ERRORS = {"model": s.ErrorOut}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _ERRORS, 401: _ERRORS, 403: _ERRORS, 404: _ERRORS, 413: _ERRORS, 422: _ERRORS, 431: _ERRORS, 503: _ERRORS,
}  # fmt: skip


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
    install_error_handlers(app)
    observe(app, service.metrics)

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
            return error_response(503, "not_ready", state.reason or "not ready", {"Retry-After": "1"})
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

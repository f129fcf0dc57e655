"""What the API routes ask of the database and the model: every statement of the request path lives here (or in
``recommend.py``), none in a route body."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from twotower.errors import NotFound
from twotower.features.catalog import Catalog
from twotower.registry.generations import generation_table
from twotower.serve import schemas as s
from twotower.serve.recommend import Algorithm, Filters, ann_query, fetch_rows, load_history
from twotower.serve.runtime import LoadedModel
from twotower.serve.service import Service

__all__ = ["answer", "decide", "embed_items", "embed_user", "filters", "ping", "quality", "recommend", "similar"]


def ping(service: Service) -> None:
    """The database answers (an error otherwise: 503 through the handlers)."""
    service.run(lambda conn: conn.execute("SELECT 1").fetchone())


def filters(f: s.FiltersIn) -> Filters:
    return Filters(tuple(f.exclude_tags), tuple(f.include_tags), tuple(f.makers), f.max_price, f.released_after)


def answer(rows: list[dict[str, Any]], algorithm: Algorithm, version: str | None) -> s.RecommendationsOut:
    videos = [s.VideoOut.model_validate({k: r[k] for k in s.VideoOut.model_fields if k in r}) for r in rows]
    return s.RecommendationsOut(recommendations=videos, total_count=len(videos), algorithm=algorithm,
                                model_version=version)  # fmt: skip


def recommend(service: Service, user: uuid.UUID, limit: int, exclude_liked: bool, f: Filters,
              record: bool = True) -> s.RecommendationsOut:  # fmt: skip
    """The user's recommendations: two-tower from their history, the linear fallback without a model, popularity
    for a user without history; during an experiment, from the model of the user's arm. ``record``: count the
    answer and log it (with its experiment and arm) for the live like-rate and the experiment's measurement."""
    model, experiment, arm = service.holder.answering(user) if service.holder else (None, None, None)
    replicas = service.replicas

    def work(own: psycopg.Connection[Any], reads: psycopg.Connection[Any]) -> s.RecommendationsOut:
        # own: the user's decisions (the primary); reads: the ANN and catalog reads (a replica, or the same one)
        fresh = replicas.fresh_seconds() if replicas is not None and own is not reads else None
        rec = service.recommender
        forced = service.settings.serve_algorithm
        if model is not None and forced == "auto":
            cfg = model.towers.history
            history = load_history(own, user, cfg.max_likes, cfg.max_nopes, fresh)
            unseen = history.unseen(f, exclude_liked)
            if not history.empty:
                rows = rec.two_tower(reads, model.version, model.towers, model.items, history, user, limit,
                                     exclude_liked, unseen)  # fmt: skip
                return answer(rows, "two_tower", model.version)
            return answer(rec.popular(reads, user, limit, exclude_liked, unseen), "popularity", model.version)
        history = load_history(own, user, 0, 0, fresh)
        unseen = history.unseen(f, exclude_liked)
        if forced != "popularity" and history.n_likes:
            return answer(rec.linear(reads, user, limit, exclude_liked, unseen, own=own), "linear", None)
        return answer(rec.popular(reads, user, limit, exclude_liked, unseen), "popularity", None)

    out = service.read(work, model.wal if model is not None else 0)
    out.experiment_arm = arm
    if record:
        service.metrics.answers.labels(out.algorithm).inc()
        if service.served is not None:
            service.served.record(user, [v.id for v in out.recommendations], out.model_version, out.algorithm,
                                  experiment, arm)  # fmt: skip
        if arm is not None:
            service.metrics.arms.labels(arm).inc()
    return out


def similar(service: Service, model: LoadedModel, video_id: uuid.UUID, limit: int) -> s.RecommendationsOut:
    """The videos closest to ``video_id`` in the model's generation (NotFound when it has no embedding there)."""
    where = sql.SQL("v.is_active AND e.video_id <> %(video)s")

    def work(_: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        known = conn.execute(
            "SELECT 1 FROM video_embeddings WHERE model_version = %s AND video_id = %s", (model.version, video_id)
        ).fetchone()
        if known is None:
            raise NotFound(f"video {video_id} has no embedding in model {model.version}")
        vector = sql.SQL("SELECT embedding FROM video_embeddings WHERE model_version = {} AND video_id = %(video)s")
        query = ann_query(model.version, model.towers.dim, where, vector.format(sql.Literal(model.version)), limit)
        return fetch_rows(conn, query, {"video": video_id, "limit": limit})

    return answer(service.read(work, model.wal), "two_tower", model.version)


def decide(service: Service, user: uuid.UUID, body: s.DecisionIn) -> s.DecisionOut:
    """Record a swipe (a second one on the same video replaces the first)."""

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


def embed_user(service: Service, model: LoadedModel, user: uuid.UUID) -> s.EmbeddingOut:
    """The user's embedding from their decisions now, stored for the model's version."""
    from twotower.serve.recommend import user_embedding

    def work(conn: psycopg.Connection[Any]) -> s.EmbeddingOut:
        cfg = model.towers.history
        history = load_history(conn, user, cfg.max_likes, cfg.max_nopes)
        vector = user_embedding(model.towers, model.items, conn, history)
        table = generation_table(conn, "user_embeddings", model.version)  # a bulk re-embed may have moved it
        conn.execute(
            sql.SQL("INSERT INTO {} (model_version, user_id, embedding) VALUES (%s, %s, %s) ON CONFLICT "
                    "(model_version, user_id) DO UPDATE SET embedding = EXCLUDED.embedding, updated_at = now()")
            .format(sql.Identifier(table)),
            (model.version, user, vector),
        )  # fmt: skip
        return s.EmbeddingOut(model_version=model.version, dimension=model.towers.dim,
                              embedding=[float(x) for x in vector])  # fmt: skip

    return service.run(work)


def embed_items(model: LoadedModel, body: s.ItemsIn) -> s.ItemsOut:
    rows = [v.model_dump() for v in body.videos]
    vectors = model.towers.embed_items(model.towers.pipeline.transform(Catalog.from_rows(rows)))
    return s.ItemsOut(model_version=model.version, dimension=model.towers.dim,
                      embeddings=[[float(x) for x in v] for v in vectors])  # fmt: skip


def quality(service: Service, model_version: str | None, history_limit: int) -> dict[str, Any]:
    """A version's (default: the active one's) latest quality check, past checks and live like-rate."""
    from twotower.monitor import history, like_rate

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

"""What the API routes ask of the database and the model: every statement of the request path lives here (or in
``recommend.py``), none in a route body."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from twotower.errors import NotFound
from twotower.features.catalog import Catalog
from twotower.monitor import history, like_rate
from twotower.registry.generations import generation_table
from twotower.serve import schemas as s
from twotower.serve.recommend import Algorithm, Filters, History, ann_query, fetch_rows, load_history, user_embedding
from twotower.serve.runtime import LoadedModel
from twotower.serve.service import Service

__all__ = ["answer", "decide", "embed_items", "embed_user", "filters", "ping", "quality", "recommend", "similar"]


@dataclass(frozen=True)
class _Own:
    """What a recommendation reads and computes from the user's own decisions (on the primary)."""

    history: History
    vector: npt.NDArray[np.float32] | None  # the user tower's output (two_tower with history)
    linear: list[tuple[uuid.UUID, float]] | None  # the linear fallback's candidates (a user with likes)


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
    rec = service.recommender
    two_tower = model is not None and service.settings.serve_algorithm == "auto"

    def own(conn: psycopg.Connection[Any], fresh: float | None) -> _Own:
        """Phase 1, on the primary: the user's decisions (and, with ``fresh``, those of its last seconds), and what
        is computed from them: the user vector, or the linear model's candidates."""
        if two_tower:
            assert model is not None
            cfg = model.towers.history
            history = load_history(conn, user, cfg.max_likes, cfg.max_nopes, fresh)
            vector = None if history.empty else user_embedding(model.towers, model.items, conn, history)
            return _Own(history, vector, None)
        history = load_history(conn, user, 0, 0, fresh)
        linear = service.settings.serve_algorithm != "popularity" and history.n_likes > 0
        return _Own(history, None, rec.linear_candidates(conn, user, limit) if linear else None)

    def reads(conn: psycopg.Connection[Any], mine: _Own) -> s.RecommendationsOut:
        """Phase 2, on a read replica (or the primary): the ANN or catalog query."""
        unseen = mine.history.unseen(f, exclude_liked)
        version = model.version if two_tower and model is not None else None
        if mine.vector is not None and model is not None:
            rows = rec.nearest(conn, model.version, model.towers.dim, mine.vector, user, limit, exclude_liked,
                               unseen)  # fmt: skip
            return answer(rows, "two_tower", model.version)
        if mine.linear is not None:
            return answer(rec.listed(conn, mine.linear, user, limit, exclude_liked, unseen), "linear", None)
        return answer(rec.popular(conn, user, limit, exclude_liked, unseen), "popularity", version)

    out = service.read(own, reads, model.wal if model is not None else 0)
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

    def work(conn: psycopg.Connection[Any], _: None) -> list[dict[str, Any]]:
        known = conn.execute(
            "SELECT 1 FROM video_embeddings WHERE model_version = %s AND video_id = %s", (model.version, video_id)
        ).fetchone()
        if known is None:
            raise NotFound(f"video {video_id} has no embedding in model {model.version}")
        vector = sql.SQL("SELECT embedding FROM video_embeddings WHERE model_version = {} AND video_id = %(video)s")
        query = ann_query(model.version, model.towers.dim, where, vector.format(sql.Literal(model.version)), limit)
        return fetch_rows(conn, query, {"video": video_id, "limit": limit})

    return answer(service.read(None, work, model.wal), "two_tower", model.version)


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

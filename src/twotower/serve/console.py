"""What the operator console asks: version history, serving figures, jobs, a user's or a video's picture. Every
statement is bounded (LIMITs, primary-key or indexed lookups): each answers in milliseconds at 100k videos
(bench/console.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from typing import Any

import psycopg
from psycopg.rows import dict_row

from twotower.errors import NotFound
from twotower.monitor import history
from twotower.registry.versions import list_versions, rollback
from twotower.serve import queries
from twotower.serve.http import Metrics
from twotower.serve.recommend import Filters
from twotower.serve.service import Service

__all__ = ["ServingFigures", "jobs", "quality_trend", "roll_back", "user_lookup", "versions", "video_lookup"]

SERVING_ROUTES = ("/v1/recommendations", "/functions/v1/two_tower_recommendations", "/v1/decisions",
                  "/v1/videos/{video_id}/similar")  # fmt: skip
TREND_KEYS = ("mean_pairwise_cosine", "effective_rank", "missing_share", "live.like_rate")


def versions(service: Service) -> dict[str, Any]:
    """Every version (newest first) with its gate figures, and the last 50 deploys and rollbacks."""

    def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        found = list_versions(conn)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT id, version, previous_version, action, actor, created_at FROM model_deployments "
                        "ORDER BY created_at DESC, id DESC LIMIT 50")  # fmt: skip
            history = cur.fetchall()
        active = next((v.version for v in found if v.status == "active"), None)
        return {
            "active": active,
            "serving": service.model.version if service.model else None,
            "versions": [
                {"version": v.version, "status": v.status, "embedding_dim": v.embedding_dim,
                 "created_at": v.created_at, "activated_at": v.activated_at, "retired_at": v.retired_at,
                 "videos_embedded": v.videos_embedded, "users_embedded": v.users_embedded, "error": v.error,
                 "gate": v.metrics.get("gate"), "rollback_target": v.status == "retired"}
                for v in found
            ],
            "deployments": history,
        }  # fmt: skip

    return service.run(work)


def roll_back(service: Service, version: str | None, actor: str) -> dict[str, Any]:
    """Activate ``version`` (default: the last retired one), recorded as done by ``actor``, then load it in this
    process at once (the other processes hear it through LISTEN/NOTIFY)."""
    now, previous = service.run(lambda conn: rollback(conn, version, actor=actor))
    if service.holder is not None:
        service.holder.refresh(force=True)
    return {"active": now, "previous": previous, "serving": service.model.version if service.model else None}


def quality_trend(service: Service, limit: int = 50) -> dict[str, Any]:
    """The active version's last quality checks: the latest with its alerts and the live like-rate it measured,
    and a few figures of each, for the console's plots. Stored reports only (the live like-rate of
    ``/v1/admin/quality`` is computed over the served log at each call: 0.4 s at 100k videos)."""

    def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute("SELECT version FROM model_versions WHERE status = 'active'").fetchone()
        if row is None:
            return {"model_version": None, "latest": None, "points": []}
        past = history(conn, str(row[0]), limit)
        latest = None
        if past:
            last = past[-1]
            live = last["metrics"].get("live") if isinstance(last["metrics"], dict) else None
            latest = {k: last[k] for k in ("id", "passed", "created_at", "alerts")} | {"live": live}
        points = []
        for r in past:
            point: dict[str, Any] = {"created_at": r["created_at"], "passed": r["passed"]}
            for key in TREND_KEYS:
                value: Any = r["metrics"]
                for part in key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                point[key] = value if isinstance(value, int | float) and not isinstance(value, bool) else None
            points.append(point)
        return {"model_version": str(row[0]), "latest": latest, "points": points}

    return service.run(work)


def jobs(service: Service, limit: int = 20) -> dict[str, Any]:
    """The latest batch jobs with their progress, and the catalog syncs."""

    def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT j.id, j.kind, j.model_version, j.status, j.total_chunks, "
                "count(c.chunk_no) FILTER (WHERE c.status = 'done') AS chunks_done, "
                "coalesce(sum(c.rows_done), 0)::bigint AS rows_done, j.error, j.created_at, j.started_at, "
                "j.finished_at FROM (SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT %s) j "
                "LEFT JOIN job_chunks c ON c.job_id = j.id GROUP BY j.id, j.kind, j.model_version, j.status, "
                "j.total_chunks, j.error, j.created_at, j.started_at, j.finished_at "
                "ORDER BY j.created_at DESC, j.id DESC",
                (limit,),
            )
            found = cur.fetchall()
            cur.execute("SELECT source, watermark, last_run_at, last_summary FROM sync_state ORDER BY source LIMIT 50")
            syncs = cur.fetchall()
        return {"jobs": found, "syncs": syncs}

    return service.run(work)


def user_lookup(service: Service, user: uuid.UUID, limit: int) -> dict[str, Any]:
    """A user's recent swipes and the feed they would get now (not logged as served)."""

    def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT d.video_id, d.decision_type, d.created_at, v.title, v.thumbnail_url "
                "FROM user_video_decisions d JOIN videos v ON v.id = d.video_id WHERE d.user_id = %s "
                "ORDER BY d.created_at DESC LIMIT 50",
                (user,),
            )
            recent = cur.fetchall()
            cur.execute(
                "SELECT count(*) FILTER (WHERE decision_type = 'like') AS likes, "
                "count(*) FILTER (WHERE decision_type = 'nope') AS nopes FROM user_video_decisions WHERE user_id = %s",
                (user,),
            )
            counts = cur.fetchone() or {"likes": 0, "nopes": 0}
        return {"recent": recent, **counts}

    seen = service.run(work)
    feed = queries.recommend(service, user, limit, True, Filters(), record=False)
    return {"user_id": user, **seen, "feed": feed.model_dump(mode="json")}


_VIDEO = (
    "SELECT v.id, v.source, v.external_id, v.title, v.description, v.duration_seconds, v.price::float8 AS price, "
    "v.maker, v.label, v.series, v.director, v.product_released_at, v.thumbnail_url, v.product_url, v.review_count, "
    "v.review_average, v.is_active, v.created_at, v.updated_at, "
    "ARRAY(SELECT t.name FROM video_tags vt JOIN tags t ON t.id = vt.tag_id WHERE vt.video_id = v.id "
    "ORDER BY t.name) AS tags, "
    "ARRAY(SELECT p.name FROM video_performers vp JOIN performers p ON p.id = vp.performer_id "
    "WHERE vp.video_id = v.id ORDER BY p.name) AS performers, "
    "(SELECT count(*) FROM user_video_decisions d WHERE d.video_id = v.id AND d.decision_type = 'like') AS likes, "
    "(SELECT count(*) FROM user_video_decisions d WHERE d.video_id = v.id AND d.decision_type = 'nope') AS nopes "
    "FROM videos v WHERE v.id = %s"
)


def video_lookup(service: Service, video: uuid.UUID, limit: int) -> dict[str, Any]:
    """A video's metadata and its nearest neighbours in the active generation (none without a model, or when
    the video has no embedding there)."""

    def work(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_VIDEO, (video,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"video {video} does not exist")
        return row

    found = service.run(work)
    model = service.model
    neighbours, note = None, None
    if model is None:
        note = "no model is loaded"
    else:
        try:
            neighbours = queries.similar(service, model, video, limit).model_dump(mode="json")
        except NotFound as exc:
            note = exc.message
    return {"video": found, "neighbours": neighbours, "note": note}


class ServingFigures:
    """Requests/s, p50/p99 and the share of answers by algorithm of this process, from its Prometheus metrics:
    over the last ``window`` seconds of calls (since the process started on the first call)."""

    def __init__(self, metrics: Metrics, window: float = 60.0) -> None:
        self.metrics, self.window = metrics, window
        self.started = time.monotonic()
        self._snapshots: deque[tuple[float, float, dict[float, float]]] = deque()
        self._lock = threading.Lock()

    def _read(self) -> tuple[float, dict[float, float], dict[str, float]]:
        count = 0.0
        buckets: dict[float, float] = {}
        answers: dict[str, float] = {}
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "twotower_http_request_seconds_bucket":
                    if sample.labels.get("route") in SERVING_ROUTES:
                        le = float(sample.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + sample.value
                elif sample.name == "twotower_http_request_seconds_count":
                    if sample.labels.get("route") in SERVING_ROUTES:
                        count += sample.value
                elif sample.name == "twotower_recommendations_total":
                    answers[sample.labels["algorithm"]] = sample.value
        return count, buckets, answers

    def figures(self) -> dict[str, Any]:
        now = time.monotonic()
        count, buckets, answers = self._read()
        with self._lock:
            while self._snapshots and now - self._snapshots[0][0] > self.window and len(self._snapshots) > 1:
                self._snapshots.popleft()
            since, count0, buckets0 = self._snapshots[0] if self._snapshots else (self.started, 0.0, {})
            self._snapshots.append((now, count, buckets))
        seconds = max(now - since, 1e-3)
        delta = {le: n - buckets0.get(le, 0.0) for le, n in buckets.items()}
        total = sum(answers.values())
        return {
            "window_seconds": round(seconds, 1),
            "requests": int(count - count0),
            "requests_per_second": round((count - count0) / seconds, 2),
            "p50_ms": _quantile(delta, 0.5),
            "p99_ms": _quantile(delta, 0.99),
            "answers": {k: int(v) for k, v in sorted(answers.items())},
            "share_by_algorithm": {k: round(v / total, 4) for k, v in sorted(answers.items())} if total else {},
            "routes": list(SERVING_ROUTES),
        }


def _quantile(cumulative: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile in ms from cumulative histogram buckets (linear within a bucket); None without data."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    target = q * cumulative[bounds[-1]]
    low, below = 0.0, 0.0
    for le in bounds:
        n = cumulative[le]
        if n >= target:
            if le == float("inf"):
                return round(1000 * low, 2)  # beyond the last bound: report the bound
            share = (target - below) / (n - below) if n > below else 1.0
            return round(1000 * (low + (le - low) * share), 2)
        low, below = le, n
    return round(1000 * low, 2)

"""Run the checks on a stored generation: load it, compare it with the previous one, add coverage, staleness and
the live like-rate, keep the result in ``quality_reports``, and raise the alerts (structured log + webhook)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from twotower.db import Database
from twotower.errors import NotFound
from twotower.monitor.checks import Alert, GenerationCheck, Thresholds, check_vectors, inhibit
from twotower.registry.versions import active_version, get_version

__all__ = ["LiveStats", "QualityReport", "history", "like_rate", "monitor_version", "post_json", "post_webhook"]

log = logging.getLogger("twotower.monitor")


@dataclass
class LiveStats:
    window_hours: float
    served: int = 0  # (user, video) pairs served in the window
    decided: int = 0  # of which the user then swiped
    liked: int = 0

    @property
    def like_rate(self) -> float | None:
        return self.liked / self.decided if self.decided else None

    def as_json(self) -> dict[str, Any]:
        return {"window_hours": self.window_hours, "served": self.served, "decided": self.decided,
                "liked": self.liked, "like_rate": self.like_rate}  # fmt: skip


@dataclass
class QualityReport:
    version: str
    previous: str | None
    check: GenerationCheck
    live: LiveStats
    seconds: float
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    report_id: int | None = None

    @property
    def alerts(self) -> list[Alert]:
        return self.check.alerts

    @property
    def passed(self) -> bool:
        return not self.check.alerts

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "previous_version": self.previous, "passed": self.passed,
            "created_at": self.created_at.isoformat(), "report_id": self.report_id, "seconds": self.seconds,
            "metrics": self.check.metrics, "live": self.live.as_json(),
            "alerts": [a.as_json() for a in self.alerts],
        }  # fmt: skip


def _generation(conn: psycopg.Connection[Any], version: str, dim: int) -> tuple[list[Any], npt.NDArray[np.float32]]:
    """The ``dim``-dimensional rows of a generation, ordered by video id: ``(ids, (rows, dim) float32)``, by binary
    COPY."""
    register_vector(conn)
    ids: list[Any] = []
    rows: list[Any] = []
    with conn.cursor().copy(
        "COPY (SELECT video_id, embedding FROM video_embeddings WHERE model_version = %s "
        "AND vector_dims(embedding) = %s ORDER BY video_id) TO STDOUT (FORMAT BINARY)", (version, dim)
    ) as copy:  # fmt: skip
        copy.set_types(["uuid", "vector"])
        for vid, vec in copy.rows():
            ids.append(vid)
            rows.append(vec.to_numpy())
    vectors = np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, dim), np.float32)
    return ids, vectors


def _aligned(
    new_ids: list[Any], new: npt.NDArray[np.float32], old_ids: list[Any], old: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Rows of the videos both generations embed, in the same order."""
    at = {vid: i for i, vid in enumerate(new_ids)}
    both = [(at[vid], j) for j, vid in enumerate(old_ids) if vid in at]
    rows_new = np.array([i for i, _ in both], dtype=np.int64)
    rows_old = np.array([j for _, j in both], dtype=np.int64)
    return new[rows_new], old[rows_old]


def _previous(conn: psycopg.Connection[Any], version: str, status: str) -> str | None:
    """The generation to compare with: what was active before this one (or what is active now, for a new one)."""
    if status != "active":
        active = active_version(conn)
        return active if active != version else None
    row = conn.execute(
        "SELECT previous_version FROM model_deployments WHERE version = %s ORDER BY created_at DESC, id DESC LIMIT 1",
        (version,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    has = conn.execute("SELECT 1 FROM video_embeddings WHERE model_version = %s LIMIT 1", (row[0],)).fetchone()
    return str(row[0]) if has else None


# what the item tower reads of a video, as one key: videos with equal keys are identical to a cold model
_CONTENT = """
    SELECT md5(concat_ws('|', v.maker, v.label, v.series, v.director, v.price::text, v.duration_seconds::text,
                         v.product_released_at::text, v.review_count::text, v.review_average::text, t.names, p.names))
    FROM video_embeddings e
    JOIN videos v ON v.id = e.video_id
    LEFT JOIN (SELECT vt.video_id, string_agg(g.name, ',' ORDER BY g.name) AS names
               FROM video_tags vt JOIN tags g ON g.id = vt.tag_id GROUP BY vt.video_id) t ON t.video_id = v.id
    LEFT JOIN (SELECT vp.video_id, string_agg(f.name, ',' ORDER BY f.name) AS names
               FROM video_performers vp JOIN performers f ON f.id = vp.performer_id GROUP BY vp.video_id) p
           ON p.video_id = v.id
    WHERE e.model_version = %s AND vector_dims(e.embedding) = %s
    ORDER BY e.video_id"""


def like_rate(conn: psycopg.Connection[Any], hours: float, version: str | None = None) -> LiveStats:
    """Of the videos the two-tower model served in the last ``hours`` (with ``version``, or any), how many were
    then swiped, and liked. Fallback answers (popularity, linear) are not the model's and are left out."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    row = conn.execute(
        """WITH served AS (
               SELECT s.user_id, v.video_id, min(s.served_at) AS served_at
               FROM served_recommendations s, unnest(s.video_ids) AS v (video_id)
               WHERE s.served_at >= %s AND s.algorithm = 'two_tower' AND (%s::text IS NULL OR s.model_version = %s)
               GROUP BY s.user_id, v.video_id)
           SELECT count(*), count(d.video_id), count(*) FILTER (WHERE d.decision_type = 'like')
           FROM served s LEFT JOIN user_video_decisions d
             ON d.user_id = s.user_id AND d.video_id = s.video_id
            AND d.created_at >= s.served_at - interval '1 minute'  -- the API's and the database's clocks differ""",
        (since, version, version),
    ).fetchone()
    assert row is not None
    return LiveStats(hours, int(row[0]), int(row[1]), int(row[2]))


def monitor_version(
    db: Database,
    thresholds: Thresholds,
    *,
    version: str | None = None,
    like_window_hours: float = 24.0,
    record: bool = True,
    webhook_url: str | None = None,
    context: str = "monitor",
) -> QualityReport:
    """Check generation ``version`` (default: the active one); record it and raise its alerts.

    ``context`` says who asked (``monitor``, or ``deploy`` for a candidate that is not serving yet): it goes with
    the alerts to the log and the webhook."""
    started = time.perf_counter()
    with db.direct() as conn:
        if version is None:
            version = active_version(conn)
            if version is None:
                raise NotFound("no active model version: deploy one first, or give --model-version")
        info = get_version(conn, version)
        dim = int(info.embedding_dim)
        dims = {int(d): int(c) for d, c in conn.execute(
            "SELECT vector_dims(embedding), count(*) FROM video_embeddings WHERE model_version = %s GROUP BY 1",
            (version,)).fetchall()}  # fmt: skip
        ids, vectors = _generation(conn, version, dim)
        content = np.array([r[0] for r in conn.execute(_CONTENT, (version, dim)).fetchall()], dtype=object)
        previous = _previous(conn, version, info.status)
        pairs = None
        if previous is not None:
            pairs = _aligned(ids, vectors, *_generation(conn, previous, dim))
        coverage = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE e.video_id IS NULL),
                      count(*) FILTER (WHERE e.created_at < v.updated_at)
               FROM videos v LEFT JOIN video_embeddings e ON e.video_id = v.id AND e.model_version = %s
               WHERE v.is_active""",
            (version,),
        ).fetchone()
        live = like_rate(conn, like_window_hours, version)
    keys = content if len(content) == len(vectors) else None  # a video deleted between the two reads: no keys
    check = check_vectors(vectors, dim, thresholds, dims=dims, content=keys,
                          previous=(pairs[0], pairs[1]) if pairs else None)  # fmt: skip
    _coverage(check, coverage, thresholds)
    _live(check, live, thresholds)
    check.alerts = inhibit(check.alerts)
    report = QualityReport(version, previous, check, live, round(time.perf_counter() - started, 3))
    if record:
        with db.direct() as conn, conn.transaction():
            row = conn.execute(
                "INSERT INTO quality_reports (model_version, passed, metrics, alerts) VALUES (%s, %s, %s, %s) "
                "RETURNING id, created_at",
                (version, report.passed, Jsonb({**check.metrics, "live": live.as_json(), "previous_version": previous}),
                 Jsonb([a.as_json() for a in report.alerts])),
            ).fetchone()  # fmt: skip
            assert row is not None
            report.report_id, report.created_at = int(row[0]), row[1]
    for alert in report.alerts:
        log.warning(json.dumps({"event": "quality_alert", "context": context, "version": version, **alert.as_json()},
                               ensure_ascii=False))  # fmt: skip
    if report.alerts and webhook_url:
        post_webhook(webhook_url, report, context=context)
    return report


def _coverage(check: GenerationCheck, row: Any, t: Thresholds) -> None:
    active, missing, stale = (int(x) for x in row)
    m = check.metrics
    m["active_videos"] = active
    m["missing_share"] = missing / active if active else 0.0
    m["stale_share"] = stale / active if active else 0.0
    if m["missing_share"] > t.max_missing:
        check.alert("coverage", f"{missing:,} of {active:,} active videos ({m['missing_share']:.1%}) have no embedding "
                    "in this generation", m["missing_share"], t.max_missing)  # fmt: skip
    if m["stale_share"] > t.max_stale:
        check.alert("stale", f"{stale:,} embeddings ({m['stale_share']:.1%}) are older than their video's last "
                    "change", m["stale_share"], t.max_stale)  # fmt: skip


def _live(check: GenerationCheck, live: LiveStats, t: Thresholds) -> None:
    rate = live.like_rate
    if rate is not None and live.decided >= t.min_like_samples and rate < t.min_like_rate:
        check.alert("like_rate", f"served recommendations were liked {rate:.1%} of the time over the last "
                    f"{live.window_hours:g} h ({live.decided:,} swipes; floor {t.min_like_rate:.1%})", rate,
                    t.min_like_rate)  # fmt: skip


def post_webhook(url: str, report: QualityReport, timeout: float = 5.0, context: str = "monitor") -> bool:
    """POST the alerts as JSON; a failure is logged, never raised (monitoring must not fail on its pager)."""
    return post_json(url, {"event": "twotower.quality_alert", "context": context, **report.as_json()}, timeout)


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> bool:
    """POST ``body`` to the alert webhook; a failure is logged, never raised."""
    try:
        response = httpx.post(url, json=body, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning(json.dumps({"event": "webhook_failed", "url": url.split("?")[0], "error": str(exc)[:300]}))
        return False
    return True


def history(conn: psycopg.Connection[Any], version: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Past reports, oldest first (of one version, or of all)."""
    rows = conn.execute(
        "SELECT id, model_version, passed, metrics, alerts, created_at FROM quality_reports "
        "WHERE %s::text IS NULL OR model_version = %s ORDER BY created_at DESC, id DESC LIMIT %s",
        (version, version, limit),
    ).fetchall()
    return [
        {"id": r[0], "version": r[1], "passed": r[2], "metrics": r[3], "alerts": r[4], "created_at": r[5]}
        for r in reversed(rows)
    ]

"""Embedding quality checks: a healthy generation passes; each injected anomaly raises its own alert and no other."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import psycopg
import pytest

from tests.support.db import DEPLOYED_VIDEOS
from twotower.db import Database
from twotower.embeddings.generation import replace_embeddings
from twotower.monitor import Thresholds, check_vectors, inhibit, monitor_version
from twotower.monitor.run import _generation
from twotower.settings import Settings

DIM = 64
VIDEOS = DEPLOYED_VIDEOS


def _db(url: str, data: Path) -> Database:
    return Database.open(Settings(database_url=url, data_dir=data), migrate=False)


def _check(url: str, data: Path, version: str = "v2", **kwargs: Any) -> Any:
    with _db(url, data) as db:
        return monitor_version(db, Thresholds(), version=version, **kwargs)


def _rewrite(url: str, transform: Any) -> None:
    """Replace generation v2's vectors with ``transform(ids, vectors)``."""
    with psycopg.connect(url) as conn:
        ids, vectors = _generation(conn, "v2", DIM)
        new = transform(ids, vectors).astype(np.float32)
        replace_embeddings(conn, "video_embeddings", "video_id", "v2", ids, new)


def _names(report: Any) -> list[str]:
    return sorted(a.name for a in report.alerts)


def test_a_healthy_generation_raises_nothing(url: str, deployed: Path) -> None:
    first = _check(url, deployed, "v")  # the active one: no previous generation
    assert first.passed and first.previous is None, first.alerts
    m = first.check.metrics
    assert m["rows"] == VIDEOS and m["nonfinite_share"] == 0 and abs(m["norm"]["mean"] - 1) < 1e-3
    assert m["mean_pairwise_cosine"] < 0.98 and m["effective_rank"] > 0.05 * DIM and m["missing_share"] == 0
    copy = _check(url, deployed)  # v2, compared with the active v
    assert copy.passed and copy.previous == "v", copy.alerts
    assert copy.check.metrics["drift"]["neighbour_overlap_at_10"] == pytest.approx(1.0)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT model_version, passed, alerts FROM quality_reports ORDER BY id").fetchall()
    assert rows == [("v", True, []), ("v", True, []), ("v2", True, [])]  # the deploy checked v before promoting it


def test_nan_rows_raise_nonfinite_only(url: str, deployed: Path) -> None:
    # pgvector refuses NaN, so they can only exist before a write: the deploy checks the towers' output there
    with psycopg.connect(url) as conn:
        _, vectors = _generation(conn, "v", DIM)
    vectors[np.random.default_rng(0).choice(len(vectors), len(vectors) // 100, replace=False), 3] = np.nan  # 1%
    check = check_vectors(vectors, DIM, Thresholds(), previous=(vectors, vectors.copy()))
    assert sorted(a.name for a in inhibit(check.alerts)) == ["nonfinite"]
    assert check.metrics["nonfinite_share"] == pytest.approx(0.01)


def test_collapse_raises_collapse_only(url: str, deployed: Path) -> None:
    def collapse(ids: list[uuid.UUID], v: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(1)
        out = rng.normal(size=DIM) + 0.05 * rng.normal(size=v.shape)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    _rewrite(url, collapse)
    report = _check(url, deployed)
    assert _names(report) == ["collapse"], report.alerts
    assert report.check.metrics["mean_pairwise_cosine"] > 0.9


def test_missing_embeddings_raise_coverage_only(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v2' AND video_id IN "
                     "(SELECT id FROM videos ORDER BY id LIMIT 180)")  # fmt: skip
    report = _check(url, deployed)
    assert _names(report) == ["coverage"], report.alerts
    assert report.check.metrics["missing_share"] == pytest.approx(0.30)


def test_random_vectors_raise_drift_only(url: str, deployed: Path) -> None:
    def scramble(ids: list[uuid.UUID], v: np.ndarray) -> np.ndarray:
        out = np.random.default_rng(2).normal(size=v.shape)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    _rewrite(url, scramble)
    report = _check(url, deployed)
    assert _names(report) == ["drift"], report.alerts
    assert report.check.metrics["drift"]["neighbour_overlap_at_10"] < 0.05
    assert report.check.metrics["drift"]["centroid_shift"] > 0.5  # aligned, the centroids still differ


def test_few_finite_rows_and_negative_zero_do_not_break_the_checks() -> None:
    v = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[5:] = np.nan  # 15 of 20 rows broken: too few left for a neighbour comparison
    check = check_vectors(v, 8, Thresholds(), previous=(v, v.copy()))
    assert [a.name for a in check.alerts] == ["nonfinite"] and "drift" not in check.metrics
    json.dumps(check.metrics, allow_nan=False)  # storable as jsonb
    twins = np.array([[0.0, 1.0], [-0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert check_vectors(twins, 2, Thresholds()).metrics["duplicate_share"] == pytest.approx(1 / 3)


def test_a_dimension_mismatch_raises_dimension_mismatch_only(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE video_embeddings SET embedding = subvector(embedding, 1, 32) "
                     "WHERE model_version = 'v2'")  # fmt: skip
    report = _check(url, deployed)
    assert _names(report) == ["dimension_mismatch"], report.alerts
    assert f"{VIDEOS} of {VIDEOS} embeddings are not 64-dimensional" in report.alerts[0].message


def test_stale_embeddings_and_the_live_like_rate(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE videos SET title = title || ' (new cut)' WHERE id IN (SELECT id FROM videos ORDER BY id "
                     "LIMIT 100)")  # fmt: skip
        users = [uuid.uuid4() for _ in range(30)]
        videos = [r[0] for r in conn.execute("SELECT id FROM videos ORDER BY id LIMIT 10").fetchall()]
        conn.execute("""INSERT INTO served_recommendations (served_at, user_id, video_ids, model_version, algorithm)
                        SELECT now() - interval '1 hour', u, %s, 'v', 'two_tower' FROM unnest(%s::uuid[]) u""",
                     (videos, users))  # fmt: skip
        conn.execute(
            """INSERT INTO served_recommendations (served_at, user_id, video_ids, model_version, algorithm)
                        SELECT now() - interval '1 hour', u, %s, 'v', 'popularity' FROM unnest(%s::uuid[]) u""",
            (videos, users),
        )  # fmt: skip  (fallback answers: not the model's, not counted)
        for i, u in enumerate(users):  # each user swipes 8 of their 10: 2 likes, 6 nopes
            for j, v in enumerate(videos[:8]):
                conn.execute("INSERT INTO user_video_decisions (user_id, video_id, decision_type) VALUES (%s, %s, %s)",
                             (u, v, "like" if (i + j) % 4 == 0 else "nope"))  # fmt: skip
    with _db(url, deployed) as db:
        report = monitor_version(db, Thresholds(min_like_rate=0.3), version="v")
    assert _names(report) == ["like_rate", "stale"], report.alerts
    assert (report.live.served, report.live.decided, report.live.liked) == (300, 240, 60)
    assert report.check.metrics["stale_share"] == pytest.approx(100 / VIDEOS)


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_alerts_reach_the_webhook_and_a_failing_one_only_logs(
    url: str, deployed: Path, receiver: tuple[str, type[_Receiver]], caplog: pytest.LogCaptureFixture
) -> None:
    hook, handler = receiver
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v2' AND video_id IN "
                     "(SELECT id FROM videos ORDER BY id LIMIT 100)")  # fmt: skip
    report = _check(url, deployed, webhook_url=hook)
    assert [b["alerts"][0]["name"] for b in handler.received] == ["coverage"]
    body = handler.received[0]
    assert body["event"] == "twotower.quality_alert" and body["version"] == "v2" and body["passed"] is False
    assert body["report_id"] == report.report_id
    handler.status = 500
    with caplog.at_level(logging.WARNING, logger="twotower.monitor"):
        again = _check(url, deployed, webhook_url=hook)
        dead = _check(url, deployed, webhook_url="http://127.0.0.1:9/nothing-listens")
    assert _names(again) == _names(dead) == ["coverage"]  # the check run still completes
    failures = [json.loads(r.message) for r in caplog.records if "webhook_failed" in r.message]
    assert len(failures) == 2 and all(f["event"] == "webhook_failed" for f in failures)
    alerts = [json.loads(r.message) for r in caplog.records if "quality_alert" in r.message]
    assert alerts and {a["name"] for a in alerts} == {"coverage"} and all(a["version"] == "v2" for a in alerts)


def _cli(url: str, data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(data), **env}
    return subprocess.run([sys.executable, "-m", "twotower", "monitor", *args], env=full, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_the_cli_exits_non_zero_on_alerts(url: str, deployed: Path, tmp_path: Path) -> None:
    ok = _cli(url, deployed, "--report", str(tmp_path / "r.html"))
    assert ok.returncode == 0 and "version v" in ok.stdout and "passed" in ok.stdout, ok.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 3 and "https://" not in page
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM video_embeddings WHERE model_version = 'v2' AND video_id IN "
                     "(SELECT id FROM videos ORDER BY id LIMIT 100)")  # fmt: skip
    bad = _cli(url, deployed, "--model-version", "v2", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["alerts"][0]["name"] == "coverage"
    missing = _cli(url, deployed, "--model-version", "nope")
    assert missing.returncode == 66 and "Traceback" not in missing.stderr
    hostile = _cli(url, deployed, "--model-version", "'; DROP TABLE videos; --")
    assert hostile.returncode in (65, 66) and "Traceback" not in hostile.stderr
    folder = _cli(url, deployed, "--report", str(tmp_path))
    assert folder.returncode == 65 and "is a directory" in folder.stderr


def test_identical_videos_may_share_a_vector_different_ones_may_not(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:  # 20 videos made identical to the model: same metadata, no tags/performers
        twins = [r[0] for r in conn.execute("SELECT id FROM videos ORDER BY id LIMIT 20").fetchall()]
        conn.execute("DELETE FROM video_tags WHERE video_id = ANY(%s)", (twins,))
        conn.execute("DELETE FROM video_performers WHERE video_id = ANY(%s)", (twins,))
        conn.execute("UPDATE videos SET maker = 'Same', label = NULL, series = NULL, director = NULL, price = 500, "
                     "duration_seconds = 3600, product_released_at = '2025-01-01', review_count = NULL, "
                     "review_average = NULL, updated_at = now() - interval '1 day' WHERE id = ANY(%s)",
                     (twins,))  # fmt: skip

    def same(ids: list[uuid.UUID], v: np.ndarray) -> np.ndarray:
        out = v.copy()
        for i, vid in enumerate(ids):
            if vid in twins:
                out[i] = v[ids.index(twins[0])]
        return out

    _rewrite(url, same)
    explained = _check(url, deployed)
    assert explained.passed, explained.alerts
    assert (
        explained.check.metrics["duplicate_share"] > 0.02
        and explained.check.metrics["unexplained_duplicate_share"] == 0
    )

    def clash(ids: list[uuid.UUID], v: np.ndarray) -> np.ndarray:  # different videos, one vector
        out = v.copy()
        out[20:40] = v[20]
        return out

    _rewrite(url, clash)
    report = _check(url, deployed)
    assert _names(report) == ["duplicates"], report.alerts

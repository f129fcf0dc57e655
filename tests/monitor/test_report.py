"""The HTML quality report: self-contained, escaped, and every plot renders in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from twotower.monitor.checks import Alert, Thresholds, check_vectors
from twotower.monitor.report import render_report
from twotower.monitor.run import LiveStats, QualityReport

HOSTILE = "<script>alert(1)</script>"


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _past(n: int = 3) -> list[dict[str, Any]]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        {
            "id": i + 1,
            "version": HOSTILE,
            "passed": i != 1,
            "metrics": {
                "mean_pairwise_cosine": 0.01 * i,
                "effective_rank": 28.0 + i,
                "missing_share": 0.001 * i,
                "live": {"like_rate": 0.3 + 0.02 * i},
            },
            "alerts": [],
            "created_at": start + timedelta(days=i),
        }
        for i in range(n)
    ]


def _report(version: str = HOSTILE, *, previous: bool = True) -> QualityReport:
    rng = np.random.default_rng(0)
    v = _unit(rng.standard_normal((3000, 32)))
    moved = _unit(v + 0.15 * rng.standard_normal(v.shape).astype(np.float32))
    check = check_vectors(v, 32, Thresholds(), previous=(moved, v) if previous else None)
    check.alerts.append(Alert("drift", f"hostile message {HOSTILE} & co", 0.01, 0.05))
    check.metrics[f"weird {HOSTILE}"] = 1.5
    return QualityReport(version, "v0" if previous else None, check, LiveStats(24.0, 100, 40, 10), seconds=1.25)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "r.html"
    path.write_text(render_report(_report(), _past()), encoding="utf-8")
    return path


def test_self_contained_escaped(report_file: Path) -> None:
    text = report_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text
    imgs = re.findall(r"<img\b[^>]*>", text)
    assert len(imgs) == 4
    assert all('src="data:image/png;base64,' in tag for tag in imgs)
    # every string from data is escaped: the only <script> is the report's own
    assert HOSTILE not in text
    assert text.count("<script>") == 1
    assert html_escaped(HOSTILE) in text
    assert "hostile message &lt;script&gt;" in text and "&amp; co" in text
    assert "ALERT" in text and "value 0.01 vs threshold 0.05" in text
    assert "mean_pairwise_cosine" in text and "live.like_rate" in text
    assert len(text.encode()) < 1_000_000


def html_escaped(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_without_previous_generation_or_history() -> None:
    text = render_report(_report("v1", previous=False), [])
    assert "no previous generation to compare with" in text
    assert "the trend needs at least two" in text
    assert len(re.findall(r"<img\b", text)) == 2  # norms and projection


def test_renders_in_chromium(report_file: Path, tmp_path: Path) -> None:
    binary = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if binary is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
        "--dump-dom", report_file.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-images="4/4"' in dom, (re.findall(r"<body[^>]*>", dom), done.stderr[-2000:])
    assert 'id="image-warning" class="warning" hidden' in dom

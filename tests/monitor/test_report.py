"""The HTML quality report: self-contained, escaped, and every plot renders in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from twotower.db import Database
from twotower.monitor.checks import Alert, Thresholds, check_vectors
from twotower.monitor.experiment import CheckResult
from twotower.monitor.report import render_report, write_report
from twotower.monitor.report_experiment import latest_experiment
from twotower.monitor.run import LiveStats, QualityReport
from twotower.monitor.stats import arm_stats, compare
from twotower.registry import experiments
from twotower.registry.experiments import Experiment
from twotower.settings import Settings

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
    assert "Online experiment" not in text


def test_experiment_section_escaped() -> None:
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    exp = Experiment(7, "v1", HOSTILE, 0.25, "key", "guardrail", start, start + timedelta(hours=2),
                     f"guardrail: worse {HOSTILE}", "ops", HOSTILE)  # fmt: skip
    rng = np.random.default_rng(1)
    decisions = rng.integers(5, 15, 400)
    control = arm_stats(decisions * 3, decisions, rng.binomial(decisions, 0.5))
    candidate = arm_stats(decisions[:100] * 3, decisions[:100], rng.binomial(decisions[:100], 0.3))
    comparison = compare(control, candidate, min_users=50, min_decisions=100)
    assert comparison.verdict == "candidate_worse" and comparison.ci95 and comparison.always_valid
    result = CheckResult(exp, {"control": control, "candidate": candidate}, comparison, start + timedelta(hours=1))
    text = render_report(_report("v1", previous=False), [], result)
    assert HOSTILE not in text and text.count("<script>") == 1
    section = text[text.index('<h2 id="experiment">') :]
    assert "Online experiment #7" in section and "guardrail" in section and "25.0% of the users" in section
    assert f"guardrail: worse {html_escaped(HOSTILE)}" in section and "2025-01-02T05:04:05+00:00" in section
    assert f'<td>control</td><td><code>v1</code></td><td class="num">{control.users:,}</td>' in section
    assert f"{control.like_rate:.4f} ± {1.959963984540054 * (control.like_rate_se or 0):.4f}" in section
    low, high = comparison.always_valid
    assert f"{comparison.difference:+.4f}" in section and f"[{low:+.4f}, {high:+.4f}]" in section
    assert '<span class="status alert">candidate_worse</span>' in section
    assert len(re.findall(r"<img\b", text)) == 2  # no plot added


def test_written_report_shows_the_experiment(url: str, deployed: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db:
        with psycopg.connect(url, autocommit=True) as conn:
            assert latest_experiment(conn, db.settings) is None  # none has been run: no section
            conn.execute("UPDATE model_versions SET status = 'candidate' WHERE version = 'v2'")
            started = experiments.start(conn, "v2", 0.5, actor="tester")
        write_report(db, _report("v", previous=False), path)
        with psycopg.connect(url) as conn:
            looks = conn.execute("SELECT count(*) FROM experiment_checks").fetchone()
    text = path.read_text(encoding="utf-8")
    assert f"Online experiment #{started.id}: <code>v2</code> vs <code>v</code>" in text
    assert "<strong>running</strong>" in text and "by tester" in text
    assert "<td>candidate</td><td><code>v2</code></td>" in text and "Verdict:" in text and "collecting" in text
    assert looks == (0,)  # the report reads: it records no look


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

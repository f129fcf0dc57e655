"""``twotower demo`` end to end in a subprocess: its own embedded database, a small synthetic catalog, a real
API over HTTP; then a second run that reuses everything, and a busy port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.db import free_port

SMALL = ["--videos", "400", "--users", "80", "--decisions", "4000", "--epochs", "1"]


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    env.update(TWOTOWER_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")  # TWOTOWER_JWT_SECRET unset
    return env


def _demo(data_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "twotower", "demo", "--no-serve", *args],
        env=_env(data_dir), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return proc, time.perf_counter() - started


def _check_output(proc: subprocess.CompletedProcess[str], data_dir: Path) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "Traceback" not in proc.stderr
    # three users, each with a table of five recommendations
    assert len(re.findall(r"^user [123] [0-9a-f-]{36}: \d+ likes", text, re.M)) == 3, text
    for rank in range(1, 6):
        assert len(re.findall(rf"^│\s*{rank}\s*│", text, re.M)) == 3, text
    assert text.count("recommendations (two_tower, version demo-") == 3, text
    # the evaluation table against the baselines
    assert "Evaluation: all" in text and "recall@20 per slice" in text
    for model in ("two-tower", "popularity", "linear", "ease"):
        assert re.search(rf"^│ {model}\s*│", text, re.M), model
    # the quality report and the URLs
    report = data_dir / "quality.html"
    assert report.is_file() and report.stat().st_size > 1000
    assert report.as_uri() in text
    assert re.search(r"http://127\.0\.0\.1:\d+/docs", text)
    assert re.search(r"^console: +http://127\.0\.0\.1:\d+/console$", text, re.M), text
    assert re.search(r"^swipe page: +http://127\.0\.0\.1:\d+/try$", text, re.M), text
    assert re.search(r"^  sign in with: [\w-]+\.[\w-]+\.[\w-]+$", text, re.M), text


@pytest.mark.timeout(300)
def test_demo_runs_then_reuses(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    first, first_s = _demo(data_dir, *SMALL, "--port", str(free_port()))
    _check_output(first, data_dir)
    assert "reusing version" not in first.stdout
    assert re.search(r"deployed and activated version demo-", first.stdout), first.stdout

    second, second_s = _demo(data_dir, *SMALL, "--port", str(free_port()))
    _check_output(second, data_dir)
    assert "reusing the synthetic catalog" in second.stdout
    version = re.search(r"reusing version (demo-[0-9-]+)", second.stdout)
    assert version is not None, second.stdout
    assert f"version {version.group(1)}" in first.stdout  # the one the first run deployed
    assert second_s < first_s, (first_s, second_s)

    # without --no-serve it serves until Ctrl-C, then exits 0
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "twotower", "demo", *SMALL, "--port", str(port)],
        env=_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a suite started in the background (`make test &`) would pass on SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("serving; press Ctrl-C"):
                break
        else:
            pytest.fail(f"the demo exited before serving: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping" in out and "Traceback" not in err


def test_busy_port_is_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = _demo(tmp_path / "demo", *SMALL, "--port", str(port))
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: port {port} is in use; pass --port", proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

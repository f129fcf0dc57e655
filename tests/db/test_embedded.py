"""The embedded server: shared by concurrent processes, stopped by the last one, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.db import MOVIELENS

HOLDER = """
import sys, time
from pathlib import Path
from twotower.db import EmbeddedServer
server = EmbeddedServer(Path(sys.argv[1]))
server.start()
print(server.pid, flush=True)
release = Path(sys.argv[2])
while not release.exists():
    time.sleep(0.05)
server.stop()
"""


def _postmaster_pid(pgdata: Path) -> int | None:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().splitlines()[0])
    return pid if psutil.pid_exists(pid) else None


def _wait_stopped(pgdata: Path, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _postmaster_pid(pgdata) is None:
            return True
        time.sleep(0.1)
    return False


def _holder(pgdata: Path, release: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(pgdata), str(release)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"holder failed: {line!r}"
    return proc, int(line)


def _cleanup(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


def test_two_processes_share_one_server_and_last_one_stops_it(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    proc_a, pid_a = _holder(pgdata, tmp_path / "release-a")
    proc_b, pid_b = _holder(pgdata, tmp_path / "release-b")
    try:
        assert pid_a == pid_b, "the second process started its own server"
        (tmp_path / "release-a").touch()
        assert proc_a.wait(30) == 0
        assert _postmaster_pid(pgdata) == pid_a, "server stopped while another process still used it"
        (tmp_path / "release-b").touch()
        assert proc_b.wait(30) == 0
        assert _wait_stopped(pgdata), "server still running after the last process exited"
    finally:
        _cleanup(proc_a, proc_b)


def test_killed_process_does_not_keep_server_alive(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    proc_a, pid = _holder(pgdata, tmp_path / "release-a")
    proc_a.send_signal(signal.SIGKILL)
    proc_a.wait(10)
    assert _postmaster_pid(pgdata) == pid  # orphaned, still up
    proc_b, pid_b = _holder(pgdata, tmp_path / "release-b")
    try:
        assert pid_b == pid  # reused, not restarted
        (tmp_path / "release-b").touch()
        assert proc_b.wait(30) == 0
        assert _wait_stopped(pgdata), "a dead process's handle kept the server alive"
    finally:
        _cleanup(proc_a, proc_b)


def test_concurrent_cli_commands_share_the_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    env["TWOTOWER_PG_DIR"] = str(tmp_path / "pg")
    cmds = [
        [sys.executable, "-m", "twotower", "import", "movielens", str(MOVIELENS)],
        [sys.executable, "-m", "twotower", "db", "upgrade"],
    ]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert "9,742" in outs[0][0]
    assert _wait_stopped(tmp_path / "pg")
    status = subprocess.run(
        [sys.executable, "-m", "twotower", "db", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "0 pending" in status.stdout


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twotower", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


def test_unreachable_database_url(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://app:s3cret-pw@127.0.0.1:9/app",
        "TWOTOWER_DB_CONNECT_TIMEOUT": "2",
    }
    result = _run_cli(env, "db", "status")
    _assert_one_line_error(result, "cannot connect", "127.0.0.1")
    assert "s3cret-pw" not in result.stderr  # never echo the password
    assert result.returncode == 69


def test_invalid_database_url() -> None:
    result = _run_cli({**os.environ, "DATABASE_URL": "mysql://nope"}, "db", "status")
    _assert_one_line_error(result, "DATABASE_URL")


def test_unwritable_data_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = _run_cli({**env, "TWOTOWER_PG_DIR": str(blocker / "pg")}, "db", "upgrade")
    _assert_one_line_error(result, "embedded database", "not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_data_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = _run_cli({**env, "TWOTOWER_PG_DIR": str(ro / "state" / "pg")}, "db", "upgrade")
    _assert_one_line_error(result, "embedded database")

"""The README's tutorial works as written: its shell blocks marked ``<!-- runnable -->`` run, in order, in a fresh
directory, and must all succeed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- runnable -->\s*```sh\n(.*?)```", re.S)


def runnable_blocks(text: str) -> list[str]:
    return _BLOCK.findall(text)


def test_the_readme_marks_runnable_blocks() -> None:
    blocks = runnable_blocks(README.read_text())
    assert blocks and all("twotower" in b for b in blocks)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_tutorial_runs_as_written(tmp_path: Path) -> None:
    script = "\n".join(runnable_blocks(README.read_text()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert '"recommendations"' in run.stdout and "active: first (was second)" in run.stdout

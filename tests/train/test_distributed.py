"""``twotower train`` under ``torchrun`` (two gloo processes on CPU): it ends, registers one version, and learns
as well as one process with the same global batch.

The epoch's user states do not split evenly: with the old strided sharding the two ranks ran different numbers
of steps and the rank with more waited forever in its gradient all-reduce. A hang fails on the time limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tests.support.db import synth_database
from twotower.db import Database
from twotower.features.examples import Histories
from twotower.features.history import HistoryConfig
from twotower.model.config import TowerConfig
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.prepare import prepare
from twotower.train.trainer import epoch_shard

SYNTH = SynthConfig(videos=1500, users=300, decisions=16_000, seed=11, tastes=6)
LIMIT_S = 180  # a hang fails here instead of blocking CI
TOLERANCE = 0.85  # 2 processes reach at least this share of the 1-process validation Recall@20


@pytest.fixture(scope="module")
def ddp_url(pg_server: str, template_db: str) -> Iterator[str]:
    with synth_database(pg_server, template_db, SYNTH) as url:
        yield url


def _run(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with output to files; on the time limit kill it and every process under it (torchrun's
    workers run in sessions of their own), then fail: a hang fails instead of blocking."""
    import psutil

    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True, start_new_session=True)
        try:
            proc.wait(timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
            for pid in reversed(tree):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{' '.join(cmd[:8])} ... did not end within {LIMIT_S} s (a hang)\n"
                        f"{out.read_text()[-2000:]}\n{err.read_text()[-3000:]}")  # fmt: skip
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


def _uneven_batch_size(n_states: int) -> int:
    """A per-rank batch at which the old sharding (``states[rank::2]``, batches < 2 skipped) gives rank 0 one
    step more than rank 1: n odd and (n // 2) % batch == 1 (the review's 1,027 states at 512)."""
    assert n_states % 2 == 1, f"the synthetic set must give an odd number of states, got {n_states}"
    for batch in range(1024, 31, -1):
        if (n_states // 2) % batch == 1:
            return batch
    raise AssertionError(f"no batch size in 32..1024 makes {n_states} states uneven on 2 ranks")


def test_torchrun_two_processes_end_and_match_one(ddp_url: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    settings = Settings(database_url=ddp_url, data_dir=tmp_path / "state")
    with Database.open(settings, migrate=False) as db, db.direct() as conn:
        prepared = prepare(conn)
    hist = Histories(prepared.log, prepared.split.fit, len(prepared.catalog), HistoryConfig())
    n_states = hist.examples()[0].size
    batch = _uneven_batch_size(n_states)
    old_sizes = [(n_states + 1) // 2, n_states // 2]  # states[0::2], states[1::2]
    old_steps = [size // batch + (size % batch >= 2) for size in old_sizes]
    assert old_steps[0] != old_steps[1], old_steps  # the old code's ranks disagree on the step count
    shards = [epoch_shard(np.arange(n_states), r, 2) for r in (0, 1)]
    assert shards[0].size == shards[1].size  # the new ones do not

    env = {**cli_env, "DATABASE_URL": ddp_url, "OMP_NUM_THREADS": "1"}
    common = ["--epochs", "2", "--patience", "5", "--seed", "1", "--no-resume"]
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "twotower", "train", *common, "--batch-size", str(batch), "--output-dir", str(tmp_path / "ddp"),
                "--update-db"], env, tmp_path / "ddp")  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # the same global batch (2 x batch) in one process: the same number of steps per epoch
    one = _run([sys.executable, "-m", "twotower", "train", *common, "--batch-size", str(2 * batch),
                "--output-dir", str(tmp_path / "one")], env, tmp_path / "one")  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]

    [ddp_dir] = [p for p in (tmp_path / "ddp").iterdir() if not p.name.startswith(".")]
    [one_dir] = [p for p in (tmp_path / "one").iterdir() if not p.name.startswith(".")]
    ddp_info, one_info = (json.loads((d / "training.json").read_text()) for d in (ddp_dir, one_dir))
    assert ddp_info["world_size"] == 2 and one_info["world_size"] == 1
    # rank 0 alone reported, named, wrote and published: one version, in the database and on disk
    assert ddp.stdout.count("best epoch") == 1 and ddp.stdout.count("written to pgvector") == 1
    with psycopg.connect(ddp_url) as conn:
        versions = conn.execute("SELECT version, status FROM model_versions").fetchall()
    assert versions == [(ddp_dir.name, "ready")]
    # every epoch counts the positives of both ranks: every user state (padded to an even split) with its next
    # likes each
    k = TowerConfig().next_likes
    assert all(n_states * k <= h["examples"] <= (n_states + 2) * k for h in ddp_info["history"]), ddp_info["history"]
    r_ddp, r_one = ddp_info["best_valid_recall_at_20"], one_info["best_valid_recall_at_20"]
    print(f"valid Recall@20: 2 processes {r_ddp:.4f}, 1 process {r_one:.4f} (ratio {r_ddp / r_one:.3f})")
    assert r_ddp > 0.05 and r_ddp >= TOLERANCE * r_one, (r_ddp, r_one)

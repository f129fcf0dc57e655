"""Training end to end on a real database: planted tastes are found, runs are reproducible and resumable."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.db import synth_database
from twotower.db import Database
from twotower.errors import InputError
from twotower.evaluation import PopularityScorer, evaluate, served_linear
from twotower.evaluation.scorers import RandomScorer
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.run import TrainOptions, train
from twotower.train.scorer import TwoTowerScorer

SYNTH = SynthConfig(videos=3000, users=600, decisions=50_000, seed=7, tastes=8)


@pytest.fixture(scope="module")
def synth_url(pg_server: str, template_db: str) -> Iterator[str]:
    with synth_database(pg_server, template_db, SYNTH) as url:
        yield url


@pytest.fixture
def synth_db(synth_url: str, tmp_path: Path) -> Iterator[Database]:
    with Database.open(Settings(database_url=synth_url, data_dir=tmp_path), migrate=False) as db:
        yield db


def _opts(tmp_path: Path, **kw: object) -> TrainOptions:
    base: dict[str, object] = {"epochs": 2, "batch_size": 256, "output_dir": tmp_path / "models", "resume": False}
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


def test_two_tower_finds_planted_tastes(synth_db: Database, tmp_path: Path) -> None:
    result = train(synth_db, _opts(tmp_path, epochs=5, batch_size=512))
    split, prepared = result.prepared.split, result.prepared
    model = TwoTowerScorer(result.model, prepared.features)
    model.fit(split)
    linear = served_linear(prepared.catalog.tags)
    linear.fit(split)
    ours, theirs = evaluate(model, split, ks=(20,)), evaluate(linear, split, ks=(20,))
    r_ours, r_lin = ours.metrics["all"]["recall@20"], theirs.metrics["all"]["recall@20"]
    assert r_ours >= 2 * r_lin, (r_ours, r_lin)
    assert ours.metrics["all"]["auc"] > 0.65
    # cold start: videos nobody liked in the training period are found from their content alone
    popularity = PopularityScorer(len(prepared.catalog))
    popularity.fit(split)
    pop = evaluate(popularity, split, ks=(20,))
    assert ours.users["cold_items"] > 0
    assert ours.metrics["cold_items"]["recall@20"] > pop.metrics["cold_items"]["recall@20"]
    # ranked among the cold videos only, content carries the taste: above the content-only linear model and random
    rand = RandomScorer(len(prepared.catalog))
    rand.fit(split)
    cold = {r.name: r.metrics["cold_catalog"]["recall@20"] for r in (ours, theirs, evaluate(rand, split, ks=(20,)))}
    assert cold["two-tower"] > max(cold["linear"], cold["random"]), cold
    assert ours.metrics["all"]["recall@20"] > pop.metrics["all"]["recall@20"]
    # the artifacts are JSON + safetensors
    names = {p.name for p in result.directory.iterdir()}
    assert {"model.safetensors", "tower_config.json", "features.json", "training.json"} <= names


def test_same_seed_same_model(synth_db: Database, tmp_path: Path) -> None:
    a = train(synth_db, _opts(tmp_path / "a", seed=3, batch_size=1024, refit=False))
    b = train(synth_db, _opts(tmp_path / "b", seed=3, batch_size=1024, refit=False))
    assert [asdict(h)["loss"] for h in a.history] == [asdict(h)["loss"] for h in b.history]
    assert [h.valid_recall_at_20 for h in a.history] == [h.valid_recall_at_20 for h in b.history]
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    c = train(synth_db, _opts(tmp_path / "c", seed=4, batch_size=1024, epochs=1))
    assert c.history[0].loss != a.history[0].loss


class _Crash(Exception):
    pass


def test_interrupted_run_resumes_from_checkpoint(synth_db: Database, tmp_path: Path) -> None:
    straight = train(synth_db, _opts(tmp_path / "straight", epochs=2, patience=10, batch_size=1024))

    def crash_after_first(stats: object, better: bool) -> None:
        raise _Crash()

    opts = _opts(tmp_path / "crashy", epochs=2, patience=10, resume=True, batch_size=1024)
    with pytest.raises(_Crash):
        train(synth_db, opts, on_epoch=crash_after_first)
    resumed = train(synth_db, opts)
    assert resumed.resumed_from == 1
    assert [h.loss for h in resumed.history] == pytest.approx([h.loss for h in straight.history], rel=1e-6)
    for va, vb in zip(resumed.model.state_dict().values(), straight.model.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-6)


def test_a_run_with_other_options_does_not_resume_a_finished_one(synth_db: Database, tmp_path: Path) -> None:
    """v2 with --epochs 1 after v1 with --epochs 2 (same output directory, data and settings) trains afresh: it
    neither reuses v1's finished checkpoint nor reports v1's epochs as its own."""
    first = train(synth_db, _opts(tmp_path, epochs=2, patience=10, resume=True, batch_size=1024, version="v1"))
    second = train(synth_db, _opts(tmp_path, epochs=1, patience=10, resume=True, batch_size=1024, version="v2"))
    assert len(first.history) == 2 and second.resumed_from == 0 and len(second.history) == 1
    again = train(synth_db, _opts(tmp_path, epochs=2, patience=10, resume=True, batch_size=1024, version="v3"))
    assert again.resumed_from == 2  # the same options: v1's checkpoint is this run's


def test_update_db_writes_a_generation(synth_db: Database, tmp_path: Path) -> None:
    from twotower.train.publish import publish_embeddings

    result = train(synth_db, _opts(tmp_path, epochs=1, version="t1", batch_size=1024))
    assert np.isfinite(result.prepared.pipeline.reference_time)
    n_videos, n_users = publish_embeddings(synth_db, result)
    with synth_db.connection() as conn:
        assert conn.execute("SELECT status, embedding_dim FROM model_versions WHERE version = 't1'").fetchone() == (
            "ready",
            64,
        )
        assert conn.execute("SELECT count(*) FROM video_embeddings WHERE model_version = 't1'").fetchone() == (
            n_videos,
        )
        assert conn.execute("SELECT count(*) FROM user_embeddings WHERE model_version = 't1'").fetchone() == (n_users,)
        norm = conn.execute("SELECT vector_norm(embedding) FROM video_embeddings LIMIT 1").fetchone()
    assert n_videos == SYNTH.videos and n_users == SYNTH.users
    assert norm is not None and abs(norm[0] - 1.0) < 1e-4
    with pytest.raises(InputError, match="already exists"):
        publish_embeddings(synth_db, result)


def test_empty_decisions_is_a_clear_error(db: Database, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="catalog is empty"):
        train(db, _opts(tmp_path))
    with db.connection() as conn:
        conn.execute("INSERT INTO videos (source, external_id, title) VALUES ('t', '1', 'one')")
    with pytest.raises(InputError, match="no decisions"):
        train(db, _opts(tmp_path))


def test_unwritable_output_dir(synth_db: Database, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"output-dir .* is a file, not a directory"):
        train(synth_db, _opts(tmp_path, output_dir=blocker / "models"))


@pytest.mark.parametrize(("args", "needle"), [(["--embedding-dim", "0"], "embedding-dim"),
                                              (["--embedding-dim", "5000"], "embedding-dim"),
                                              (["--batch-size", "1"], "batch-size")])  # fmt: skip
def test_cli_rejects_bad_flags(cli_env: dict[str, str], tmp_path: Path, args: list[str], needle: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twotower", "train", "--output-dir", str(tmp_path), *args],
        env=cli_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 65 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and needle in result.stderr


def test_cli_train_and_evaluate(synth_url: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cli_env, "DATABASE_URL": synth_url}
    models = tmp_path / "models"
    run = subprocess.run(
        [sys.executable, "-m", "twotower", "train", "--epochs", "2", "--no-refit", "--output-dir", str(models),
         "--version", "cli1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "valid Recall@20" in run.stdout and "cli1" in run.stdout
    ev = subprocess.run(
        [sys.executable, "-m", "twotower", "evaluate", "--models", str(models)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    for name in ("two-tower", "popularity", "linear", "ease", "cold_items", "new_users"):
        assert name in ev.stdout
    assert (models / "cli1" / "evaluation.json").is_file()


@pytest.mark.parametrize(
    "tower",
    [
        {"history": "profile", "targets_per_history": 4},
        {"target_window": 5, "targets_per_history": 2, "next_likes": 1},
        {"history_ids": True, "history_pooling": "learned", "history_dropout": 0.2, "mask_likes": True},
        {"history": "profile", "targets_per_history": 4, "mask_likes": True},
    ],
)
def test_alternative_objectives_train(synth_db: Database, tmp_path: Path, tower: dict[str, object]) -> None:
    """The set-based and windowed objectives (one user-tower pass, several positives) learn something too."""
    result = train(synth_db, _opts(tmp_path, epochs=1, batch_size=256, refit=False, tower=tower))
    [stats] = result.history
    assert stats.examples >= 0.9 * (result.prepared.split.fit & result.prepared.log.like).sum()
    assert np.isfinite(stats.loss) and stats.valid_recall_at_20 > 0.05


def test_cosine_schedule_and_id_weight_decay_train(synth_db: Database, tmp_path: Path) -> None:
    from twotower.train.trainer import TrainConfig, scheduled_lr

    config = TrainConfig(epochs=10, learning_rate=1e-3, lr_schedule="cosine")
    assert scheduled_lr(config, 0) == pytest.approx(1e-3)
    assert scheduled_lr(config, 5) == pytest.approx(5e-4)
    assert scheduled_lr(config, 10) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(TrainConfig(learning_rate=1e-3), 7.5) == 1e-3  # constant
    result = train(synth_db, _opts(tmp_path, epochs=2, batch_size=1024, refit=False, lr_schedule="cosine",
                                   id_weight_decay=0.1))  # fmt: skip
    assert [h.learning_rate for h in result.history][-1] < 2e-3 / 2  # the last step of epoch 2 of 2
    assert all(np.isfinite(h.loss) for h in result.history)
    with pytest.raises(InputError, match="lr_schedule"):
        train(synth_db, _opts(tmp_path, lr_schedule="linear"))


def test_bf16_autocast_trains_as_well_as_fp32(synth_db: Database, tmp_path: Path) -> None:
    """``--precision bf16`` (meant for GPUs; CPU autocast runs the same code): the towers in bf16, the loss and
    the weights in fp32. It learns as well as fp32 with the same seed, and the weights it leaves are fp32."""
    runs = {p: train(synth_db, _opts(tmp_path / p, epochs=2, batch_size=1024, refit=False, seed=5, precision=p))
            for p in ("fp32", "bf16")}  # fmt: skip
    recall = {p: r.history[-1].valid_recall_at_20 for p, r in runs.items()}
    assert all(np.isfinite(h.loss) for r in runs.values() for h in r.history)
    assert recall["bf16"] >= 0.85 * recall["fp32"], recall
    assert {t.dtype for t in runs["bf16"].model.state_dict().values() if t.is_floating_point()} == {torch.float32}


def test_without_a_terminal_training_logs_its_progress(
    synth_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a scheduler or into a log file there is no bar: a line at most every PROGRESS_LINE_SECONDS says how
    far the epoch is (an epoch at 1M videos takes half an hour)."""
    from twotower.cli import train_cmds
    from twotower.cli.app import main
    from twotower.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", synth_url)
    monkeypatch.setenv("TWOTOWER_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setattr("twotower.train.allocator.reuse_freed_memory", lambda: False)
    monkeypatch.setattr(train_cmds, "PROGRESS_LINE_SECONDS", 0.0)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(["train", "--epochs", "1", "--no-refit", "--output-dir", str(tmp_path / "m"), "--version", "logged"])
    finally:
        get_settings.cache_clear()
    printed = capsys.readouterr().out
    assert exited.value.code in (0, None), printed
    lines = [line for line in printed.splitlines() if line.startswith("epoch 1: ")]
    assert len(lines) >= 10, printed  # a line per step here (every step is past the 0 s interval)
    done = [int(line.split()[2].split("/")[0].replace(",", "")) for line in lines]
    total = {line.split()[2].split("/")[1] for line in lines}
    assert done == sorted(done) and len(total) == 1 and "positives/s" in lines[-1] and "min left" in lines[-1]

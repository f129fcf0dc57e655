"""``twotower tune``: an Optuna search on the validation split, stored in the database, resumable; its config
file drives ``train --config`` (flags given on the command line win)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.db import synth_database
from twotower.db import Database
from twotower.errors import InputError
from twotower.model.config import TowerConfig
from twotower.settings import Settings
from twotower.synth import SynthConfig
from twotower.train.config_file import read_config
from twotower.train.tune import TuneOptions, tune

SMALL = SynthConfig(videos=600, users=200, decisions=12_000, seed=3, tastes=4)


@pytest.fixture(scope="module")
def small_url(pg_server: str, template_db: str) -> Iterator[str]:
    with synth_database(pg_server, template_db, SMALL) as url:
        yield url


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twotower", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _trials(url: str, study: str) -> list[tuple[str, float | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT t.state::text, v.value FROM optuna.trials t JOIN optuna.studies s USING (study_id)"
            " LEFT JOIN optuna.trial_values v USING (trial_id) WHERE s.study_name = %s ORDER BY t.number",
            (study,),
        ).fetchall()


def test_tune_resumes_and_train_reads_its_config(small_url: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cli_env, "DATABASE_URL": small_url}
    config = tmp_path / "tuned.json"
    args = ["--epochs", "1", "--patience", "1", "--study", "s1", "--output", str(config), "--device", "cpu"]
    first = _cli(env, "tune", "--trials", "1", *args)
    assert first.returncode == 0, first.stderr
    assert "1 finished trial(s), 1 run now" in first.stdout
    trials = _trials(small_url, "s1")
    assert [state for state, _ in trials] == ["COMPLETE"]
    assert all(value is not None and 0 < value <= 1 for _, value in trials)

    # the same study again: it resumes, only the missing trial runs
    with Database.open(Settings(database_url=small_url, data_dir=tmp_path), migrate=False) as db:
        result = tune(db, TuneOptions(trials=2, study="s1", epochs=1, patience=1, device="cpu", output=config))
    assert (result.finished, result.ran) == (2, 1)
    assert len(_trials(small_url, "s1")) == 2
    written = json.loads(config.read_text())
    assert written["tuned"]["valid_recall_at_20"] == pytest.approx(max(v for _, v in _trials(small_url, "s1")))
    assert read_config(config)["tower"] == written["tower"]

    # train --config: the file's recipe, except what the command line says
    models = tmp_path / "models"
    run = _cli(env, "train", "--config", str(config), "--epochs", "1", "--no-refit", "--output-dir", str(models),
               "--version", "tuned1", "--device", "cpu", "--batch-size", "128")  # fmt: skip
    assert run.returncode == 0, run.stderr
    training = json.loads((models / "tuned1" / "training.json").read_text())
    options = training["options"]
    assert options["epochs"] == "1" and options["batch_size"] == "128"  # the flags win over the file
    assert written["train"]["batch_size"] != 128
    assert float(options["learning_rate"]) == pytest.approx(written["train"]["learning_rate"])
    assert options["lr_schedule"] == written["train"]["lr_schedule"]
    tower = json.loads((models / "tuned1" / "tower_config.json").read_text())
    for key, value in written["tower"].items():
        assert tower[key] == pytest.approx(value), key


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"train": {"learnig_rate": 0.1}}', "unknown train setting(s) learnig_rate"),
        ('{"tower": {"n_items": 5}}', "unknown tower setting(s) n_items"),
        ('{"tower": {"temperature": "hot"}}', "tower.temperature must be a float"),
        ('{"tower": {"temperature": 7.0}}', "temperature must be in (0, 1]"),
        ('{"train": {"batch_size": true}}', "train.batch_size must be a int"),
        ('{"tower": {"hidden_dim": 0}}', "tower.hidden_dim = 0 is out of range"),
        ('{"tower": {"next_likes": 0}}', "tower.next_likes = 0 is out of range"),
        ('{"tower": {"next_likes": null}}', "tower.next_likes must be a int"),
        ('{"tower": {"history": "profile", "next_likes": 3}}', "set next_likes=1"),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=None) as info:
        read_config(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_file_tuned_before_next_likes_keeps_training_on_the_next_like(tmp_path: Path) -> None:
    """Its trials trained each user state on one like: it keeps doing so; a hand-written file gets the default."""
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"tuned": {"study": "s"}, "train": {"batch_size": 512}, "tower": {"temperature": 0.1}}))
    assert read_config(old)["tower"] == {"temperature": 0.1, "next_likes": 1}
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"tower": {"temperature": 0.1}}))
    assert read_config(mine)["tower"] == {"temperature": 0.1}
    mine.write_text(json.dumps({"tower": {"history": "profile", "targets_per_history": 4}}))
    assert TowerConfig(**read_config(mine)["tower"]).positives_per_state == 4


def test_cli_refuses_bad_tune_and_config_input(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    for args, needle in (
        (["tune", "--trials", "0"], "--trials must be between 1 and 10000"),
        (["tune", "--timeout", "-5"], "--timeout must be a positive number"),
        (["train", "--config", str(missing)], "No such file"),
        (["deploy", "--config", str(missing), "--model-dir", str(tmp_path)], "cannot go with --model-dir"),
    ):
        run = _cli(cli_env, *args)
        assert run.returncode != 0 and "Traceback" not in run.stderr, (args, run.stderr)
        assert run.stderr.strip().startswith("error:") and needle in run.stderr, (args, run.stderr)

"""Hostile ``--config`` files (issue 29, item 5): every one is a one-line error (exit 65) before anything is
trained, allocated or written, and the model's sizes have bounds a model can actually have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CliRunner
from twotower.errors import InputError
from twotower.model.config import TowerConfig


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twotower", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _written(tmp_path: Path, config: Path) -> list[Path]:
    return sorted(p for p in tmp_path.rglob("*") if p != config and not p.is_relative_to(tmp_path / "state"))


HOSTILE = {
    "nested_lists": "[" * 200_000,  # under 1 MiB: json's recursion would overflow
    "nested_objects": '{"tower": ' * 60_000 + "1" + "}" * 60_000,
    "field_dim": json.dumps({"tower": {"field_dim": 1 << 20}}),  # 11.7 GB of weights
    "hidden_dim": json.dumps({"tower": {"hidden_dim": 1 << 20}}),  # 6.4 GB
    "uniform_negatives": json.dumps({"tower": {"uniform_negatives": 1 << 20}}),
    "max_likes": json.dumps({"tower": {"max_likes": 1 << 20}}),
    "history_tags": json.dumps({"tower": {"history_tags": 1 << 20}}),
    "recursion_in_a_string": '{"tuned": {"note": "' + "[" * 300_000 + '"}, "tower": ' + "[" * 100_000 + "}",
}


# every file through `train`; `deploy` reads --config with the same loader (two cases prove it does). Most run the
# CLI's entry point in this process (the same `main`: one line on stderr and the exit code); SUBPROCESS ones run
# `python -m twotower` for real, so the whole path is proven once per command without paying an interpreter and a
# torch import per case.
HOSTILE_RUNS = [("train", name) for name in sorted(HOSTILE)] + [("deploy", "nested_lists"), ("deploy", "field_dim")]
SUBPROCESS = {("train", "nested_lists"), ("deploy", "field_dim"), ("train", "fifo")}


@pytest.mark.parametrize(("command", "name"), HOSTILE_RUNS)
def test_a_hostile_config_is_one_line_and_exit_65(
    cli_in_process: CliRunner, tmp_path: Path, name: str, command: str
) -> None:
    config = tmp_path / "hostile.json"
    config.write_text(HOSTILE[name])
    assert config.stat().st_size < 1 << 20
    args = (command, "--config", str(config), "--output-dir", str(tmp_path / "models"))
    run = _cli(_env(tmp_path), *args) if (command, name) in SUBPROCESS else cli_in_process(*args)
    assert run.returncode == 65, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr and run.stderr.startswith("error: --config "), run.stderr[-2000:]
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]
    assert _written(tmp_path, config) == []


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_") and k != "DATABASE_URL"}
    # nothing may connect before the config is refused: a URL that cannot answer makes a regression fail at once
    env.update(DATABASE_URL="postgresql://nobody@127.0.0.1:1/never", TWOTOWER_DATA_DIR=str(tmp_path / "state"))
    return env


@pytest.mark.parametrize(
    ("command", "kind"), [*(("train", k) for k in ("fifo", "directory", "device", "large")), ("deploy", "fifo")]
)
def test_a_config_that_is_not_a_small_regular_file_is_refused_at_once(
    cli_in_process: CliRunner, tmp_path: Path, kind: str, command: str
) -> None:
    path = tmp_path / "config.json"
    if kind == "fifo":
        os.mkfifo(path)  # nobody ever writes to it: reading it would wait for ever
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")  # endless
    else:
        path.write_text('{"tower": {}, "x": "' + "x" * (1 << 20) + '"}')
    args = (command, "--config", str(path), "--output-dir", str(tmp_path / "models"))
    run = _cli(_env(tmp_path), *args) if (command, kind) in SUBPROCESS else cli_in_process(*args)
    assert run.returncode == 65 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.stderr.startswith(f"error: --config {path}") and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()


def test_tower_sizes_have_bounds_a_model_can_have() -> None:
    for field, value in (("field_dim", 1 << 20), ("hidden_dim", 1 << 20), ("uniform_negatives", 1 << 20),
                         ("max_likes", 1 << 20), ("max_nopes", 1 << 20), ("history_tags", 1 << 20)):  # fmt: skip
        with pytest.raises(InputError, match=f"{field} must be between"):
            TowerConfig(**{field: value})
    TowerConfig(field_dim=64, hidden_dim=512, uniform_negatives=4096)  # what `tune` searches stays allowed


def test_the_parameter_memory_is_checked_against_the_catalog() -> None:
    from twotower.model.config import MAX_TRAINING_BYTES

    small = TowerConfig(n_items=100_000, field_dim=64, history_ids=True)
    assert small.training_bytes() < MAX_TRAINING_BYTES
    with pytest.raises(InputError) as info:
        TowerConfig(n_items=20_000_000, field_dim=256, history_ids=True)  # 10 G parameters
    message = str(info.value)
    assert "\n" not in message and "20,000,000 items" in message and "GiB" in message, message


@pytest.mark.parametrize(
    "sizes",
    [{}, {"n_items": 500, "n_tags": 40, "n_performers": 30, "n_categorical": (3, 4, 5, 6), "history_ids": True,
          "field_dim": 16, "hidden_dim": 64, "embedding_dim": 48}, {"history_pooling": "mean", "n_items": 77},
     {"user_encoder": "attention"}, {"user_encoder": "attention", "attention_dim": 32, "attention_heads": 4,
                                     "attention_layers": 3, "max_likes": 7, "max_nopes": 0, "n_items": 99}],
)  # fmt: skip
def test_the_parameter_estimate_is_the_model_s_count(sizes: dict[str, object]) -> None:
    from twotower.model.towers import TwoTowerModel

    cfg = TowerConfig(**sizes)  # type: ignore[arg-type]
    assert cfg.parameter_count() == sum(p.numel() for p in TwoTowerModel(cfg).parameters())

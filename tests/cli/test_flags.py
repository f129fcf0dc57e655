"""Command-line flags: `train` and `deploy` take the same training flags (issue 33: `deploy --batch-size auto` was
refused while `train --batch-size auto` worked), and `simulate` refuses bad ones in one line, before any work."""

from __future__ import annotations

import pytest

from tests.conftest import CliRunner


@pytest.mark.parametrize("command", ["train", "deploy"])
def test_batch_size_auto_is_accepted_by_train_and_deploy(cli_in_process: CliRunner, command: str) -> None:
    # auto passes the flag's parsing; --epochs 0 is then refused by the options' own check, before any work
    run = cli_in_process(command, "--batch-size", "auto", "--epochs", "0")
    assert run.returncode == 65, run.stderr
    assert run.stderr.startswith("error: ") and "epochs" in run.stderr and "batch-size" not in run.stderr


@pytest.mark.parametrize("command", ["train", "deploy"])
def test_a_batch_size_that_is_not_a_number_is_one_line(cli_in_process: CliRunner, command: str) -> None:
    run = cli_in_process(command, "--batch-size", "big")
    assert run.returncode == 65 and run.stderr == "error: --batch-size must be 'auto' or an integer, got 'big'\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--users", "-1"), "--users must be at least 0"),
        (("--users", "0"), "nothing to simulate"),
        (("--swipes", "0"), "--swipes must be at least 1"),
        (("--feed", "1000"), "--feed must be at most 100"),
        (("--api", "ftp://example.com"), "--api must be an http(s) URL"),
    ],
)
def test_simulate_refuses_bad_flags_in_one_line(cli_in_process: CliRunner, args: tuple[str, ...], message: str) -> None:
    run = cli_in_process("simulate", *args)
    assert run.returncode == 65 and run.stderr.startswith(f"error: {message}") and run.stderr.count("\n") == 1

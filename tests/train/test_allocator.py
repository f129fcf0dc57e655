"""The allocator setting of the training commands: a loop of a step's tensors stops faulting in fresh pages."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from twotower.cli.app import app
from twotower.train import allocator

_LOOP = """
import resource, sys, torch
from twotower.train.allocator import reuse_freed_memory
if sys.argv[1] == "reuse" and not reuse_freed_memory():
    print("refused"); sys.exit()
def step():  # a step's activations and gradients: 8 MB tensors, all freed at its end
    kept = [torch.ones(2_000_000 + 1000 * i) for i in range(12)]
    del kept
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# what would change glibc's malloc or the pages it gets under the test's feet
_ALLOCATOR_ENV = ("LD_PRELOAD", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE")


def _faults(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _ALLOCATOR_ENV and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_training_process_reuses_freed_memory() -> None:
    reused = _faults("reuse")
    if reused == "refused":
        pytest.skip("this C library refuses the setting")
    default = int(_faults("default"))
    # by default the blocks go back to the kernel and are faulted in again; kept, the same pages come back
    assert default > 1000 and int(reused) < default / 20, (default, reused)


@pytest.mark.parametrize("command", ["train", "tune", "deploy"])
def test_the_training_commands_keep_freed_memory(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    class Called(Exception):
        pass

    def spy() -> bool:
        raise Called

    monkeypatch.setattr(allocator, "reuse_freed_memory", spy)
    result = CliRunner().invoke(app, [command])
    assert isinstance(result.exception, Called), result.output

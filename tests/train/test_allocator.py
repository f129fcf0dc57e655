"""The allocator setting of a training process: a loop of large tensors stops faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

_LOOP = """
import resource, sys, torch
from twotower.train.allocator import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
def step():  # a step's activations and gradients: tensors of a few MB, all freed at its end
    kept = [torch.ones(2_000_000 + 1000 * i) for i in range(12)]
    del kept
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_training_process_reuses_freed_memory() -> None:
    default, reused = _faults("default"), _faults("reuse")
    # by default each 4 MB block is a fresh mmap (a thousand pages faulted in); kept, the same pages come back
    assert default > 100_000 and reused < default / 20, (default, reused)

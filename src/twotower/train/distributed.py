"""Several GPUs (or processes) with ``torchrun``: DistributedDataParallel, each rank a shard of every epoch.

Correct by construction: every rank runs the same number of steps of the same size (the trainer pads the
epoch to a multiple of the world size), every decision that depends on one rank's view (validation, early
stopping, the version name) is taken by rank 0 and broadcast, and only rank 0 writes files and the database
while the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["World"]

_NAME_BYTES = 255  # a version name is at most 128 characters (registry.store.valid_version)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        """Read torchrun's variables; initialise the process group when there is more than one process."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        world = cls(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(world.local_rank)
            dist.init_process_group(backend=backend)
        return world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1 and dist.is_initialized()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if self.size <= 1:
            return model

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def broadcast_floats(self, values: list[float]) -> list[float]:
        """Rank 0's values on every rank (float64)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.broadcast(t, src=0)
        return [float(x) for x in t.cpu().tolist()]

    def sum_floats(self, values: list[float]) -> list[float]:
        """The sum over ranks of each value (float64), on every rank."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return [float(x) for x in t.cpu().tolist()]

    def broadcast_name(self, name: str) -> str:
        """Rank 0's string (at most 255 UTF-8 bytes) on every rank: a fixed-size byte tensor, no pickle."""
        if not self.distributed:
            return name
        data = name.encode()[:_NAME_BYTES] if self.is_main else b""
        t = torch.zeros(_NAME_BYTES + 1, dtype=torch.uint8)
        t[0] = len(data)
        if data:
            t[1 : 1 + len(data)] = torch.tensor(list(data), dtype=torch.uint8)
        t = t.to(self._device())
        dist.broadcast(t, src=0)
        t = t.cpu()
        return bytes(t[1 : 1 + int(t[0])].tolist()).decode()

    def agree_to_stop(self, stop: bool) -> bool:
        """Rank 0 decides (it validates); every rank follows."""
        return self.broadcast_floats([1.0 if stop else 0.0])[0] > 0.5

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

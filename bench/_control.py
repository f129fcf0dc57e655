"""The control of bench/train.py: a minimal training loop of the product's shape with every tensor resident on
the device (after ../shared/tools/probe_gpu_twotower.py): 8 fields of dim 32 per item (id, 16 tags, 4
performers, 4 categorical, 10 numeric), a user = 50 likes + 5 recent + 20 nopes + stats, MLPs 256 -> 64,
in-batch + 2,048 uniform negatives, Adam. No data pipeline, no masks, no logQ: what the hardware allows."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["control_examples_per_second"]

H, HN, RECENT, T, P, D = 50, 20, 5, 16, 4, 32


class _Encoder(nn.Module):
    def __init__(self, n_items: int, tables: dict[str, Tensor]) -> None:
        super().__init__()
        self.t = tables
        self.ids, self.tags, self.perf = nn.Embedding(n_items, D), nn.Embedding(130, D), nn.Embedding(5000, D)
        self.cat = nn.ModuleList(nn.Embedding(500, D) for _ in range(4))
        self.num = nn.Linear(10, D)

    def forward(self, items: Tensor, w: Tensor) -> Tensor:  # [B, L], [B, L] -> [B, 8 D]
        b, length = items.shape
        parts = [F.embedding_bag(items, self.ids.weight, mode="sum", per_sample_weights=w)]
        for table, codes in ((self.tags, self.t["tags"]), (self.perf, self.t["perf"])):
            c = codes[items]
            k = c.shape[-1]
            weights = (w[..., None] / k).expand(b, length, k).reshape(b, -1)
            parts.append(F.embedding_bag(c.reshape(b, -1), table.weight, mode="sum", per_sample_weights=weights))
        for j, table in enumerate(self.cat):
            parts.append(F.embedding_bag(self.t["cat"][items, j], table.weight, mode="sum", per_sample_weights=w))
        parts.append(self.num((self.t["num"][items] * w[..., None]).sum(1)))
        return torch.cat(parts, -1)


class _TwoTower(nn.Module):
    def __init__(self, n_items: int, tables: dict[str, Tensor]) -> None:
        super().__init__()
        self.enc, self.t, d = _Encoder(n_items, tables), tables, 8 * D
        self.item = nn.Sequential(nn.Linear(d, 256), nn.GELU(), nn.Linear(256, 64))
        self.user = nn.Sequential(nn.Linear(3 * d + 3, 256), nn.GELU(), nn.Linear(256, 64))

    def items(self, ids: Tensor) -> Tensor:
        return F.normalize(self.item(self.enc(ids[:, None], torch.ones(len(ids), 1, device=ids.device))), dim=-1)

    def users(self, u: Tensor) -> Tensor:
        h, n = self.t["hist"][u], self.t["nope"][u]
        x = torch.cat([self.enc(h, torch.full(h.shape, 1.0 / H, device=h.device)),
                       self.enc(h[:, :RECENT], torch.full((len(u), RECENT), 1.0 / RECENT, device=h.device)),
                       self.enc(n, torch.full(n.shape, 1.0 / HN, device=h.device)),
                       torch.zeros(len(u), 3, device=h.device)], -1)  # fmt: skip
        return F.normalize(self.user(x), dim=-1)


def control_examples_per_second(
    device: torch.device, batch_size: int, n_items: int, n_users: int, steps: int, bf16: bool = False
) -> float:
    """Examples/s of ``steps`` steps (after 3 warm-up steps) of the minimal device-resident loop."""
    g = torch.Generator().manual_seed(0)
    tables = {
        "tags": torch.randint(1, 130, (n_items, T), generator=g).to(device),
        "perf": torch.randint(1, 5000, (n_items, P), generator=g).to(device),
        "cat": torch.randint(1, 500, (n_items, 4), generator=g).to(device),
        "num": torch.randn(n_items, 10, generator=g).to(device),
        "hist": torch.randint(0, n_items, (n_users, H), generator=g).to(device),
        "nope": torch.randint(0, n_items, (n_users, HN), generator=g).to(device),
    }
    torch.manual_seed(0)
    model = _TwoTower(n_items, tables).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        u = torch.randint(0, n_users, (batch_size,), device=device)
        pos = torch.randint(0, n_items, (batch_size,), device=device)
        neg = torch.randint(0, n_items, (2048,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = (model.users(u) @ model.items(torch.cat([pos, neg])).T).float() / 0.05
        loss = F.cross_entropy(logits, torch.arange(batch_size, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started)

"""The training optimizer: Adam, with the item-ID tables updated row by row when the catalog is large.

A dense Adam step reads and writes every row of every table, and the dense gradient of an ID table is a
``[n_items, d]`` zero-filled array built anew each step: at 1M videos (749k ID rows) the ID tables alone cost
about 0.1 s of a 0.27 s CPU step, whatever the batch (bench/scale.py, issue 31), so an epoch grew faster than the
data. Above ``SPARSE_IDS_FROM`` rows a CPU trainer gives those tables sparse gradients (only the rows a step
looked up) and ``SplitAdam`` updates them with ``torch.optim.SparseAdam``: the "lazy Adam" that large-vocabulary
embedding training uses (the moments of a row move only when the row is looked up in a step, with a zero weight
too); every other parameter keeps the fused dense Adam.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from twotower.model.towers import TwoTowerModel

__all__ = ["SPARSE_IDS_FROM", "SplitAdam", "build_optimizer", "id_tables", "use_sparse_ids"]

# ID-table rows from which a CPU step updates only the rows it looked up. Measured on bench/scale.py's data, 2
# cores, batch 512, 60 steps of each in turn, twice: 78k rows (100k videos) dense 0.20-0.21 s a step, sparse
# 0.23; 749k rows (1M videos) dense 0.28-0.31, sparse 0.20-0.22. Below, the dense update is cheaper, and it is the
# exact Adam the quality benches were tuned with.
SPARSE_IDS_FROM = 200_000


def build_optimizer(
    model: TwoTowerModel, learning_rate: float, weight_decay: float, id_weight_decay: float, sparse_ids: bool
) -> torch.optim.Optimizer | SplitAdam:
    """The trainer's optimizer: ``SplitAdam`` with ``sparse_ids``; else fused Adam, or AdamW with a decoupled
    weight decay of ``id_weight_decay`` on the ID embeddings alone."""
    # fused: one pass over each parameter's memory, not one per arithmetic step (on a CPU the unfused update of
    # the bench's 78k x 32 ID table and the rest costs 2-8 ms a step, the fused one about 1 ms)
    if sparse_ids:
        rows = {id(t) for t in id_tables(model)}
        use_sparse_ids(model)
        return SplitAdam([p for p in model.parameters() if id(p) not in rows], id_tables(model), learning_rate)
    if id_weight_decay <= 0:
        return torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay, fused=True)
    tables = [model.encoder.ids.weight]
    if model.encoder.context_ids is not None:
        tables.append(model.encoder.context_ids.weight)
    ids = {id(t) for t in tables}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return torch.optim.AdamW(
        [{"params": tables, "weight_decay": id_weight_decay}, {"params": rest, "weight_decay": weight_decay}],
        lr=learning_rate, fused=True,
    )  # fmt: skip


def id_tables(model: TwoTowerModel) -> list[torch.Tensor]:
    """The parameters with a row per catalog item: the ID embeddings (candidate and context) and the learned
    pooling score of a liked item."""
    enc = model.encoder
    tables = [enc.ids.weight]
    if enc.context_ids is not None:
        tables.append(enc.context_ids.weight)
    like_score = getattr(model, "like_score", None)  # with history_pooling "learned"
    if isinstance(like_score, nn.Embedding):
        tables.append(like_score.weight)
    return tables


def use_sparse_ids(model: TwoTowerModel) -> None:
    """Give the ID tables sparse gradients from now on (training only: export and inference never see them)."""
    model.encoder.sparse_ids = True  # the ID tables, looked up by ``_fused_sums``
    like_score = getattr(model, "like_score", None)
    if isinstance(like_score, nn.Embedding):
        like_score.sparse = True


class SplitAdam:
    """Fused Adam over the dense parameters and SparseAdam over the sparse ID tables, as one optimizer: the
    trainer and the checkpoints see one ``param_groups`` list and one ``state_dict`` (the sparse groups last, their
    parameters numbered after the dense ones)."""

    def __init__(self, dense: list[torch.Tensor], sparse: list[torch.Tensor], lr: float) -> None:
        self.dense = torch.optim.Adam(dense, lr=lr, fused=True)
        self.sparse = torch.optim.SparseAdam(sparse, lr=lr)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.dense.param_groups, *self.sparse.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()  # type: ignore[no-untyped-call]

    def _n_dense(self) -> int:
        return sum(len(g["params"]) for g in self.dense.param_groups)

    def state_dict(self) -> dict[str, Any]:
        dense, sparse, n = self.dense.state_dict(), self.sparse.state_dict(), self._n_dense()
        return {
            "state": {**dense["state"], **{n + k: v for k, v in sparse["state"].items()}},
            "param_groups": [*dense["param_groups"],
                             *({**g, "params": [n + i for i in g["params"]]} for g in sparse["param_groups"])],
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        k, n = len(self.dense.param_groups), self._n_dense()
        groups, state = state_dict["param_groups"], state_dict["state"]
        self.dense.load_state_dict({"state": {i: v for i, v in state.items() if i < n}, "param_groups": groups[:k]})
        # SparseAdam counts its steps in a Python int (its bias correction in float64); a checkpoint stores a tensor
        self.sparse.load_state_dict({
            "state": {i - n: {**v, "step": int(v["step"])} if "step" in v else v for i, v in state.items() if i >= n},
            "param_groups": [{**g, "params": [i - n for i in g["params"]]} for g in groups[k:]],
        })  # fmt: skip

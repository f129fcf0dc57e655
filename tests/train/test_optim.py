"""A large catalog's ID tables train with sparse gradients and lazy Adam (``train.optim``, issue 31): chosen by
catalog size on a CPU, the same training as the dense Adam to within the lazy update's difference, and resumable
from a checkpoint exactly as the dense optimizer is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.test_batches import _trainer as small_trainer
from twotower.errors import InputError
from twotower.train import trainer as trainer_module
from twotower.train.checkpoint import load_checkpoint, save_checkpoint
from twotower.train.optim import SplitAdam, id_tables
from twotower.train.trainer import TrainConfig, Trainer


def _trainer(**config: object) -> Trainer:
    torch.manual_seed(0)
    return small_trainer(TrainConfig(batch_size=64, seed=3, **config))  # type: ignore[arg-type]


def test_the_catalog_size_chooses_sparse_id_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _trainer().sparse_ids  # 61 rows: the dense Adam
    assert isinstance(_trainer().optimizer, torch.optim.Adam)
    monkeypatch.setattr(trainer_module, "SPARSE_IDS_FROM", 61)
    chosen = _trainer()
    assert chosen.sparse_ids and isinstance(chosen.optimizer, SplitAdam)
    assert not _trainer(weight_decay=1e-4).sparse_ids  # SparseAdam has no weight decay
    assert not _trainer(id_weight_decay=1e-4).sparse_ids
    assert not _trainer(sparse_ids=False).sparse_ids  # an explicit choice wins
    with pytest.raises(InputError, match="no weight decay"):  # never a decay silently dropped
        _trainer(sparse_ids=True, weight_decay=1e-4)


def test_a_step_gives_the_id_tables_gradients_of_the_rows_it_looked_up_only() -> None:
    trainer = _trainer(sparse_ids=True)
    trainer.train_model.train()
    states = torch.arange(64)
    loss = trainer._batch_loss(states, trainer.batches.liked_total(trainer.ex_users[:64]), torch.Generator())
    loss.backward()  # type: ignore[no-untyped-call]
    tables = id_tables(trainer.model)
    assert len(tables) == 2  # the ID embeddings and the learned pooling score
    for table in tables:
        assert table.grad is not None and table.grad.is_sparse
        touched = table.grad.coalesce().indices()[0].unique()
        assert 0 < touched.numel() < table.shape[0]
    dense = [p for p in trainer.model.parameters() if all(p is not t for t in tables) and p.grad is not None]
    assert dense and not any(p.grad.is_sparse for p in dense)  # type: ignore[union-attr]


def test_lazy_adam_trains_as_the_dense_adam_does() -> None:
    dense, sparse = _trainer(sparse_ids=False), _trainer(sparse_ids=True)
    for epoch in (1, 2, 3):
        a, b = dense.train_epoch(epoch), sparse.train_epoch(epoch)
    assert b.loss == pytest.approx(a.loss, rel=1e-3)
    assert b.loss < sparse.state.history[0].loss  # it learns


def test_a_sparse_run_resumes_from_its_checkpoint_as_the_uninterrupted_run(tmp_path: Path) -> None:
    straight = _trainer(sparse_ids=True)
    straight.train_epoch(1)
    save_checkpoint(straight, tmp_path)
    resumed = _trainer(sparse_ids=True)
    assert load_checkpoint(resumed, tmp_path)
    assert isinstance(resumed.optimizer, SplitAdam)
    saved, loaded = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    n_dense = len(saved["param_groups"][0]["params"])
    assert saved["state"].keys() == loaded["state"].keys() >= {n_dense, n_dense + 1}  # the ID tables' moments
    for pid, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded["state"][pid][key])), (pid, key)
    assert isinstance(resumed.optimizer, SplitAdam)
    assert all(type(state["step"]) is int for state in resumed.optimizer.sparse.state.values())  # float64 bias terms
    assert straight.train_epoch(2).loss == resumed.train_epoch(2).loss
    for name, weights in straight.model.state_dict().items():  # bit for bit, not only the mean loss
        assert torch.equal(weights, resumed.model.state_dict()[name]), name

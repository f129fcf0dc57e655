"""The device-resident batch builder gives the numpy builder's inputs; a step never waits for the device; epoch shards
are equal; NaN never wins."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from twotower.features.decisions import DecisionLog
from twotower.features.examples import Histories
from twotower.features.history import HistoryConfig
from twotower.train.batches import DeviceHistories
from twotower.train.tables import FeatureTables
from twotower.train.trainer import EpochStats, TrainConfig, Trainer, epoch_shard


def _log(n_users: int = 40, n_items: int = 60, per_user: int = 30, seed: int = 0) -> DecisionLog:
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), rng.integers(1, per_user, n_users)).astype(np.int32)
    ts = np.concatenate([np.sort(rng.random((user == u).sum())) * 1e6 for u in range(n_users)])
    item = rng.integers(0, n_items, user.size).astype(np.int32)
    return DecisionLog([uuid.uuid4() for _ in range(n_users)], user, item, rng.random(user.size) < 0.6, ts)


def test_device_batches_match_the_numpy_builder() -> None:
    log = _log()
    hist = Histories(log, np.ones(len(log), dtype=bool), 60, HistoryConfig(max_likes=7, max_nopes=4))
    dev = DeviceHistories(hist, torch.device("cpu"))
    users, _, p, q = hist.examples()
    pick = np.arange(0, users.size, 3)
    expected = hist.batch(users[pick], p[pick], q[pick])
    got = dev.user_batch(*(torch.from_numpy(a[pick]) for a in (users, p, q)))
    arrays = (expected.like_rows, expected.like_mask, expected.nope_rows, expected.nope_mask, expected.stats)
    for want, have in zip(arrays, got, strict=True):
        np.testing.assert_allclose(have.numpy(), want, rtol=1e-6)
    # whole profiles too, and every like of each user as (row, item) pairs, counted on the host
    some = np.flatnonzero(hist.like_count > 0)[:9]
    whole = hist.batch(some)
    got = dev.user_batch(torch.from_numpy(some))
    np.testing.assert_array_equal(got[0].numpy(), whole.like_rows)
    rows, items = dev.liked(torch.from_numpy(some), dev.liked_total(some))
    for r, u in enumerate(some):
        mine = np.sort(items[rows == r].numpy())
        np.testing.assert_array_equal(
            mine, np.sort(hist.like_items[hist.like_start[u] : hist.like_start[u] + hist.like_count[u]])
        )
    gen = torch.Generator().manual_seed(0)
    nopes, has = dev.sample_nopes(torch.from_numpy(some), gen)
    for u, n, h in zip(some, nopes.tolist(), has.tolist(), strict=True):
        own = hist.nope_items[hist.nope_start[u] : hist.nope_start[u] + hist.nope_count[u]]
        assert (n in own) if h else (n == hist.pad_row and own.size == 0)
    targets, mask = dev.hide_likes(torch.from_numpy(some), 2, gen, got[1].clone())
    for r, u in enumerate(some):  # targets are the user's likes; what is hidden was in the window
        own = hist.like_items[hist.like_start[u] : hist.like_start[u] + hist.like_count[u]]
        assert set(targets[2 * r : 2 * r + 2].tolist()) <= set(own.tolist())
        assert 0 < got[1][r].sum() - mask[r].sum() <= 2 or hist.like_count[u] > 7


def test_next_likes_are_the_like_after_a_history_and_the_ones_after_it() -> None:
    log = _log()
    hist = Histories(log, np.ones(len(log), dtype=bool), 60, HistoryConfig(max_likes=7, max_nopes=4))
    dev = DeviceHistories(hist, torch.device("cpu"))
    users, items, p, _ = hist.examples()
    got = dev.next_likes(torch.from_numpy(users), torch.from_numpy(p), 3).reshape(-1, 3).numpy()
    for (u, before), row, first in zip(zip(users, p, strict=True), got, items, strict=True):
        following = hist.like_items[hist.like_start[u] + before : hist.like_start[u] + hist.like_count[u]]
        assert row[0] == first  # the example's own target comes first
        # the next three; near the end of a history the ones left, in turn
        np.testing.assert_array_equal(row, following[np.arange(3) % following.size])
    assert (hist.like_count[users] - p >= 3).any() and (hist.like_count[users] - p == 1).any()


@pytest.mark.parametrize(
    ("tower", "sampled"),
    [
        ({"next_likes": 3}, False),
        ({"next_likes": 1}, False),
        ({"next_likes": 1, "target_window": 4, "targets_per_history": 2}, True),
    ],
)
def test_an_epoch_visits_every_user_state_with_its_next_likes(tower: dict[str, Any], sampled: bool) -> None:
    """Every user state once per epoch with its k positives; sampled targets visit 1/k of the states."""
    trainer = _trainer(TrainConfig(batch_size=64, seed=3), **tower)
    k, n = trainer.cfg.positives_per_state, trainer.n_examples
    assert trainer.positives_per_epoch == (-(-n // k) if sampled else n) * k
    seen: list[int] = []
    batch_loss = trainer._batch_loss

    def spy(states: torch.Tensor, liked_total: int, gen: torch.Generator) -> torch.Tensor:
        seen.extend(states.tolist())
        return batch_loss(states, liked_total, gen)

    trainer._batch_loss = spy  # type: ignore[method-assign]
    stats = trainer.train_epoch(1)
    assert stats.examples == trainer.positives_per_epoch and np.isfinite(stats.loss)
    assert len(seen) == len(set(seen)) == (-(-n // k) if sampled else n)  # each state once; all of them unsampled
    # a last batch of one state with one positive is skipped, and counted so
    for batch in (n - 1, 1 << 20):
        one = _trainer(TrainConfig(batch_size=batch, seed=3), next_likes=1)
        assert one.positives_per_epoch == (n - 1 if batch == n - 1 else n)


def test_epoch_shards_are_equal_and_cover_the_epoch() -> None:
    for n in (1, 2, 7, 1027):
        for world in (1, 2, 3):
            shards = [epoch_shard(np.arange(n), r, world) for r in range(world)]
            assert len({s.size for s in shards}) == 1
            assert set(np.concatenate(shards).tolist()) == set(range(n))
            assert sum(s.size for s in shards) < n + world


def _tables() -> FeatureTables:
    """The item features of ``_log``'s 60 items (plus the padding row), as ``FeatureTables`` reads them."""
    from twotower.train.tables import FeatureTables

    class _Features:  # the fields FeatureTables reads
        def with_padding_row(self) -> _Features:
            return self

        def __len__(self) -> int:
            return 60

    rng = np.random.default_rng(1)
    f = _Features()
    f.item_id = np.arange(61)  # type: ignore[attr-defined]
    f.tags, f.performers = rng.integers(0, 9, (61, 4)), rng.integers(0, 5, (61, 2))  # type: ignore[attr-defined]
    f.categorical = rng.integers(0, 3, (61, 4))  # type: ignore[attr-defined]
    f.numeric = rng.random((61, 10)).astype(np.float32)  # type: ignore[attr-defined]
    return FeatureTables(f, torch.device("cpu"))  # type: ignore[arg-type]


def _trainer(config: TrainConfig, **tower: Any) -> Trainer:
    """A trainer of a small model on ``_log``'s users and ``_tables``' items (histories of 7 likes, 4 nopes)."""
    from twotower.model.config import TowerConfig
    from twotower.model.towers import TwoTowerModel

    log = _log(per_user=40)
    hist = Histories(log, np.ones(len(log), dtype=bool), 60, HistoryConfig(max_likes=7, max_nopes=4))
    cfg = TowerConfig(n_items=61, n_tags=9, n_performers=5, n_categorical=(3, 3, 3, 3), max_tags=4, max_performers=2,
                      max_likes=7, max_nopes=4, **tower)  # fmt: skip
    return Trainer(TwoTowerModel(cfg), _tables(), hist, config)


# ops that make the host wait for the device (a scalar read, or an output whose size depends on the data), or
# copy from the host (a tensor made from Python values)
_SYNCS = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
          "unique_consecutive", "unique_dim_consecutive", "equal", "allclose", "bincount", "lift_fresh"}  # fmt: skip
_MASKED = {"index", "index_put", "index_put_", "_index_put_impl_"}  # with a bool mask: the size of its True set


class _SyncSpy(TorchDispatchMode):
    """Every aten op run inside, and the ones that would wait for a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.__name__.split(".")[0]
        self.ops.add(name)
        kwargs = kwargs or {}
        bool_index = name in _MASKED and any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])
        unsized = name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and len(args) == 1 and \
            kwargs.get("output_size") is None  # fmt: skip
        if name in _SYNCS or bool_index or unsized:
            self.syncs.append(str(func))
        return func(*args, **kwargs)


def _recorded(method: Any, calls: list[str]) -> Any:
    """``method``, noting its name in ``calls`` on every call."""

    def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(method.__name__)
        return method(self, *args, **kwargs)

    return call


@pytest.mark.parametrize(
    "tower",
    [
        {},
        {"target_window": 3, "targets_per_history": 2, "next_likes": 1},
        {"history": "profile", "targets_per_history": 2},
    ],
)
def test_a_training_step_never_waits_for_the_device(tower: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """The step a GPU runs, checked on the CPU: building the batch from the device-resident index, both towers,
    the loss, the backward pass and Adam run no op that reads a value back to the host (``.item()``, a bool of a
    tensor, ``tolist``) or whose output size depends on the data (``nonzero``, bool masks, ``unique``,
    ``bincount``), and makes no tensor from host values: every size is known on the host before the step. On a GPU
    each of those would stall the step until the device caught up. (A GPU run would add
    ``torch.cuda.set_sync_debug_mode("error")``, which also sees syncs inside kernels.)"""
    trainer = _trainer(TrainConfig(batch_size=32), **tower)
    assert trainer.model.encoder.compact  # a CPU's trainer leaves the bags' zero-weight entries out ...
    trainer.model.encoder.compact = False  # ... as an accelerator's does not: its sizes depend on the data
    trainer.model.train()
    k = trainer.cfg.positives_per_state
    order = np.arange(trainer.n_examples)[: 32 // k]
    states = torch.from_numpy(order)
    liked = trainer.batches.liked_total(trainer.ex_users[order])
    gen = torch.Generator().manual_seed(0)
    reads: list[str] = []  # reads to the host that send no op through the spy on a CPU
    for method in ("item", "tolist", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, method, _recorded(getattr(torch.Tensor, method), reads))
    with _SyncSpy() as spy:
        loss = trainer._batch_loss(states, liked, gen)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        trainer.optimizer.step()
    assert {"_embedding_bag", "_fused_adam_", "mm"} <= spy.ops  # the spy saw the step
    monkeypatch.undo()
    assert spy.syncs == [] and reads == []
    assert torch.isfinite(loss.detach())


def test_a_nan_validation_figure_is_not_an_improvement() -> None:
    from twotower.model.config import TowerConfig
    from twotower.model.towers import TwoTowerModel

    log = _log()
    hist = Histories(log, np.ones(len(log), dtype=bool), 60, HistoryConfig())
    tables = _tables()
    model = TwoTowerModel(TowerConfig(n_items=61, max_tags=4, max_performers=2))
    valid = (np.array([0, 1]), [np.array([1]), np.array([2])])
    trainer = Trainer(model, tables, hist, TrainConfig(), valid=valid)
    assert trainer.improved(EpochStats(1, 1.0, 0.1, 10, 1.0))
    assert not trainer.improved(EpochStats(2, 1.0, float("nan"), 10, 1.0))
    assert trainer.state.best_epoch == 1 and trainer.state.best_recall == 0.1
    refit = Trainer(model, tables, hist, TrainConfig(), valid=None)  # no validation: the latest epoch is the best
    assert refit.improved(EpochStats(1, 1.0, float("nan"), 10, 1.0)) and refit.improved(
        EpochStats(2, 1.0, float("nan"), 10, 1.0)
    )

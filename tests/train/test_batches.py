"""The device-resident batch builder gives the numpy builder's inputs; epoch shards are equal; NaN never wins."""

from __future__ import annotations

import uuid

import numpy as np
import torch

from twotower.features.decisions import DecisionLog
from twotower.features.examples import Histories
from twotower.features.history import HistoryConfig
from twotower.train.batches import DeviceHistories
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


def test_epoch_shards_are_equal_and_cover_the_epoch() -> None:
    for n in (1, 2, 7, 1027):
        for world in (1, 2, 3):
            shards = [epoch_shard(np.arange(n), r, world) for r in range(world)]
            assert len({s.size for s in shards}) == 1
            assert set(np.concatenate(shards).tolist()) == set(range(n))
            assert sum(s.size for s in shards) < n + world


def test_a_nan_validation_figure_is_not_an_improvement() -> None:
    from twotower.model.config import TowerConfig
    from twotower.model.towers import TwoTowerModel
    from twotower.train.tables import FeatureTables

    log = _log()
    hist = Histories(log, np.ones(len(log), dtype=bool), 60, HistoryConfig())

    class _Features:  # the fields FeatureTables reads
        def with_padding_row(self) -> _Features:
            return self

        def __len__(self) -> int:
            return 60

    f = _Features()
    f.item_id = np.arange(61)  # type: ignore[attr-defined]
    f.tags, f.performers = np.zeros((61, 4), np.int64), np.zeros((61, 2), np.int64)  # type: ignore[attr-defined]
    f.categorical, f.numeric = np.zeros((61, 4), np.int64), np.zeros((61, 10), np.float32)  # type: ignore[attr-defined]
    tables = FeatureTables(f, torch.device("cpu"))  # type: ignore[arg-type]
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

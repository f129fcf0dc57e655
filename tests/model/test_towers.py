from __future__ import annotations

import pytest
import torch

from twotower.errors import InputError
from twotower.model import TowerConfig, TwoTowerModel, retrieval_loss


def _cfg(**kw: object) -> TowerConfig:
    return TowerConfig(n_items=50, n_tags=20, n_performers=10, n_categorical=(5, 5, 5, 5), **kw)  # type: ignore[arg-type]


def _items(n: int, cfg: TowerConfig) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(0, cfg.n_items, (n,), generator=g),
        torch.randint(0, cfg.n_tags, (n, cfg.max_tags), generator=g),
        torch.randint(0, cfg.n_performers, (n, cfg.max_performers), generator=g),
        torch.randint(0, 5, (n, 4), generator=g),
        torch.randn(n, cfg.numeric_width, generator=g),
    )


def _users(b: int, cfg: TowerConfig) -> tuple[torch.Tensor, ...]:
    def hist(h: int) -> tuple[torch.Tensor, ...]:
        items = _items(b * h, cfg)
        shaped = tuple(t.reshape(b, h, *t.shape[1:]) for t in items)
        mask = (torch.arange(h)[None, :] < torch.arange(b)[:, None] % (h + 1)).float()
        return (*shaped, mask)

    return (*hist(cfg.max_likes), *hist(cfg.max_nopes), torch.rand(b, cfg.stats_width))


@pytest.mark.parametrize("dim", [32, 64, 128])
def test_towers_return_unit_vectors(dim: int) -> None:
    cfg = _cfg(embedding_dim=dim)
    model = TwoTowerModel(cfg).eval()
    v = model.item_tower(*_items(7, cfg))
    u = model.user_tower(*_users(5, cfg))
    assert v.shape == (7, dim) and u.shape == (5, dim)
    assert torch.allclose(v.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(u.norm(dim=-1), torch.ones(5), atol=1e-5)  # an empty history too (row 0)


def test_fused_and_export_paths_agree() -> None:
    cfg = _cfg()
    model = TwoTowerModel(cfg).eval()
    users, items = _users(6, cfg), _items(9, cfg)
    fused = model.user_tower(*users), model.item_tower(*items)
    model.encoder.fused = False
    plain = model.user_tower(*users), model.item_tower(*items)
    for a, b in zip(fused, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_loss_masks_accidental_hits_and_missing_hard_negatives() -> None:
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    u[2] = u[0]  # two examples of the same user and item in one batch
    v = u.clone()  # each user's positive equals the user: a perfect model
    ids = torch.tensor([1, 2, 1, 3])  # item 1 twice: not a negative for each other
    log_q = torch.zeros(4)
    hard_mask = torch.tensor([True, False, True, False])
    loss = retrieval_loss(u, v, ids, log_q, 0.05, hard=-u, hard_mask=hard_mask)
    assert torch.isfinite(loss)
    # without the accidental-hit mask the duplicate would count as a negative as strong as the positive
    unmasked = torch.nn.functional.cross_entropy(u @ v.T / 0.05, torch.arange(4))
    assert loss < 0.01 and unmasked > 0.3  # two of four rows lose log(2)


def test_logq_correction_favours_rare_items() -> None:
    u = torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
    v = u.clone()
    ids = torch.tensor([0, 1])
    popular_first = retrieval_loss(u, v, ids, torch.tensor([2.0, -2.0]), 1.0)
    popular_second = retrieval_loss(u, v, ids, torch.tensor([-2.0, 2.0]), 1.0)
    assert torch.isclose(popular_first, popular_second)  # symmetric: correction applied to every column


@pytest.mark.parametrize("dim", [0, 5000, 16])
def test_embedding_dim_bounds(dim: int) -> None:
    with pytest.raises(InputError, match="embedding-dim"):
        TowerConfig(embedding_dim=dim)

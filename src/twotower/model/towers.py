"""The two towers. Both return L2-normalised embeddings ``[batch, embedding_dim]``.

Items and histories are encoded by one shared ``ItemEncoder``: for a set of items with weights, it returns the
weighted sum of each field's embeddings — ``[batch, encoder_dim]``. The item tower encodes one item (weight 1);
the user tower encodes the mean of their recent likes, of their very latest likes, and of their nopes, with
their statistics. So a brand-new user (a few swipes) and a brand-new video (content only) need no retraining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from twotower.features.vocab import OOV
from twotower.model.config import TowerConfig

__all__ = ["ItemEncoder", "TwoTowerModel"]


def _bag(table: nn.Embedding, codes: Tensor, weights: Tensor, fused: bool) -> Tensor:
    """Weighted sum of embeddings: codes, weights ``[B, L]`` → ``[B, d]``.

    Training uses the fused ``embedding_bag`` (no ``[B, L, d]`` intermediate); export uses plain gathers, which
    every ONNX runtime supports. Both compute the same sum.
    """
    if fused:
        bag: Tensor = F.embedding_bag(codes, table.weight, mode="sum", per_sample_weights=weights)
        return bag
    gathered: Tensor = table(codes)
    return (gathered * weights.unsqueeze(-1)).sum(dim=1)


class ItemEncoder(nn.Module):
    """Field embeddings shared by both towers."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        d = cfg.field_dim
        self.cfg = cfg
        self.ids = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.tags = nn.Embedding(cfg.n_tags, d, padding_idx=0)
        self.performers = nn.Embedding(cfg.n_performers, d, padding_idx=0)
        self.categorical = nn.ModuleList(nn.Embedding(n, d, padding_idx=0) for n in cfg.n_categorical)
        self.numeric = nn.Linear(cfg.numeric_width, d)
        self.out_dim = d * (4 + len(cfg.n_categorical))
        self.fused = True
        for emb in (self.ids, self.tags, self.performers, *self.categorical):
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()

    def drop_ids(self, item_id: Tensor) -> Tensor:
        """ID-dropout: in training, hide known IDs at random so the content path learns to stand alone."""
        if not self.training or self.cfg.id_dropout <= 0:
            return item_id
        hide = (torch.rand(item_id.shape, device=item_id.device) < self.cfg.id_dropout) & (item_id > OOV)
        return torch.where(hide, torch.full_like(item_id, OOV), item_id)

    def forward(
        self,
        item_id: Tensor,  # [B, L]
        tags: Tensor,  # [B, L, T]
        performers: Tensor,  # [B, L, P]
        categorical: Tensor,  # [B, L, 4]
        numeric: Tensor,  # [B, L, F]
        weights: Tensor,  # [B, L]: each item's weight (1/n for a mean over n items, 0 for padding)
    ) -> Tensor:
        b = item_id.shape[0]
        parts = [_bag(self.ids, self.drop_ids(item_id), weights, self.fused)]
        for table, codes in ((self.tags, tags), (self.performers, performers)):
            present = (codes > 0).to(weights.dtype)
            per_item = present / present.sum(-1, keepdim=True).clamp(min=1.0)
            w = (per_item * weights.unsqueeze(-1)).reshape(b, -1)
            parts.append(_bag(table, codes.reshape(b, -1), w, self.fused))
        for j, field in enumerate(self.categorical):
            assert isinstance(field, nn.Embedding)
            parts.append(_bag(field, categorical[..., j], weights, self.fused))
        # a linear map commutes with the weighted mean: project the mean of the numeric features
        total = weights.sum(-1, keepdim=True)
        mean_numeric = (numeric * weights.unsqueeze(-1)).sum(1)
        parts.append(self.numeric(mean_numeric) * (total > 0).to(numeric.dtype))
        return torch.cat(parts, dim=-1)


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    # one hidden layer: on a 2-core CPU the towers must train at tens of thousands of examples a second
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class TwoTowerModel(nn.Module):
    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ItemEncoder(cfg)
        d = self.encoder.out_dim
        self.item_head = _mlp(d, cfg.hidden_dim, cfg.embedding_dim, cfg.dropout)
        self.user_head = _mlp(3 * d + cfg.stats_width, cfg.hidden_dim, cfg.embedding_dim, cfg.dropout)

    def forward(self, user_inputs: tuple[Tensor, ...], item_inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Both towers in one call (what DistributedDataParallel wraps): ``([B, dim], [N, dim])``."""
        return self.user_tower(*user_inputs), self.item_tower(*item_inputs)

    def item_tower(
        self, item_id: Tensor, tags: Tensor, performers: Tensor, categorical: Tensor, numeric: Tensor
    ) -> Tensor:
        """``[N]``, ``[N, T]``, ``[N, P]``, ``[N, 4]``, ``[N, F]`` → ``[N, dim]``."""
        ones = torch.ones(item_id.shape[0], 1, dtype=numeric.dtype, device=numeric.device)
        x = self.encoder(
            item_id[:, None], tags[:, None], performers[:, None], categorical[:, None], numeric[:, None], ones
        )
        return F.normalize(self.item_head(x), dim=-1)

    def user_tower(
        self,
        like_item_id: Tensor,  # [B, H] most recent first
        like_tags: Tensor,  # [B, H, T]
        like_performers: Tensor,  # [B, H, P]
        like_categorical: Tensor,  # [B, H, 4]
        like_numeric: Tensor,  # [B, H, F]
        like_mask: Tensor,  # [B, H] 1.0 where a slot holds an item
        nope_item_id: Tensor,  # [B, Hn]
        nope_tags: Tensor,
        nope_performers: Tensor,
        nope_categorical: Tensor,
        nope_numeric: Tensor,
        nope_mask: Tensor,  # [B, Hn]
        stats: Tensor,  # [B, S]
    ) -> Tensor:
        """The user's embedding from their recent decisions, computed at request time. ``[B, dim]``."""
        k = self.cfg.recent_likes  # a constant slice: shorter histories just give fewer columns (ONNX-friendly)
        # a history item contributes its first few tags and performers: enough for taste, much cheaper
        t, q = self.cfg.history_tags, self.cfg.history_performers
        like_tags, like_performers = like_tags[..., :t], like_performers[..., :q]
        nope_tags, nope_performers = nope_tags[..., :t], nope_performers[..., :q]

        def mean(mask: Tensor) -> Tensor:
            return mask / mask.sum(-1, keepdim=True).clamp(min=1.0)

        likes = self.encoder(like_item_id, like_tags, like_performers, like_categorical, like_numeric, mean(like_mask))
        recent = self.encoder(
            like_item_id[:, :k], like_tags[:, :k], like_performers[:, :k], like_categorical[:, :k],
            like_numeric[:, :k], mean(like_mask[:, :k]),
        )  # fmt: skip
        nopes = self.encoder(nope_item_id, nope_tags, nope_performers, nope_categorical, nope_numeric, mean(nope_mask))
        return F.normalize(self.user_head(torch.cat([likes, recent, nopes, stats], dim=-1)), dim=-1)

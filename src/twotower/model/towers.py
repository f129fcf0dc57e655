"""The two towers. Both return L2-normalised embeddings ``[batch, embedding_dim]``.

Items and histories are encoded by one shared ``ItemEncoder``: for a set of items with weights, it returns the
weighted sum of each field's embeddings — ``[batch, encoder_dim]``. The item tower encodes one item (weight 1);
the user tower encodes the mean (or learned weighting, ``history_pooling``) of their recent likes, the mean of
their very latest likes and of their nopes, with their statistics. With ``history_ids`` an item read as
history has an ID embedding of its own, apart from the one it has as a candidate (content stays shared). So a
brand-new user (a few swipes) and a brand-new video (content only) need no retraining.
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
        # the ID embedding of an item as someone's history (context), apart from it as a candidate
        self.context_ids = nn.Embedding(cfg.n_items, d, padding_idx=0) if cfg.history_ids else None
        self.tags = nn.Embedding(cfg.n_tags, d, padding_idx=0)
        self.performers = nn.Embedding(cfg.n_performers, d, padding_idx=0)
        self.categorical = nn.ModuleList(nn.Embedding(n, d, padding_idx=0) for n in cfg.n_categorical)
        self.numeric = nn.Linear(cfg.numeric_width, d)
        self.out_dim = d * (4 + len(cfg.n_categorical))
        self.fused = True
        tables = [self.ids, self.tags, self.performers, *self.categorical]
        if self.context_ids is not None:
            tables.append(self.context_ids)
        for emb in tables:
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
        context: bool = False,  # the items are a user's history: their context ID embeddings, if any
    ) -> Tensor:
        b = item_id.shape[0]
        ids = self.context_ids if context and self.context_ids is not None else self.ids
        parts = [_bag(ids, self.drop_ids(item_id), weights, self.fused)]
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
        if cfg.history_pooling == "learned":
            # pooling weight of a like ∝ exp(score of the item - slope · log(1 + its age in likes)); both start
            # at 0 (a plain mean), so the model only departs from the mean where that helps
            self.like_score = nn.Embedding(cfg.n_items, 1, padding_idx=0)
            nn.init.zeros_(self.like_score.weight)
            self.recency_slope = nn.Parameter(torch.zeros(()))

    def _like_weights(self, like_item_id: Tensor, like_mask: Tensor) -> Tensor:
        """``[B, H]`` pooling weights of the like history (summing to 1, or 0 for an empty history)."""
        if self.cfg.history_pooling == "mean":
            return like_mask / like_mask.sum(-1, keepdim=True).clamp(min=1.0)
        age = torch.arange(like_mask.shape[1], device=like_mask.device, dtype=like_mask.dtype)
        score = self.like_score(like_item_id).squeeze(-1) - self.recency_slope * torch.log1p(age)[None, :]
        w = like_mask * torch.exp(score.clamp(-15.0, 15.0))
        return w / w.sum(-1, keepdim=True).clamp(min=1e-12)

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

        p = self.cfg.history_dropout
        if self.training and p > 0:  # denoising: the tower must infer a taste from part of the history
            like_mask = like_mask * (torch.rand_like(like_mask) >= p).to(like_mask.dtype)
            nope_mask = nope_mask * (torch.rand_like(nope_mask) >= p).to(nope_mask.dtype)
        likes = self.encoder(
            like_item_id, like_tags, like_performers, like_categorical, like_numeric,
            self._like_weights(like_item_id, like_mask), context=True,
        )  # fmt: skip
        recent = self.encoder(
            like_item_id[:, :k], like_tags[:, :k], like_performers[:, :k], like_categorical[:, :k],
            like_numeric[:, :k], mean(like_mask[:, :k]), context=True,
        )  # fmt: skip
        nopes = self.encoder(
            nope_item_id, nope_tags, nope_performers, nope_categorical, nope_numeric, mean(nope_mask), context=True
        )
        return F.normalize(self.user_head(torch.cat([likes, recent, nopes, stats], dim=-1)), dim=-1)

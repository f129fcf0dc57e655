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
from twotower.model.sequence import HistoryAttention

__all__ = ["ItemEncoder", "TwoTowerModel"]


# one encoder input: (item_id, tags, performers, categorical, numeric, weights, context) as ``ItemEncoder.forward``
EncoderCall = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, bool]
Bag = tuple[nn.Embedding, Tensor, Tensor]  # a table, codes ``[B, L]`` and their weights ``[B, L]``


def _gathered_sum(table: nn.Embedding, codes: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of embeddings with plain gathers (what export uses: every ONNX runtime supports it)."""
    gathered: Tensor = table(codes)
    return (gathered * weights.unsqueeze(-1)).sum(dim=1)


def _fused_sums(
    table: nn.Embedding, bags: list[tuple[Tensor, Tensor]], compact: bool = False, sparse: bool = False
) -> list[Tensor]:
    """The weighted sums of several ``[B_i, L_i]`` bag sets on one table in one ``embedding_bag`` call.

    The same sums as ``_gathered_sum`` without the ``[B, L, d]`` intermediate, and one backward for the whole
    step: the dense gradient of a table (12.8 MB for 100k IDs) is built and sorted once, not once per use.
    ``compact`` leaves the zero-weight entries (padding, absent tags, hidden history slots: about half of a
    training step's) out of the lookup: on a CPU the lookup and its backward cost by the entry. The same sums; a
    table's gradient rows may add their terms in another order (rounding). Their count depends on the data, so
    an accelerator, which would wait for it, keeps the fixed shapes. ``sparse``: the table's gradient holds only
    the rows looked up (a large ID table: see ``ItemEncoder.sparse_ids``).
    """
    codes = torch.cat([c.reshape(-1) for c, _ in bags])
    weights = torch.cat([w.reshape(-1) for _, w in bags])
    if compact:
        keep = weights != 0
        per_bag = [k.view(c.shape).sum(1) for k, (c, _) in zip(torch.split(keep, [c.numel() for c, _ in bags]), bags,
                                                                strict=True)]  # fmt: skip
        counts = torch.cat(per_bag)
        offsets = torch.cumsum(counts, 0) - counts
        at = keep.nonzero().squeeze(1)
        codes, weights = codes.index_select(0, at), weights.index_select(0, at)
    else:
        starts, base = [], 0
        for c, _ in bags:
            starts.append(base + torch.arange(c.shape[0], device=c.device) * c.shape[1])
            base += c.numel()
        offsets = torch.cat(starts)
    out = F.embedding_bag(codes, table.weight, offsets, mode="sum", per_sample_weights=weights, sparse=sparse)
    return list(torch.split(out, [c.shape[0] for c, _ in bags]))


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
        self.compact = False  # fused bags leave out their zero-weight entries (``_fused_sums``); set by a CPU trainer
        # the ID tables' gradients hold only the rows a step looked up (``_fused_sums``); set by a trainer whose
        # optimizer updates those rows alone (train.optim), for a catalog where a dense update would cost more
        self.sparse_ids = False
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

    def bags(self, item_id: Tensor, tags: Tensor, performers: Tensor, categorical: Tensor, weights: Tensor,
             context: bool) -> list[Bag]:  # fmt: skip
        """The field bags of one input, in output order: ID, tags, performers, the categorical fields."""
        b = item_id.shape[0]
        ids = self.context_ids if context and self.context_ids is not None else self.ids
        out: list[Bag] = [(ids, self.drop_ids(item_id), weights)]
        for table, codes in ((self.tags, tags), (self.performers, performers)):
            present = (codes > 0).to(weights.dtype)
            per_item = present / present.sum(-1, keepdim=True).clamp(min=1.0)
            out.append((table, codes.reshape(b, -1), (per_item * weights.unsqueeze(-1)).reshape(b, -1)))
        for j, field in enumerate(self.categorical):
            assert isinstance(field, nn.Embedding)
            out.append((field, categorical[..., j], weights))
        return out

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
        return self.encode([(item_id, tags, performers, categorical, numeric, weights, context)])[0]

    def encode(self, calls: list[EncoderCall]) -> list[Tensor]:
        """``forward`` of several inputs: ``[B_i, out_dim]`` each. Training (``fused``) looks each table up once
        for all of them; export gathers each input's bags apart."""
        bags = [self.bags(i, t, p, c, w, ctx) for i, t, p, c, _, w, ctx in calls]
        if self.fused:
            pooled: list[list[Tensor]] = [[] for _ in calls]
            for j in range(len(bags[0])):
                tables: dict[int, list[int]] = {}  # the calls that read table ``j`` from the same weights
                for i, fields in enumerate(bags):
                    tables.setdefault(id(fields[j][0]), []).append(i)
                for members in tables.values():
                    table = bags[members[0]][j][0]
                    sparse = self.sparse_ids and (table is self.ids or table is self.context_ids)
                    sums = _fused_sums(table, [(bags[i][j][1], bags[i][j][2]) for i in members], self.compact, sparse)
                    for i, out in zip(members, sums, strict=True):
                        pooled[i].append(out)
        else:
            pooled = [[_gathered_sum(*bag) for bag in fields] for fields in bags]
        return [
            torch.cat([*parts, self._numeric(numeric, weights)], dim=-1)
            for parts, (_, _, _, _, numeric, weights, _) in zip(pooled, calls, strict=True)
        ]

    def _numeric(self, numeric: Tensor, weights: Tensor) -> Tensor:
        # a linear map commutes with the weighted mean: project the mean of the numeric features
        total = weights.sum(-1, keepdim=True)
        mean_numeric = (numeric * weights.unsqueeze(-1)).sum(1)
        projected: Tensor = self.numeric(mean_numeric)
        return projected * (total > 0).to(numeric.dtype)


_Masks = tuple[Tensor, Tensor, Tensor]  # the like IDs, the like and nope masks (history dropout applied)


def _mean(mask: Tensor) -> Tensor:
    return mask / mask.sum(-1, keepdim=True).clamp(min=1.0)


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
        # the ordered history (``user_encoder="attention"``): its readout joins the pooled features
        self.sequence = (
            HistoryAttention(d, cfg.attention_dim, cfg.attention_heads, cfg.attention_layers, cfg.attention_dropout,
                             cfg.max_likes, cfg.max_nopes)
            if cfg.user_encoder == "attention" else None
        )  # fmt: skip
        extra = cfg.attention_dim if self.sequence is not None else 0
        self.user_head = _mlp(3 * d + cfg.stats_width + extra, cfg.hidden_dim, cfg.embedding_dim, cfg.dropout)
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
        """Both towers in one call (what DistributedDataParallel wraps): ``([B, dim], [N, dim])``. The encoder
        reads each table once for both towers."""
        *history, stats = user_inputs
        calls, masks = self._user_calls(*history)
        *encoded, items = self.encoder.encode([*calls, self._item_call(*item_inputs)])
        return self._user_out(encoded, masks, stats), self._item_out(items)

    def item_tower(
        self, item_id: Tensor, tags: Tensor, performers: Tensor, categorical: Tensor, numeric: Tensor
    ) -> Tensor:
        """``[N]``, ``[N, T]``, ``[N, P]``, ``[N, 4]``, ``[N, F]`` → ``[N, dim]``."""
        [x] = self.encoder.encode([self._item_call(item_id, tags, performers, categorical, numeric)])
        return self._item_out(x)

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
        calls, masks = self._user_calls(
            like_item_id, like_tags, like_performers, like_categorical, like_numeric, like_mask,
            nope_item_id, nope_tags, nope_performers, nope_categorical, nope_numeric, nope_mask,
        )  # fmt: skip
        return self._user_out(self.encoder.encode(calls), masks, stats)

    def _item_call(
        self, item_id: Tensor, tags: Tensor, performers: Tensor, categorical: Tensor, numeric: Tensor
    ) -> EncoderCall:
        ones = torch.ones(item_id.shape[0], 1, dtype=numeric.dtype, device=numeric.device)
        return item_id[:, None], tags[:, None], performers[:, None], categorical[:, None], numeric[:, None], ones, False

    def _item_out(self, x: Tensor) -> Tensor:
        return F.normalize(self.item_head(x), dim=-1)

    def _user_calls(
        self,
        like_item_id: Tensor, like_tags: Tensor, like_performers: Tensor, like_categorical: Tensor,
        like_numeric: Tensor, like_mask: Tensor,
        nope_item_id: Tensor, nope_tags: Tensor, nope_performers: Tensor, nope_categorical: Tensor,
        nope_numeric: Tensor, nope_mask: Tensor,
    ) -> tuple[list[EncoderCall], _Masks]:  # fmt: skip
        """The encoder inputs of the user tower, and what ``_user_out`` needs to pool them. Pooled: three bags
        (the pooled likes, the latest likes, the nopes). Attention: one bag per history slot (its encoding is a
        token), pooled afterwards the same way: a linear map commutes with the weighted sum."""
        # a history item contributes its first few tags and performers: enough for taste, much cheaper
        t, q = self.cfg.history_tags, self.cfg.history_performers
        like_tags, like_performers = like_tags[..., :t], like_performers[..., :q]
        nope_tags, nope_performers = nope_tags[..., :t], nope_performers[..., :q]
        p = self.cfg.history_dropout
        if self.training and p > 0:  # denoising: the tower must infer a taste from part of the history
            like_mask = like_mask * (torch.rand_like(like_mask) >= p).to(like_mask.dtype)
            nope_mask = nope_mask * (torch.rand_like(nope_mask) >= p).to(nope_mask.dtype)
        masks = (like_item_id, like_mask, nope_mask)
        if self.sequence is not None:

            def slots(*history: Tensor) -> EncoderCall:  # [B, H, ...] each -> [B * H, 1, ...]: a bag per slot
                ids, tags, performers, categorical, numeric, mask = (x.reshape(-1, 1, *x.shape[2:]) for x in history)
                return ids, tags, performers, categorical, numeric, mask, True

            return [
                slots(like_item_id, like_tags, like_performers, like_categorical, like_numeric, like_mask),
                slots(nope_item_id, nope_tags, nope_performers, nope_categorical, nope_numeric, nope_mask),
            ], masks
        k = self.cfg.recent_likes  # a constant slice: shorter histories just give fewer columns (ONNX-friendly)
        return [
            (like_item_id, like_tags, like_performers, like_categorical, like_numeric,
             self._like_weights(like_item_id, like_mask), True),
            (like_item_id[:, :k], like_tags[:, :k], like_performers[:, :k], like_categorical[:, :k],
             like_numeric[:, :k], _mean(like_mask[:, :k]), True),
            (nope_item_id, nope_tags, nope_performers, nope_categorical, nope_numeric, _mean(nope_mask), True),
        ], masks  # fmt: skip

    def _user_out(self, encoded: list[Tensor], masks: _Masks, stats: Tensor) -> Tensor:
        parts = list(encoded)
        if self.sequence is not None:
            like_item_id, like_mask, nope_mask = masks
            b, k = like_mask.shape[0], self.cfg.recent_likes
            likes, nopes = encoded[0].reshape(b, like_mask.shape[1], -1), encoded[1].reshape(b, nope_mask.shape[1], -1)
            parts = [
                (self._like_weights(like_item_id, like_mask).unsqueeze(-1) * likes).sum(1),
                (_mean(like_mask[:, :k]).unsqueeze(-1) * likes[:, :k]).sum(1),
                (_mean(nope_mask).unsqueeze(-1) * nopes).sum(1),
                stats,
                self.sequence(likes, like_mask, nopes, nope_mask),
            ]
        else:
            parts.append(stats)
        return F.normalize(self.user_head(torch.cat(parts, dim=-1)), dim=-1)

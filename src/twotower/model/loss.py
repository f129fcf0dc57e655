"""Retrieval loss: in-batch sampled softmax with logQ correction, uniform and hard (nope) negatives.

Candidates for each user are the batch's positives (shared), ``M`` items sampled uniformly from the catalog
(shared) and, optionally, one of the user's own nopes. In-batch negatives are sampled in proportion to
popularity, so popular items would be over-penalised; subtracting log(expected count) from every logit (Yi et
al., RecSys 2019) makes the sampled softmax an unbiased estimate of the full one. A candidate that is the
user's own positive item ("accidental hit") is removed, never counted as a negative; with ``liked``, so is
any other item the user liked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["retrieval_loss"]


def retrieval_loss(
    users: Tensor,  # [B, d] L2-normalised
    positives: Tensor,  # [B, d]
    positive_ids: Tensor,  # [B] catalog rows
    positive_log_q: Tensor,  # [B] log expected count of each positive among in-batch candidates
    temperature: float,
    uniform: Tensor | None = None,  # [M, d]
    uniform_ids: Tensor | None = None,  # [M]
    uniform_log_q: float = 0.0,  # log(M / n_items)
    hard: Tensor | None = None,  # [B, d] one nope per user
    hard_mask: Tensor | None = None,  # [B] True where the user has a nope
    groups: Tensor | None = None,  # [B] rows with the same group are one user with several positives
    liked: tuple[Tensor, Tensor] | None = None,  # (row, item) pairs: the items each row's user liked
    catalog_size: int | None = None,  # items are rows 0 .. catalog_size - 1 (None: the largest row seen + 1)
) -> Tensor:
    """Mean cross-entropy of each user's positive among the candidates. Scalar."""
    logits = users @ positives.T / temperature - positive_log_q[None, :]
    same = positive_ids[None, :] == positive_ids[:, None]
    if groups is not None:  # a user's other positives are not negatives for them either
        same = same | (groups[None, :] == groups[:, None])
    liked_uniform = None
    if liked is not None:  # a user's own likes are not negatives for them
        candidates = positive_ids if uniform_ids is None else torch.cat([positive_ids, uniform_ids])
        mask = _liked_columns(liked, users.shape[0], candidates, catalog_size)
        same = same | mask[:, : len(positive_ids)]
        liked_uniform = mask[:, len(positive_ids) :]
    eye = torch.eye(len(positive_ids), dtype=torch.bool, device=users.device)
    columns = [logits.masked_fill(same & ~eye, float("-inf"))]
    if uniform is not None and uniform_ids is not None:
        u_logits = users @ uniform.T / temperature - uniform_log_q
        hit = uniform_ids[None, :] == positive_ids[:, None]
        if liked_uniform is not None:
            hit = hit | liked_uniform
        columns.append(u_logits.masked_fill(hit, float("-inf")))
    if hard is not None and hard_mask is not None:
        # a nope is a known negative, not a sample from the proposal: no correction
        h_logits = (users * hard).sum(-1, keepdim=True) / temperature
        columns.append(h_logits.masked_fill(~hard_mask[:, None], float("-inf")))
    all_logits = torch.cat(columns, dim=1)
    target = torch.arange(len(positive_ids), device=users.device)
    return F.cross_entropy(all_logits, target)


def _liked_columns(liked: tuple[Tensor, Tensor], n_rows: int, columns: Tensor, catalog_size: int | None) -> Tensor:
    """``[n_rows, len(columns)]``: True where the row's user liked the column's item. Built over the candidates
    only (a ``[rows, catalog]`` matrix would cost 200 MB and 0.1 s a step at 100k items and batch 2,048)."""
    rows, items = liked
    if catalog_size is None:  # reads the tensors (a device sync): the trainer passes the size
        catalog_size = int(torch.cat([columns, items]).max()) + 1 if len(columns) + len(items) else 1
    # each catalog item -> one of its columns (equal columns share one: every write to it is True), or a spare
    # column for items that are not candidates; a gather per liked pair, no search and no data-dependent size
    position = torch.full((catalog_size,), len(columns), dtype=torch.int64, device=columns.device)
    position[columns] = torch.arange(len(columns), device=columns.device)
    mask = torch.zeros(n_rows, len(columns) + 1, dtype=torch.bool, device=columns.device)
    mask.index_put_((rows, position[items]), torch.ones_like(items, dtype=torch.bool))
    return mask[:, position[columns]]

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
) -> Tensor:
    """Mean cross-entropy of each user's positive among the candidates. Scalar."""
    logits = users @ positives.T / temperature - positive_log_q[None, :]
    same = positive_ids[None, :] == positive_ids[:, None]
    if groups is not None:  # a user's other positives are not negatives for them either
        same = same | (groups[None, :] == groups[:, None])
    if liked is not None:  # a user's own likes are not negatives for them
        same = same | _liked_columns(liked, users.shape[0], positive_ids)
    eye = torch.eye(len(positive_ids), dtype=torch.bool, device=users.device)
    columns = [logits.masked_fill(same & ~eye, float("-inf"))]
    if uniform is not None and uniform_ids is not None:
        u_logits = users @ uniform.T / temperature - uniform_log_q
        hit = uniform_ids[None, :] == positive_ids[:, None]
        if liked is not None:
            hit = hit | _liked_columns(liked, users.shape[0], uniform_ids)
        columns.append(u_logits.masked_fill(hit, float("-inf")))
    if hard is not None and hard_mask is not None:
        # a nope is a known negative, not a sample from the proposal: no correction
        h_logits = (users * hard).sum(-1, keepdim=True) / temperature
        columns.append(h_logits.masked_fill(~hard_mask[:, None], float("-inf")))
    all_logits = torch.cat(columns, dim=1)
    target = torch.arange(len(positive_ids), device=users.device)
    return F.cross_entropy(all_logits, target)


def _liked_columns(liked: tuple[Tensor, Tensor], n_rows: int, columns: Tensor) -> Tensor:
    """``[n_rows, len(columns)]``: True where the row's user liked the column's item. Built over the candidates
    only (a ``[rows, catalog]`` matrix would cost 200 MB and 0.1 s a step at 100k items and batch 2,048)."""
    rows, items = liked
    # no torch.unique (its size is data-dependent: a device sync): equal columns share their first sorted slot
    ordered = torch.sort(columns).values
    slot = torch.searchsorted(ordered, columns)  # each column's first occurrence in ``ordered``
    at = torch.searchsorted(ordered, items).clamp(max=len(ordered) - 1)
    at = torch.where(ordered[at] == items, at, len(ordered))  # an item not among the columns: a spare column
    mask = torch.zeros(n_rows, len(ordered) + 1, dtype=torch.bool, device=columns.device)
    mask.index_put_((rows, at), torch.ones_like(at, dtype=torch.bool))  # every write is True: duplicates agree
    return mask[:, slot]

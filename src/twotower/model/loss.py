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
from torch import Tensor

__all__ = ["retrieval_loss"]


def retrieval_loss(
    users: Tensor,  # [R, d] L2-normalised: one row per user state
    positives: Tensor,  # [B, d]
    positive_ids: Tensor,  # [B] catalog rows
    positive_log_q: Tensor,  # [B] log expected count of each positive among in-batch candidates
    temperature: float,
    uniform: Tensor | None = None,  # [M, d]
    uniform_ids: Tensor | None = None,  # [M]
    uniform_log_q: float = 0.0,  # log(M / n_items)
    hard: Tensor | None = None,  # [R, d] one nope per user state
    hard_mask: Tensor | None = None,  # [R] True where the user has a nope
    groups: Tensor | None = None,  # [B] the row of each positive (None: R == B, positive i is row i's)
    liked: tuple[Tensor, Tensor] | None = None,  # (row, item) pairs: the items each row's user liked
    catalog_size: int | None = None,  # items are rows 0 .. catalog_size - 1 (None: the largest row seen + 1)
) -> Tensor:
    """Mean over the positives of the cross-entropy of each one against its row's negatives. Scalar.

    A row's negatives are the same for all of its positives: every candidate whose item is none of the row's
    positives (nor, with ``liked``, one its user liked). So a row's logits are computed once however many
    positives it has, and each positive's loss is ``logaddexp(logsumexp(negatives), own) - own``: the
    cross-entropy over the positive and the negatives, without a logit matrix per positive. (With one positive a
    row this is the plain per-positive cross-entropy. With several, a row's other positives' items are not
    negatives anywhere among its candidates; they are all likes of its user, which ``liked`` masks anyway.)"""
    b = positive_ids.shape[0]
    rows = torch.arange(b, device=users.device) if groups is None else groups
    candidates = positive_ids if uniform_ids is None else torch.cat([positive_ids, uniform_ids])
    # the row's own positives (and their repeats among the candidates: accidental hits) are never negatives
    pairs = (rows, positive_ids)
    if liked is not None:
        pairs = (torch.cat([rows, liked[0]]), torch.cat([positive_ids, liked[1]]))
    mask = _liked_columns(pairs, users.shape[0], candidates, catalog_size)
    logits = users @ positives.T / temperature - positive_log_q[None, :]  # [R, B]
    own = logits[rows, torch.arange(b, device=users.device)]
    # a finite "never" (not -inf): a row with no negatives at all gives a zero loss, not a NaN gradient
    never = torch.finfo(logits.dtype).min
    columns = [logits.masked_fill(mask[:, :b], never)]
    if uniform is not None and uniform_ids is not None:
        columns.append((users @ uniform.T / temperature - uniform_log_q).masked_fill(mask[:, b:], never))
    if hard is not None and hard_mask is not None:
        # a nope is a known negative, not a sample from the proposal: no correction
        h_logits = (users * hard).sum(-1, keepdim=True) / temperature
        columns.append(h_logits.masked_fill(~hard_mask[:, None], never))
    negatives = torch.logsumexp(torch.cat(columns, dim=1), dim=1)  # [R]
    return (torch.logaddexp(negatives[rows], own) - own).mean()


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

"""The user tower's sequence encoder (``user_encoder="attention"``): self-attention over the ordered history.

The pooled tower weighs each like and nope but cannot see their order. Here every history slot is a token: the
item's encoding (the shared ``ItemEncoder``, so a cold video is read from its content), projected to
``attention_dim``, plus a learned embedding of its position, one table for likes and one for nopes (so a like
and a nope are distinct tokens, and "the latest nope" differs from "the tenth like"). A learned readout token
is prepended; pre-norm transformer layers run over the sequence, the last one for the readout alone, and the
readout's output joins the pooled features in the user head. Written out with plain matmuls and a softmax (no
fused attention kernel) so the ONNX export is the same graph on every runtime.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["HistoryAttention"]

_MASKED = -1e4  # a masked key's score: exp() underflows to 0 in fp32 and bf16 alike, and never gives NaN


class _Layer(nn.Module):
    """One pre-norm transformer layer (attention, then a feed-forward block, each residual)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor, readout_only: bool) -> Tensor:
        """``x`` ``[B, L, dim]``; ``bias`` ``[B, 1, 1, L]`` (0 or ``_MASKED``). With ``readout_only`` only
        position 0 (the readout token) is computed: ``[B, 1, dim]``."""
        b, _, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        if readout_only:
            q, x = q[:, :1], x[:, :1]
        # [B, heads, L, d/heads]
        q, k, v = (t.reshape(b, -1, h, d // h).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias
        mixed = (self.drop(torch.softmax(scores, dim=-1)) @ v).transpose(1, 2).reshape(b, -1, d)
        x = x + self.drop(self.out(mixed))
        out: Tensor = x + self.drop(self.ff(self.norm2(x)))
        return out


class HistoryAttention(nn.Module):
    """``[B, H, D]`` like encodings and ``[B, Hn, D]`` nope encodings (most recent first), their masks → the
    readout ``[B, dim]``."""

    def __init__(self, encoded: int, dim: int, heads: int, layers: int, dropout: float, likes: int,
                 nopes: int) -> None:  # fmt: skip
        super().__init__()
        self.project = nn.Linear(encoded, dim)
        self.like_position = nn.Embedding(max(likes, 1), dim)
        self.nope_position = nn.Embedding(max(nopes, 1), dim)
        self.readout = nn.Parameter(torch.zeros(1, 1, dim))
        for table in (self.like_position, self.nope_position):
            nn.init.normal_(table.weight, std=0.02)
        nn.init.normal_(self.readout, std=0.02)
        self.layers = nn.ModuleList(_Layer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def _positions(self, table: nn.Embedding, length: int, like: Tensor) -> Tensor:
        # a history longer than the table (a caller's choice) reads its last row for the older slots
        at = torch.arange(length, device=like.device).clamp(max=table.num_embeddings - 1)
        out: Tensor = table(at)
        return out

    def forward(self, likes: Tensor, like_mask: Tensor, nopes: Tensor, nope_mask: Tensor) -> Tensor:
        b = likes.shape[0]
        tokens = torch.cat([
            self.readout.expand(b, 1, -1),
            self.project(likes) + self._positions(self.like_position, likes.shape[1], likes),
            self.project(nopes) + self._positions(self.nope_position, nopes.shape[1], nopes),
        ], dim=1)  # fmt: skip
        keep = torch.cat([torch.ones_like(like_mask[:, :1]), like_mask, nope_mask], dim=1)
        bias = ((1.0 - keep) * _MASKED)[:, None, None, :].to(tokens.dtype)
        x = tokens
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, readout_only=i == len(self.layers) - 1)
        out: Tensor = self.norm(x[:, 0])
        return out

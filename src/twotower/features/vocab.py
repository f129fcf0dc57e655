"""Vocabularies: token → index with a frequency cut-off. Index 0 is padding, 1 is out-of-vocabulary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["OOV", "PAD", "Vocabulary"]

PAD = 0
OOV = 1


@dataclass
class Vocabulary:
    name: str
    tokens: list[str] = field(default_factory=list)  # tokens[i] has index i + 2
    min_count: int = 1
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {t: i + 2 for i, t in enumerate(self.tokens)}

    @classmethod
    def fit(
        cls, name: str, values: Iterable[str | None], min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Tokens seen at least ``min_count`` times, most frequent first (ties by token), at most ``max_size``."""
        counts = Counter(v for v in values if v)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(name, kept[:max_size] if max_size else kept, min_count)

    def __len__(self) -> int:
        """Size of the embedding table: padding + OOV + tokens."""
        return len(self.tokens) + 2

    def encode(self, token: str | None) -> int:
        if not token:
            return PAD
        return self._index.get(token, OOV)

    def encode_lists(self, lists: list[list[str]], width: int) -> npt.NDArray[np.int64]:
        """``[len(lists), width]``: the first ``width`` known-or-OOV tokens of each list, padded with 0."""
        out = np.zeros((len(lists), width), dtype=np.int64)
        for i, values in enumerate(lists):
            codes = [self.encode(v) for v in values if v]
            # known tokens first: an OOV slot carries less information than a known one
            codes.sort(key=lambda c: c == OOV)
            codes = codes[:width]
            out[i, : len(codes)] = codes
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "min_count": self.min_count, "tokens": self.tokens}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(str(data["name"]), [str(t) for t in data["tokens"]], int(data.get("min_count", 1)))

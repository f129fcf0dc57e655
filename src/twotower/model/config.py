"""Hyper-parameters of the two towers, saved with the model (JSON) and carried by the manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from twotower.errors import InputError

__all__ = ["BOUNDS", "MAX_DIM", "MAX_TRAINING_BYTES", "MIN_DIM", "TowerConfig"]

MIN_DIM = 32
MAX_DIM = 768
# sizes a model can actually have (a config file may set them): `tune` searches field_dim 16-64, hidden_dim
# 128-512 and 512-4096 uniform negatives; far beyond these a model only allocates gigabytes before it fails
BOUNDS = {
    "field_dim": (1, 1024), "hidden_dim": (1, 4096), "uniform_negatives": (0, 65536), "max_likes": (1, 1000),
    "max_nopes": (0, 1000), "recent_likes": (0, 1000), "history_tags": (0, 64), "history_performers": (0, 64),
    "target_window": (1, 1000), "targets_per_history": (1, 256), "attention_dim": (8, 512),
    "attention_heads": (1, 16), "attention_layers": (1, 8),
}  # fmt: skip
# what training may hold for the parameters: fp32 weights, their gradients and Adam's two moments (16 bytes
# a parameter); checked from the config and the catalog size before anything is allocated
MAX_TRAINING_BYTES = 8 << 30
_BYTES_PER_PARAMETER = 16
# what a saved config written before these fields existed meant (it still loads as the model it was)
_LEGACY = {
    "history_ids": False,
    "history_pooling": "mean",
    "history_dropout": 0.0,
    "mask_likes": False,
    "next_likes": 1,
}


@dataclass
class TowerConfig:
    embedding_dim: int = 64  # output dimension of both towers
    # vocabulary sizes (from the fitted feature pipeline)
    n_items: int = 2
    n_tags: int = 2
    n_performers: int = 2
    n_categorical: tuple[int, int, int, int] = (2, 2, 2, 2)
    numeric_width: int = 10
    stats_width: int = 3
    max_tags: int = 16
    max_performers: int = 4
    max_likes: int = 50
    max_nopes: int = 20
    recent_likes: int = 5  # a separate "what they liked just now" channel
    history_tags: int = 4  # tags and performers per history item that the user tower reads
    history_performers: int = 2
    # architecture
    field_dim: int = 32
    hidden_dim: int = 256
    dropout: float = 0.1
    id_dropout: float = 0.15  # probability of hiding an item's ID in training: cold items then work
    # an item as history context gets its own ID embedding, apart from the one it has as a candidate (FISM,
    # Mult-VAE's encoder vs decoder, EASE's asymmetric weights): "people who liked X" != "looks like X"
    history_ids: bool = False
    # how the like history is pooled: "mean", or "learned": softmax weights from a learned per-item score and
    # a learned recency slope (informative and recent likes count more); both export as plain gathers
    history_pooling: str = "learned"
    # training only: each history like/nope is hidden with this probability (denoising, as Mult-DAE's input
    # dropout): the tower learns a taste from any part of a history, not from a few items it memorised
    history_dropout: float = 0.25
    # the user tower: "pooled" (the weighted likes, latest likes and nopes: order-blind) or "attention" (the
    # same, plus self-attention over the ordered likes and nopes as tokens, ``model.sequence``)
    user_encoder: str = "pooled"
    attention_dim: int = 64
    attention_heads: int = 2
    attention_layers: int = 1
    attention_dropout: float = 0.1
    # loss
    # "past": a user state is what they did before a like, the target is that like (sequential);
    # "profile": the state is the user's whole training profile, targets are likes hidden from it (set-based)
    history: str = "past"
    # "past": each user state is trained on the like that follows it and the ones after it, up to this many
    # (the dense all-action loss of PinnerFormer over a short window): every state is visited each epoch, and
    # the user tower runs once for all of its positives. None: 3, or 1 with sampled targets (below)
    next_likes: int | None = None
    # sampled targets instead: "past": draw each target among the next N likes; "profile": hide this many likes
    # of the profile. An epoch then visits 1/targets_per_history of the states
    target_window: int = 1
    targets_per_history: int = 1
    temperature: float = 0.05
    logq_weight: float = 1.0  # 1: full popularity correction; 0: none (favours popular items)
    uniform_negatives: int = 2048  # sampled from the whole catalog, shared by the batch
    hard_negatives: bool = True  # the user's nopes
    # a user's own likes (other than the target) are never negatives for them: ranking excludes what a user
    # already liked, and the likes that follow a history are positives, not negatives
    mask_likes: bool = True

    def __post_init__(self) -> None:
        if not MIN_DIM <= self.embedding_dim <= MAX_DIM:
            raise InputError(f"--embedding-dim must be between {MIN_DIM} and {MAX_DIM}, got {self.embedding_dim}")
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise InputError(f"{name} must be between {low} and {high}, got {value}")
        if not 0.0 < self.temperature <= 1.0:
            raise InputError(f"temperature must be in (0, 1], got {self.temperature}")
        if not 0.0 <= self.id_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise InputError("dropout and id_dropout must be in [0, 1)")
        if not 0.0 <= self.history_dropout < 1.0:
            raise InputError(f"history_dropout must be in [0, 1), got {self.history_dropout}")
        if self.history_pooling not in ("mean", "learned"):
            raise InputError(f"history_pooling must be 'mean' or 'learned', got {self.history_pooling!r}")
        if self.user_encoder not in ("pooled", "attention"):
            raise InputError(f"user_encoder must be 'pooled' or 'attention', got {self.user_encoder!r}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise InputError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.attention_dim % self.attention_heads:
            raise InputError(
                f"attention_dim ({self.attention_dim}) must be a multiple of attention_heads ({self.attention_heads})"
            )
        if self.history not in ("past", "profile"):
            raise InputError(f"history must be 'past' or 'profile', got {self.history!r}")
        if self.next_likes is None:
            self.next_likes = 1 if self.sampled_targets else 3
        if not 1 <= self.next_likes <= 64:
            raise InputError(f"next_likes must be between 1 and 64, got {self.next_likes}")
        if self.next_likes > 1 and self.sampled_targets:
            raise InputError(
                "next_likes applies to history 'past' with target_window 1; set next_likes=1 to sample targets "
                "(target_window, or history 'profile')"
            )
        self.n_categorical = tuple(self.n_categorical)  # type: ignore[assignment]
        needed = self.training_bytes()
        if needed > MAX_TRAINING_BYTES:
            raise InputError(
                f"this model would need about {needed / (1 << 30):.1f} GiB to train ({self.parameter_count():,} "
                f"parameters x {_BYTES_PER_PARAMETER} bytes: weights, gradients, Adam's moments) for "
                f"{self.n_items:,} items, over the limit of {MAX_TRAINING_BYTES >> 30} GiB: lower field_dim "
                f"({self.field_dim}) or hidden_dim ({self.hidden_dim}), or set history_ids false"
            )

    def parameter_count(self) -> int:
        """The parameters of ``TwoTowerModel(self)``, computed without allocating them."""
        d, h, e = self.field_dim, self.hidden_dim, self.embedding_dim
        rows = self.n_items * (2 if self.history_ids else 1) + self.n_tags + self.n_performers + sum(self.n_categorical)
        encoder = d * rows + (self.numeric_width + 1) * d
        width = d * (4 + len(self.n_categorical))  # the concatenated fields
        item_head = width * h + h + h * e + e
        sequence = self.attention_dim if self.user_encoder == "attention" else 0
        user_head = (3 * width + self.stats_width + sequence) * h + h + h * e + e
        pooling = self.n_items + 1 if self.history_pooling == "learned" else 0
        return encoder + item_head + user_head + pooling + self._attention_parameters(width)

    def _attention_parameters(self, width: int) -> int:
        """What ``model.sequence.HistoryAttention`` holds (0 for the pooled tower)."""
        if self.user_encoder != "attention":
            return 0
        a = self.attention_dim
        # two layer norms, qkv, out, the feed-forward block (a -> 2a -> a)
        layer = 4 * a + (3 * a * a + 3 * a) + (a * a + a) + (2 * a * a + 2 * a) + (2 * a * a + a)
        tokens = max(self.max_likes, 1) + max(self.max_nopes, 1) + 1  # positions and the readout token
        return width * a + a + tokens * a + self.attention_layers * layer + 2 * a

    def training_bytes(self) -> int:
        """What training holds for the parameters (fp32 weights, gradients, Adam's two moments)."""
        return self.parameter_count() * _BYTES_PER_PARAMETER

    @property
    def sampled_targets(self) -> bool:
        """Targets drawn at random (among the coming likes, or hidden from the profile), not each state's next
        ``next_likes`` likes."""
        return self.history == "profile" or self.target_window > 1

    @property
    def positives_per_state(self) -> int:
        """The positives each user state of a training step is scored on (the user tower runs once for them)."""
        return self.targets_per_history if self.sampled_targets else self.next_likes or 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["n_categorical"] = list(self.n_categorical)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown TowerConfig fields: {', '.join(sorted(unknown))}")
        return cls(**{**_LEGACY, **data, "n_categorical": tuple(data.get("n_categorical", (2, 2, 2, 2)))})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> TowerConfig:
        return cls.from_json(json.loads(path.read_text()))

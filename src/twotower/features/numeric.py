"""Numeric normalisers: a transform (log1p or none), then standardisation; missing values become 0 + a flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Normalizer"]


@dataclass
class Normalizer:
    name: str
    transform: Literal["log1p", "identity"] = "identity"
    mean: float = 0.0
    std: float = 1.0
    clip: float = 5.0

    def _pre(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        v = np.asarray(values, dtype=np.float64)
        v = np.where(np.isfinite(v), v, np.nan)
        if self.transform == "log1p":
            v = np.log1p(np.clip(v, 0.0, None))
        return v

    @classmethod
    def fit(cls, name: str, values: npt.NDArray[np.float64], transform: Literal["log1p", "identity"]) -> Normalizer:
        norm = cls(name, transform)
        v = norm._pre(values)
        v = v[~np.isnan(v)]
        if v.size:
            norm.mean = float(v.mean())
            norm.std = float(v.std()) or 1.0
        return norm

    def apply(self, values: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(normalised values with missing → 0, missing flags)."""
        v = self._pre(values)
        missing = np.isnan(v)
        z = np.clip((np.where(missing, self.mean, v) - self.mean) / self.std, -self.clip, self.clip)
        return z.astype(np.float32), missing.astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "transform": self.transform, "mean": self.mean, "std": self.std, "clip": self.clip}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Normalizer:
        return cls(str(data["name"]), data["transform"], float(data["mean"]), float(data["std"]), float(data["clip"]))

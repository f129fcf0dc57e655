"""The one feature pipeline: fitted on training data, saved as JSON next to the model, used by training,
batch jobs and the API alike (numpy only: serving never imports torch)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from twotower.errors import InputError
from twotower.features.catalog import CATEGORICAL_FIELDS, Catalog
from twotower.features.numeric import Normalizer
from twotower.features.vocab import Vocabulary

__all__ = ["FORMAT_VERSION", "FeaturePipeline", "ItemFeatures"]

FORMAT_VERSION = 1
_YEAR = 365.25 * 24 * 3600
NUMERIC_FIELDS = ("price", "duration_seconds", "recency_years", "review_count", "review_average")


@dataclass
class ItemFeatures:
    """What the item tower eats, one row per video. ``numeric`` = normalised values then missing flags."""

    item_id: npt.NDArray[np.int64]  # [n]
    tags: npt.NDArray[np.int64]  # [n, max_tags]
    performers: npt.NDArray[np.int64]  # [n, max_performers]
    categorical: npt.NDArray[np.int64]  # [n, 4]: maker, label, series, director
    numeric: npt.NDArray[np.float32]  # [n, 2 * len(NUMERIC_FIELDS)]

    def __len__(self) -> int:
        return int(self.item_id.shape[0])

    def take(self, rows: npt.NDArray[np.int64]) -> ItemFeatures:
        return ItemFeatures(
            self.item_id[rows], self.tags[rows], self.performers[rows], self.categorical[rows], self.numeric[rows]
        )

    def with_padding_row(self) -> ItemFeatures:
        """A trailing all-padding row: history slots that are empty point at it."""

        def pad(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return np.concatenate([a, np.zeros((1, *a.shape[1:]), dtype=a.dtype)])

        return ItemFeatures(
            pad(self.item_id), pad(self.tags), pad(self.performers), pad(self.categorical), pad(self.numeric)
        )


@dataclass
class FeaturePipeline:
    items: Vocabulary  # video UUIDs that get a learned ID embedding
    tags: Vocabulary
    performers: Vocabulary
    categorical: dict[str, Vocabulary]
    numeric: dict[str, Normalizer]
    reference_time: float  # Unix seconds; release recency is measured from here
    max_tags: int = 16
    max_performers: int = 4

    # -- fitting ------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        catalog: Catalog,
        id_counts: npt.NDArray[np.int64],
        reference_time: float,
        *,
        min_id_count: int = 1,
        min_count: int = 2,
        max_tags: int = 16,
        max_performers: int = 4,
    ) -> FeaturePipeline:
        """Fit on the catalog and the training interactions (``id_counts[i]``: training likes of video i)."""
        if len(catalog) == 0:
            raise InputError("the catalog is empty: import or sync videos before training")
        if not math.isfinite(reference_time):
            raise InputError("reference_time must be a finite Unix time")
        known = [str(catalog.ids[i]) for i in np.flatnonzero(id_counts >= min_id_count)]
        pipeline = cls(
            items=Vocabulary("items", known),
            tags=Vocabulary.fit("tags", (t for ts in catalog.tags for t in ts), min_count),
            performers=Vocabulary.fit("performers", (p for ps in catalog.performers for p in ps), min_count),
            categorical={f: Vocabulary.fit(f, catalog.categorical[f], min_count) for f in CATEGORICAL_FIELDS},
            numeric={},
            reference_time=float(reference_time),
            max_tags=max_tags,
            max_performers=max_performers,
        )
        raw = pipeline._raw_numeric(catalog)
        pipeline.numeric = {
            "price": Normalizer.fit("price", raw["price"], "log1p"),
            "duration_seconds": Normalizer.fit("duration_seconds", raw["duration_seconds"], "log1p"),
            "recency_years": Normalizer.fit("recency_years", raw["recency_years"], "identity"),
            "review_count": Normalizer.fit("review_count", raw["review_count"], "log1p"),
            "review_average": Normalizer.fit("review_average", raw["review_average"], "identity"),
        }
        return pipeline

    def _raw_numeric(self, catalog: Catalog) -> dict[str, npt.NDArray[np.float64]]:
        return {
            "price": catalog.price,
            "duration_seconds": catalog.duration_seconds,
            "recency_years": (self.reference_time - catalog.released_at) / _YEAR,
            "review_count": catalog.review_count,
            "review_average": catalog.review_average,
        }

    # -- transforming -------------------------------------------------------------------------------------
    @property
    def numeric_width(self) -> int:
        return 2 * len(NUMERIC_FIELDS)

    def encode_item_ids(self, ids: Sequence[uuid.UUID]) -> npt.NDArray[np.int64]:
        return np.array([self.items.encode(str(i)) for i in ids], dtype=np.int64)

    def transform(self, catalog: Catalog) -> ItemFeatures:
        raw = self._raw_numeric(catalog)
        values, flags = zip(*(self.numeric[f].apply(raw[f]) for f in NUMERIC_FIELDS), strict=True)
        numeric = np.concatenate([np.stack(values, axis=1), np.stack(flags, axis=1)], axis=1)
        categorical = np.stack(
            [np.array([self.categorical[f].encode(v) for v in catalog.categorical[f]], dtype=np.int64)
             for f in CATEGORICAL_FIELDS],
            axis=1,
        ) if len(catalog) else np.zeros((0, len(CATEGORICAL_FIELDS)), dtype=np.int64)  # fmt: skip
        return ItemFeatures(
            item_id=self.encode_item_ids(catalog.ids),
            tags=self.tags.encode_lists(catalog.tags, self.max_tags),
            performers=self.performers.encode_lists(catalog.performers, self.max_performers),
            categorical=categorical,
            numeric=numeric.astype(np.float32).reshape(len(catalog), self.numeric_width),
        )

    # -- persistence --------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "reference_time": self.reference_time,
            "max_tags": self.max_tags,
            "max_performers": self.max_performers,
            "items": self.items.to_json(),
            "tags": self.tags.to_json(),
            "performers": self.performers.to_json(),
            "categorical": {f: v.to_json() for f, v in self.categorical.items()},
            "numeric": {f: n.to_json() for f, n in self.numeric.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeaturePipeline:
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"features.json has format version {data.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        return cls(
            items=Vocabulary.from_json(data["items"]),
            tags=Vocabulary.from_json(data["tags"]),
            performers=Vocabulary.from_json(data["performers"]),
            categorical={f: Vocabulary.from_json(v) for f, v in data["categorical"].items()},
            numeric={f: Normalizer.from_json(n) for f, n in data["numeric"].items()},
            reference_time=float(data["reference_time"]),
            max_tags=int(data["max_tags"]),
            max_performers=int(data["max_performers"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> FeaturePipeline:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a valid features.json ({exc})") from None

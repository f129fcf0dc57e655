from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from twotower.errors import InputError
from twotower.features.catalog import Catalog
from twotower.features.numeric import Normalizer
from twotower.features.pipeline import FeaturePipeline
from twotower.features.vocab import OOV, PAD, Vocabulary


def _catalog(n: int = 6, **overrides: object) -> Catalog:
    rows = [
        {
            "id": uuid.UUID(int=i + 1),
            "title": f"v{i}",
            "tags": ["drama", "romance"] if i % 2 else ["comedy"],
            "performers": [f"p{i % 3}"],
            "maker": "M1" if i < 4 else "M2",
            "price": 500 + 100 * i,
            "duration_seconds": 3600,
            "review_count": i,
            "review_average": 4.0,
        }
        for i in range(n)
    ]
    for row in rows:
        row.update(overrides)
    return Catalog.from_rows(rows)


def test_vocabulary_cutoff_oov_and_roundtrip() -> None:
    vocab = Vocabulary.fit("tags", ["a", "a", "b", "c", "c", "c", None, ""], min_count=2)
    assert vocab.tokens == ["c", "a"] and len(vocab) == 4
    assert vocab.encode("c") == 2 and vocab.encode("b") == OOV and vocab.encode(None) == PAD
    codes = vocab.encode_lists([["b", "a"], []], width=3)
    assert codes.tolist() == [[3, OOV, 0], [0, 0, 0]]  # known tokens first, padded
    assert Vocabulary.from_json(vocab.to_json()).tokens == vocab.tokens


def test_normalizer_handles_missing_and_nan() -> None:
    norm = Normalizer.fit("price", np.array([100.0, np.nan, 1000.0, np.inf]), "log1p")
    values, missing = norm.apply(np.array([np.nan, 100.0, -5.0, np.inf]))
    assert np.isfinite(values).all()
    assert missing.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_pipeline_transform_and_json_roundtrip(tmp_path: Path) -> None:
    catalog = _catalog()
    counts = np.array([3, 0, 1, 0, 2, 0])
    pipe = FeaturePipeline.fit(catalog, counts, reference_time=2e9, min_count=1)
    feats = pipe.transform(catalog)
    assert feats.item_id.tolist()[1] == OOV  # no training likes: cold, content only
    assert (feats.item_id[[0, 2, 4]] > OOV).all()
    assert feats.tags.shape == (6, pipe.max_tags) and np.isfinite(feats.numeric).all()
    pipe.save(tmp_path / "features.json")
    again = FeaturePipeline.load(tmp_path / "features.json").transform(catalog)
    for a, b in zip(
        (feats.item_id, feats.tags, feats.categorical, feats.numeric),
        (again.item_id, again.tags, again.categorical, again.numeric),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_catalog_without_tags_and_with_nan_prices() -> None:
    catalog = _catalog(tags=[], performers=[], price=float("nan"), maker=None)
    pipe = FeaturePipeline.fit(catalog, np.ones(6, dtype=np.int64), reference_time=2e9)
    feats = pipe.transform(catalog)
    assert (feats.tags == 0).all() and np.isfinite(feats.numeric).all()


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="catalog is empty"):
        FeaturePipeline.fit(Catalog.from_rows([]), np.zeros(0, dtype=np.int64), reference_time=0.0)
    with pytest.raises(InputError, match="format version"):
        FeaturePipeline.from_json({"format_version": 99})

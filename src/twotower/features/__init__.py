"""The feature pipeline shared by training, batch jobs and serving (numpy only, no torch)."""

from twotower.features.catalog import Catalog, load_catalog
from twotower.features.history import HistoryConfig, user_stats
from twotower.features.numeric import Normalizer
from twotower.features.pipeline import FeaturePipeline, ItemFeatures
from twotower.features.vocab import OOV, PAD, Vocabulary

__all__ = [
    "OOV",
    "PAD",
    "Catalog",
    "FeaturePipeline",
    "HistoryConfig",
    "ItemFeatures",
    "Normalizer",
    "Vocabulary",
    "load_catalog",
    "user_stats",
]

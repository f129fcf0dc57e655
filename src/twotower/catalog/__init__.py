"""Catalog sync from the content provider's API (DMM Affiliate API v3), and a local fake of that API."""

from twotower.catalog.dmm import DmmClient, DmmConfig, RateLimiter
from twotower.catalog.dmm_items import parse_item
from twotower.catalog.sync import SyncOptions, SyncSummary, embed_missing, sync_dmm

__all__ = [
    "DmmClient",
    "DmmConfig",
    "RateLimiter",
    "SyncOptions",
    "SyncSummary",
    "embed_missing",
    "parse_item",
    "sync_dmm",
]

"""The HNSW build's memory: the graph must fit in maintenance_work_mem, or pgvector builds it on disk (at 1M
videos under Postgres' 64 MB default: over 25 minutes and 42% done, bench/results/scale.json)."""

from __future__ import annotations

from twotower.registry.generations import hnsw_build_memory


def _mb(setting: str) -> int:
    assert setting.endswith("MB")
    return int(setting[:-2])


def test_the_build_memory_grows_with_the_catalog_within_bounds() -> None:
    assert _mb(hnsw_build_memory(0, 64)) == _mb(hnsw_build_memory(100_000, 64)) == 512  # the floor
    one_million = _mb(hnsw_build_memory(1_000_000, 64))
    assert one_million >= 1.5 * 543  # the graph measured at 100k (543 bytes a vector) times ten, with room
    assert _mb(hnsw_build_memory(2_000_000, 64)) == 2 * one_million  # linear past the floor
    assert _mb(hnsw_build_memory(10**9, 64)) == 8192  # the cap
    assert _mb(hnsw_build_memory(1_000_000, 256)) > one_million  # wider vectors, a larger graph

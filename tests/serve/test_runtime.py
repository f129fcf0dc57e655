"""The model holder: a loaded model stays out of the garbage collector's full passes, and a replaced one is freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tests.support.api import Served
from twotower.db import Database
from twotower.registry.store import LocalStore
from twotower.registry.versions import rollback
from twotower.serve.runtime import ModelHolder


def _python_objects_per_video(model: object) -> int:
    """The objects of this model's item table a full collection would walk: its id array is one object, not a
    UUID and a dict entry per video (issue 31)."""
    items = model.items  # type: ignore[attr-defined]
    assert isinstance(items.ids, np.ndarray) and items.ids.dtype == np.dtype("S16")
    tracked = {id(o) for o in gc.get_objects()}
    return sum(1 for a in vars(items).values() if id(a) in tracked)


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The permanent generation back in the collector's lists afterwards (the rest of the run collects it)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_loaded_model_is_frozen_and_a_replaced_one_is_freed(served: Served, tmp_path: Path, unfrozen: None) -> None:
    with Database.open(served.settings, migrate=False) as db:
        holder = ModelHolder(db, LocalStore(served.store), tmp_path / "models", poll_seconds=600.0)
        assert holder.refresh() is True
        first = holder.current
        assert first is not None and first.version == "b" and len(first.items) == 1000
        # a full collection walks nothing loaded so far, and the table has no Python object per video
        assert gc.get_freeze_count() > 0
        assert _python_objects_per_video(first) == 0
        gone = weakref.ref(first)
        gone_items = weakref.ref(first.items)
        del first
        try:
            with psycopg.connect(served.db_url) as conn:
                assert rollback(conn, "a") == ("a", "b")
            assert holder.refresh() is True
            assert holder.current is not None and holder.current.version == "a"
            # frozen objects are still freed by reference counting: the replaced model is gone without a collection
            assert gone() is None and gone_items() is None
            assert _python_objects_per_video(holder.current) == 0
        finally:
            with psycopg.connect(served.db_url) as conn:
                rollback(conn, "b")

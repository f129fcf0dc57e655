"""The item table a server answers from: shipped with the version by the deploy, brought up to date from the
database incrementally, identical to a table read whole from the database."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from tests.support.db import DEPLOYED_VIDEOS
from twotower.errors import ArtifactError
from twotower.features.pipeline import FeaturePipeline
from twotower.inference.items import ITEMS_FILE, ItemIndex
from twotower.registry.store import verify_directory

FIELDS = ("item_id", "tags", "performers", "categorical", "numeric")


def _same(a: ItemIndex, b: ItemIndex) -> None:
    ids = a.video_ids()
    assert set(ids) == set(b.video_ids()) and len(ids) == len(a) == len(b)
    rows_a, rows_b = a.rows(ids), b.rows(ids)
    np.testing.assert_array_equal(rows_a, np.arange(len(a)))  # row i holds the i-th id
    assert (rows_b >= 0).all()
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a.table, name)[rows_a], getattr(b.table, name)[rows_b], err_msg=name)


def test_the_deployed_version_ships_its_item_table(deployed: Path, url: str) -> None:
    version = deployed / "store" / "v"
    manifest = verify_directory(version)  # checksummed like the rest
    assert ITEMS_FILE in manifest["checksums"] and manifest["item_table"]["videos"] == DEPLOYED_VIDEOS
    pipeline = FeaturePipeline.load(version / "features.json")
    shipped = ItemIndex.from_file(version / ITEMS_FILE)
    with psycopg.connect(url, autocommit=True) as conn:
        _same(shipped, ItemIndex.load(conn, pipeline))
        opened = ItemIndex.open(version, conn, pipeline)
    assert len(opened) == DEPLOYED_VIDEOS
    with np.load(version / ITEMS_FILE, allow_pickle=False) as data:  # plain arrays: no object arrays, no pickle
        assert all(data[k].dtype != object for k in data.files)


def test_refresh_reads_only_changed_and_new_videos(deployed: Path, url: str) -> None:
    version = deployed / "store" / "v"
    pipeline = FeaturePipeline.load(version / "features.json")
    with psycopg.connect(url, autocommit=True) as conn:
        index = ItemIndex.open(version, conn, pipeline)
        assert index.refreshed(conn, pipeline).table is index.table  # nothing changed: nothing re-read
        changed = conn.execute("SELECT id FROM videos ORDER BY external_id LIMIT 1").fetchone()[0]  # type: ignore[index]
        conn.execute("UPDATE videos SET price = 123456, maker = 'A New Maker' WHERE id = %s", (changed,))
        new = conn.execute(
            "INSERT INTO videos (source, external_id, title, price) VALUES ('test', 'new-1', 'New', 10) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        # an id whose last bytes are zero (a refresh compares ids as 16-byte strings: none may be cut short)
        zeros = uuid.UUID("7f000000-0000-4000-8000-000000000000")
        conn.execute(
            "INSERT INTO videos (id, source, external_id, title, price) VALUES (%s, 'test', 'new-0', 'Zero', 1)",
            (zeros,),
        )
        fresh = index.refreshed(conn, pipeline)
        assert len(fresh) == len(index) + 2 and new in fresh and zeros in fresh and uuid.uuid4() not in fresh
        _same(fresh, ItemIndex.load(conn, pipeline))  # the same as a table read whole now
        assert fresh.refreshed(conn, pipeline).table is fresh.table  # the new ids are known to the next refresh
        conn.execute("UPDATE videos SET price = 7 WHERE id = %s", (zeros,))
        again = fresh.refreshed(conn, pipeline)
        assert again.table is not fresh.table and len(again) == len(fresh)
        _same(again, ItemIndex.load(conn, pipeline))
        old_row = index.table.numeric[index.row_of(changed)]
        assert not np.array_equal(fresh.table.numeric[fresh.row_of(changed)], old_row)
        assert len(fresh.table) == len(fresh) + 1  # the padding row stays last
        np.testing.assert_array_equal(fresh.table.tags[-1], 0)


def test_a_tampered_or_malformed_item_table_is_refused(deployed: Path, tmp_path: Path) -> None:
    path = tmp_path / ITEMS_FILE
    path.write_bytes(b"not a zip file")
    with pytest.raises(ArtifactError, match="not a valid item table"):
        ItemIndex.from_file(path)
    good = ItemIndex.from_file(deployed / "store" / "v" / ITEMS_FILE)
    arrays = {"ids": np.zeros((3, 16), np.uint8), "updated_at": np.zeros(3, np.int64), "as_of": np.array(0)}
    arrays.update({n: getattr(good.table, n)[:2] for n in FIELDS})  # 2 rows of features for 3 ids
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(ArtifactError, match="disagree"):
        ItemIndex.from_file(path)
    objects = {**arrays, "ids": np.array([uuid.uuid4()] * 2, dtype=object)}
    with path.open("wb") as handle:
        np.savez(handle, **objects)
    with pytest.raises(ArtifactError):  # an object array would need pickle: never loaded
        ItemIndex.from_file(path)
    manifest = json.loads((deployed / "store" / "v" / "manifest.json").read_text())
    assert manifest["checksums"][ITEMS_FILE]  # and a changed file fails the checksum before it is ever read

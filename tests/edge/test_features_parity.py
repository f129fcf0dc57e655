"""The edge functions' feature preprocessing (supabase/functions/_shared/features.ts) against the Python pipeline:
the same features.json and videos give the same int64 codes and the same float32 bits, through database rows and
through the item-embedding request (validated as pydantic validates ItemsIn). One deno process per test."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pydantic import ValidationError

from tests.edge.conftest import deno as deno_binary
from twotower.catalog.dmm_items import parse_item
from twotower.features.catalog import Catalog
from twotower.features.history import user_stats
from twotower.features.pipeline import FeaturePipeline, ItemFeatures
from twotower.ingest.movielens import BUNDLED_MOVIELENS, MovieLensFiles, read_movies
from twotower.ingest.records import Problems, VideoRecord
from twotower.serve.schemas import ItemsIn

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "supabase" / "functions"
CLI = FUNCTIONS / "tests" / "encode_cli.ts"
FIXTURE = ROOT / "tests" / "fixtures" / "dmm_itemlist_v3_sample.json"
REFERENCE_TIME = 1767225600.123456  # 2026-01-01, with a fraction
UNICODE = ["日本語タグ", "😀 emoji", "e\u0301 combining", "ｶﾀｶﾅ", "x\u0085y"]  # known tokens (fitted twice)
KNOWN_ID = uuid.UUID("0c5e6a1b-7d2f-4e8a-9b3c-5d6e7f8a9b0c")
EXTRA = [{"id": KNOWN_ID, "tags": UNICODE, "performers": UNICODE[:2], "maker": UNICODE[0]}] * 2


def deno(payload: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}
    command = [str(deno_binary()), "run", "--quiet", "--no-lock", f"--config={FUNCTIONS / 'deno.json'}", str(CLI)]
    done = subprocess.run(command, input=json.dumps(payload), capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def utc() -> Iterator[None]:
    """Local time is UTC (as on Supabase): Python's timestamp() of a naive datetime is local time."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def row(r: VideoRecord, i: int) -> dict[str, Any]:
    return {
        "id": uuid.UUID(int=(0x5EED << 64) + i), "tags": list(r.tags), "performers": list(r.performers),
        "maker": r.maker, "label": r.label, "series": r.series, "director": r.director, "price": r.price,
        "duration_seconds": r.duration_seconds, "product_released_at": r.product_released_at,
        "review_count": r.review_count, "review_average": r.review_average,
    }  # fmt: skip


def as_js(r: dict[str, Any]) -> dict[str, Any]:
    """A Python row as the JS Postgres driver gives it: uuid and timestamptz as text, numeric as a string."""
    out = {}
    for k, v in r.items():
        if isinstance(v, uuid.UUID):
            v = str(v)
        elif isinstance(v, datetime):
            v = v.isoformat()
        elif isinstance(v, Decimal):
            v = str(v)
        out[k] = v
    return out


@pytest.fixture(scope="module")
def catalog_rows() -> list[dict[str, Any]]:
    items = json.loads(FIXTURE.read_text())["result"]["items"]
    records = [parse_item(item) for item in items]
    records += read_movies(MovieLensFiles.find(BUNDLED_MOVIELENS), Problems())[:1500]
    return [row(r, i) for i, r in enumerate(records)]


@pytest.fixture(scope="module")
def pipeline(catalog_rows: list[dict[str, Any]]) -> FeaturePipeline:
    """Fitted on part of the catalog (ids of every other video; tags and performers of two thirds), with the
    unicode tokens known and one extra id."""
    fitted = catalog_rows[1::3] + catalog_rows[2::3]
    catalog = Catalog.from_rows(fitted + EXTRA)
    counts = np.array([i % 2 for i in range(len(fitted))] + [1, 1], dtype=np.int64)
    return FeaturePipeline.fit(catalog, counts, REFERENCE_TIME, max_tags=5, max_performers=3)


def assert_same(py: ItemFeatures, ts: dict[str, Any]) -> None:
    assert "error" not in ts, ts
    n = len(py)
    assert n > 0 and ts["n"] == n
    for name, ours in (("itemId", py.item_id), ("tags", py.tags), ("performers", py.performers),
                       ("categorical", py.categorical)):  # fmt: skip
        theirs = np.array(ts[name], dtype=np.int64).reshape(ours.shape)
        assert np.array_equal(ours, theirs), name
    theirs = np.array(ts["numeric"], dtype=np.float64).astype(np.float32).reshape(py.numeric.shape)
    assert np.array_equal(theirs.astype(np.float64), np.array(ts["numeric"]).reshape(py.numeric.shape))  # exact
    assert np.array_equal(py.numeric.view(np.uint32), theirs.view(np.uint32)), np.argwhere(py.numeric != theirs)[:5]


def test_catalog_rows(pipeline: FeaturePipeline, catalog_rows: list[dict[str, Any]]) -> None:
    rows = catalog_rows + EXTRA
    py = pipeline.transform(Catalog.from_rows(rows))
    assert {1} < set(py.item_id.tolist()) and 1 in py.tags and (py.tags > 1).any()  # known and unknown both occur
    assert 1 in py.performers and (py.performers > 1).any()
    assert_same(py, deno({"features": pipeline.to_json(), "rows": [as_js(r) for r in rows]}))


def edge_rows(pipeline: FeaturePipeline) -> list[dict[str, Any]]:
    known = pipeline.tags.tokens[:6]
    jst, ny = timezone(timedelta(hours=9)), ZoneInfo("America/New_York")
    stamps = [
        datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), datetime(2024, 5, 6, 7, 8, 9, 999999, tzinfo=jst),
        datetime(2020, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2020, 1, 1, 0, 0, 0, 1, tzinfo=timezone(-timedelta(hours=23, minutes=59))),
        datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2021, 3, 14, 2, 30, tzinfo=ny), datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=ny),
        datetime(1969, 12, 31, 23, 59, 59, 500001, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
    ]  # fmt: skip
    rows: list[dict[str, Any]] = [
        {}, {"id": None, "tags": None, "performers": None, "maker": None},
        {"id": KNOWN_ID, "tags": UNICODE, "performers": UNICODE, "maker": UNICODE[0], "label": ""},
        {"tags": ["unknown-1", known[0], "", "unknown-2", known[1], known[2], "unknown-3", known[3], known[4],
                  known[5]], "performers": ["nobody", "", "nobody-else"], "maker": "", "series": "no such series"},
        {"tags": ["", "", ""], "performers": [""]},
        {"price": Decimal("-5"), "duration_seconds": -1, "review_count": -10, "review_average": -1.0},
        {"price": Decimal("1980"), "duration_seconds": 10**7, "review_count": 10**9, "review_average": 5},
        {"price": "  1_000.5\n", "duration_seconds": "nan", "review_count": "inf", "review_average": "-inf"},
        {"price": "abc", "duration_seconds": "", "review_count": "1e400", "review_average": "5."},
        {"price": 0, "duration_seconds": 0, "review_count": 0, "review_average": 0.0, "product_released_at": 0.0},
        {"price": 1e300, "review_average": 4.999999999, "product_released_at": 1700000000.123456},
        {"price": Decimal("0.000001"), "product_released_at": -1e300},
    ]  # fmt: skip
    rows += [{"product_released_at": s, "price": Decimal(i) / 7} for i, s in enumerate(stamps)]
    return rows


def test_edge_rows(pipeline: FeaturePipeline) -> None:
    rows = edge_rows(pipeline)
    assert_same(pipeline.transform(Catalog.from_rows(rows)),
                deno({"features": pipeline.to_json(), "rows": [as_js(r) for r in rows]}))  # fmt: skip


def request_bodies(pipeline: FeaturePipeline) -> list[dict[str, Any]]:
    items = json.loads(FIXTURE.read_text())["result"]["items"]
    fixture = []
    for r in (parse_item(item) for item in items):
        v = {k: x for k, x in as_js(row(r, 0)).items() if x is not None and k != "id"}
        fixture.append({**v, "price": float(r.price) if r.price is not None else None, "title": r.title})
    known = pipeline.tags.tokens[:6]
    dates = [
        "2020-01-01T00:00:00.123456", "2020-02-29", "2020-01-01 12:30", "2020-01-01t00:00:00z", "2020-01-01_00:00:00",
        "0001-01-01T00:00:00", "0001-01-01T23:59:59.999999", "0001-01-02T00:00:00", "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999",
        "9999-12-31T23:59:59-23:59", "2020-01-01T00:00:00+0530", "2020-01-01T00:00:00.123456789Z",
        "2020-01-01T00:00:00,5+09:00", "2021-03-14T02:30:00-05:00", "1700000000", "1700000000.5", "-1.5",
        "1700000000000", ".5", "1700000000.1234567", "20000000001", "2024-06-30T23:59:59.000001-00:00",
    ]  # fmt: skip
    videos: list[dict[str, Any]] = [
        {}, {"id": None, "title": "", "tags": [], "maker": None, "price": None, "product_released_at": None},
        {"id": str(KNOWN_ID).upper(), "tags": [" " + UNICODE[0] + "\u3000", "\u0085" + UNICODE[1]]},
        {"id": "{" + str(KNOWN_ID) + "}", "performers": UNICODE[:2], "maker": "\t" + UNICODE[0] + "\n"},
        {"id": "urn:uuid:" + str(KNOWN_ID)}, {"id": KNOWN_ID.hex}, {"id": str(uuid.UUID(int=3))},
        {"tags": ["u1", known[0], "u2", known[1], known[2], "u3", known[3], known[4], known[5]], "label": "x"},
        {"price": 0, "duration_seconds": 10000000.0, "review_count": 10**9, "review_average": 5},
        {"price": 1e9, "duration_seconds": 0, "review_count": 0, "review_average": 0, "title": "😀" * 1000},
        {"price": -0.0, "duration_seconds": -0.0, "review_average": 4.25, "review_count": 7.0},
    ]  # fmt: skip
    videos += [{"product_released_at": d, "price": i * 13.7} for i, d in enumerate(dates)]
    return [{"videos": fixture}, {"videos": videos}, {"videos": [{}] * 1000}]


def test_request_path(pipeline: FeaturePipeline, utc: None) -> None:
    bodies = request_bodies(pipeline)
    results = deno({"features": pipeline.to_json(), "requests": bodies})["results"]
    assert len(results) == len(bodies) == 3
    for body, ts in zip(bodies, results, strict=True):
        rows = [v.model_dump() for v in ItemsIn.model_validate(body).videos]
        assert_same(pipeline.transform(Catalog.from_rows(rows)), ts)


BAD: list[Any] = [
    [], "videos", None, {}, {"videos": []}, {"videos": [{}] * 1001}, {"videos": [{}], "extra": 1},
    {"videos": {}}, {"videos": [5]}, {"videos": [None]}, {"videos": [{"extra": 1}]},
    {"videos": [{"duration_seconds": True}]}, {"videos": [{"duration_seconds": "5"}]},
    {"videos": [{"duration_seconds": 5.5}]}, {"videos": [{"duration_seconds": 10**7 + 1}]},
    {"videos": [{"duration_seconds": -1}]}, {"videos": [{"review_count": 1e9 + 1}]},
    {"videos": [{"price": True}]}, {"videos": [{"price": "5"}]}, {"videos": [{"price": -0.01}]},
    {"videos": [{"price": 1e9 + 0.0001}]}, {"videos": [{"review_average": 5.000001}]},
    {"videos": [{"product_released_at": 1700000000}]}, {"videos": [{"product_released_at": "2020-02-30"}]},
    {"videos": [{"product_released_at": "2020-01-01T00:00:00+05"}]},
    {"videos": [{"product_released_at": " 2020-01-01"}]}, {"videos": [{"product_released_at": "1e9"}]},
    {"videos": [{"product_released_at": "2020-01-01T24:00:00"}]}, {"videos": [{"product_released_at": "0000-01-01"}]},
    {"videos": [{"product_released_at": "1700000000000000"}]}, {"videos": [{"maker": "a\x00b"}]},
    {"videos": [{"maker": "   "}]}, {"videos": [{"maker": "\u00a0\u3000"}]}, {"videos": [{"tags": ["ok", "x\ny"]}]},
    {"videos": [{"tags": ["x\x7f"]}]}, {"videos": [{"tags": [""]}]}, {"videos": [{"maker": "a" * 201}]},
    {"videos": [{"performers": ["😀" * 201]}]}, {"videos": [{"tags": ["t"] * 201}]},
    {"videos": [{"performers": ["p"] * 101}]}, {"videos": [{"title": "x" * 1001}]}, {"videos": [{"title": None}]},
    {"videos": [{"tags": None}]}, {"videos": [{"tags": "abc"}]}, {"videos": [{"tags": ["a", None]}]},
    {"videos": [{"maker": 5}]}, {"videos": [{"id": "not-a-uuid"}]}, {"videos": [{"id": 5}]},
    {"videos": [{"id": " " + str(KNOWN_ID)}]}, {"videos": [{"id": "{" + KNOWN_ID.hex + "}"}]},
    {"videos": [{"id": "URN:UUID:" + str(KNOWN_ID)}]},
]  # fmt: skip
GOOD: list[Any] = [
    {"videos": [{}]}, {"videos": [{"maker": " a ", "tags": ["a" * 200], "performers": ["😀" * 200]}]},
    {"videos": [{"title": "x" * 1000, "tags": ["t"] * 200, "performers": ["p"] * 100}]},
    {"videos": [{"price": 1e9, "review_average": 5, "duration_seconds": 1e7, "review_count": 10**9}]},
    {"videos": [{"maker": "x\u0085y", "label": "\u200bx", "series": "x\ufeff"}]},
]  # fmt: skip


def test_validation_agrees(pipeline: FeaturePipeline) -> None:
    results = deno({"features": pipeline.to_json(), "requests": BAD + GOOD})["results"]
    assert len(results) == len(BAD) + len(GOOD) > 50
    for body, ts in zip(BAD, results[: len(BAD)], strict=True):
        with pytest.raises(ValidationError):
            ItemsIn.model_validate(body)
        assert ts.get("error") == "validation" and ts["message"], (str(body)[:80], ts)
    for body, ts in zip(GOOD, results[len(BAD) :], strict=True):
        rows = [v.model_dump() for v in ItemsIn.model_validate(body).videos]
        assert_same(pipeline.transform(Catalog.from_rows(rows)), ts)


def test_user_stats() -> None:
    counts = [0, 1, 2, 3, 5, 7, 10, 19, 20, 49, 50, 99, 100, 1000, 12345, 10**6, 2**31]
    grid = [(a, b) for a in counts for b in counts]
    ours = user_stats(np.array([a for a, _ in grid]), np.array([b for _, b in grid]))
    theirs = np.array(deno({"stats": grid})["stats"], dtype=np.float64).astype(np.float32)
    assert ours.shape == theirs.shape == (len(grid), 3)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_log1p_is_numpys() -> None:
    """Math.log1p differs from numpy's (the C library's) in the last bit for ~3 % of inputs: features.ts has its own."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.random(20000) * 10.0 ** rng.integers(-12, 13, 20000), np.arange(0.0, 3000.0),
                        [0.0, 5e-324, 1e-300, 2**-29, 0.41421, 0.41423, 2**53, 1e308]])  # fmt: skip
    theirs = np.array(deno({"log1p": x.tolist()})["log1p"], dtype=np.float64)
    assert np.array_equal(np.log1p(x).view(np.uint64), theirs.view(np.uint64))

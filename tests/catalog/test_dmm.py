"""The ItemList client and item mapping: the real sample, every failure the API has, hostile bodies."""

from __future__ import annotations

import json
import random
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.catalog.conftest import END, START
from tests.support.db import FIXTURES
from twotower.catalog import dmm
from twotower.catalog.dmm import DmmClient, DmmConfig, RateLimiter
from twotower.catalog.dmm_items import parse_item
from twotower.catalog.fake import FAULT_KINDS, FakeCatalog, FakeDmmServer, Faults, make_items
from twotower.errors import UpstreamError

SAMPLE = json.loads((FIXTURES / "dmm_itemlist_v3_sample.json").read_text())["result"]["items"]


def _client(url: str, **kwargs: Any) -> DmmClient:
    values: dict[str, Any] = {"api_id": "TEST_API_ID", "affiliate_id": "test-990", "url": url, "rate_limit": 100.0,
                              "timeout": 0.5, "backoff_base": 0.01, "backoff_cap": 0.05, **kwargs}  # fmt: skip
    return DmmClient(DmmConfig(**values), rng=random.Random(0))


def test_the_sample_maps_to_videos() -> None:
    first, second, third = (parse_item(i) for i in SAMPLE)
    assert (first.source, first.external_id, first.title) == ("dmm", "abc00101", "Sample Title One")
    assert first.duration_seconds == 125 * 60 and first.price == Decimal("210")
    assert (first.maker, first.label, first.series, first.director) == (
        "Sample Maker", "Sample Label", "Sample Series", "Director X")  # fmt: skip
    assert first.product_released_at == datetime(2026, 1, 11, 1, 0, 53, tzinfo=UTC)  # 10:00:53 JST
    assert list(first.tags) == ["ハイビジョン", "Drama", "Single Performer"]
    assert list(first.performers) == ["Performer A"]
    assert (first.review_count, first.review_average) == (91, pytest.approx(4.84))
    assert first.sample_video_url == "https://example.invalid/litevideo/cid=abc00101/size=720_480/"
    assert first.thumbnail_url == "https://example.invalid/img/abc00101pl.jpg"
    assert first.product_url is not None and "af_id=test-990" in first.product_url
    assert first.raw is not None and first.raw["campaign"][0]["title"] == "Winter sale"
    assert list(second.performers) == ["Performer A", "Performer B"] and second.series is None
    assert second.sample_video_url is None and second.price == Decimal("1480")
    # "～980", no volume, no review, no actress: missing blocks are None, not errors
    assert third.price == Decimal("980") and third.duration_seconds is None and third.review_count is None
    assert list(third.performers) == [] and third.label is None


@pytest.mark.parametrize(
    ("item", "message"),
    [({"title": "x"}, "content_id"), ({"content_id": "a1"}, "no title"), ({"content_id": "", "title": "x"},
     "content_id"), ({"content_id": ["a"], "title": "x"}, "content_id")],
)  # fmt: skip
def test_items_without_an_id_or_a_title_are_rejected(item: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_item(item)


def test_hostile_items_are_cleaned_not_crashed_on() -> None:
    item = {
        "content_id": "bad\x0001", "title": "  Title\x00 with   NUL ", "date": "not a date", "volume": "two hours",
        "review": {"count": "-3", "average": "1e400"}, "prices": {"price": "free!"}, "imageURL": "nope",
        "iteminfo": {"genre": [{"name": "x" * 5000}, "junk", {"id": 1}], "actress": {"name": "not a list"}},
        "sampleMovieURL": {"size_720_480": "javascript:alert(1)"}, "URL": "ftp://x",
        "deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]],
    }  # fmt: skip
    video = parse_item(item)
    assert video.external_id == "bad01" and video.title == "Title with NUL"
    assert video.product_released_at is None and video.duration_seconds is None and video.price is None
    assert (video.review_count, video.review_average) == (None, None)
    assert video.thumbnail_url is None and video.sample_video_url is None and video.product_url is None
    assert [len(t) for t in video.tags] == [200] and list(video.performers) == []
    assert "\x00" not in json.dumps(video.raw)


def test_the_rate_limiter_spaces_request_starts() -> None:
    now = [0.0]
    starts: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    limiter = RateLimiter(5.0, clock=lambda: now[0], sleep=sleep, margin=0.0)
    for _ in range(11):
        limiter.wait()
        starts.append(now[0])
    assert starts == pytest.approx([i * 0.2 for i in range(11)])
    assert sum(1 for t in starts if t < 1.0) == 5  # never more than 5 in one second
    now[0] += 10  # idle time is not saved up for a burst
    margin = RateLimiter(5.0, clock=lambda: now[0], sleep=sleep)
    first = now[0]
    margin.wait()
    margin.wait()
    assert now[0] - first == pytest.approx(0.204)


def test_pages_and_date_windows_like_the_api() -> None:
    catalog = FakeCatalog(make_items(250, START, END))
    with FakeDmmServer(catalog) as fake, _client(fake.url) as client:
        page = client.item_list(START, END, 1)
        assert (page.total_count, page.first_position, len(page.items)) == (250, 1, 100)
        dates = [i["date"] for i in page.items]
        assert dates == sorted(dates, reverse=True)  # sort=date: newest first
        last = client.item_list(START, END, 201)
        assert len(last.items) == 50 and last.items[-1]["content_id"] == "fk000000"
        mid = datetime(2025, 7, 1, tzinfo=dmm.JST)
        older = client.item_list(START, mid, 1)
        assert 0 < older.total_count < 250 and all(i["date"] <= "2025-07-01 00:00:00" for i in older.items)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_failure_is_retried_then_reported(kind: str) -> None:
    faults = Faults(rate=1.0, kinds=(kind,), slow_seconds=1.0, retry_after=0.01)
    with FakeDmmServer(FakeCatalog(make_items(5, START, END)), faults=faults) as fake, \
            _client(fake.url, max_retries=2) as client:  # fmt: skip
        with pytest.raises(UpstreamError, match="failed 3 times in a row at offset 1 of"):
            client.item_list(START, END)
        assert client.stats.requests == 3 and sum(client.stats.failures.values()) == 3
        assert len(fake.log) == 3


def test_mixed_failures_are_ridden_out() -> None:
    faults = Faults(rate=0.4, slow_seconds=1.0, retry_after=0.01, seed=3)
    with FakeDmmServer(FakeCatalog(make_items(30, START, END)), faults=faults) as fake, \
            _client(fake.url, max_retries=10) as client:  # fmt: skip
        for _ in range(10):
            assert client.item_list(START, END).total_count == 30
        assert sum(client.stats.failures.values()) == client.stats.requests - 10 > 0
        assert {r.outcome for r in fake.log} - {"ok"}


def test_a_refused_request_stops_at_once_with_the_apis_message() -> None:
    with FakeDmmServer(FakeCatalog(), api_id="REAL") as fake, _client(fake.url) as client:
        with pytest.raises(UpstreamError, match=r"refused the request \(HTTP 400\): request error \(api_id: unknown"):
            client.item_list(START, END)
        assert client.stats.requests == 1


def test_an_oversized_body_is_a_failure_not_a_memory_blow_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmm, "MAX_BODY_BYTES", 10_000)
    with FakeDmmServer(FakeCatalog(make_items(100, START, END))) as fake, \
            _client(fake.url, max_retries=1) as client, \
            pytest.raises(UpstreamError, match="larger than 10,000 bytes"):  # fmt: skip
        client.item_list(START, END)


def test_the_fake_enforces_its_own_rate_limit() -> None:
    with FakeDmmServer(FakeCatalog(), rate_limit=5) as fake, _client(fake.url, rate_limit=100.0) as client:
        for _ in range(8):
            with suppress(UpstreamError):
                client.item_list(START, END)
        assert "over_limit" in {r.outcome for r in fake.log}

"""One DMM ``ItemList`` item → a :class:`VideoRecord`: every field checked, cleaned and capped, none trusted.

Genres become tags and actresses performers; maker, label, series and director are the first of each. Text
loses NUL bytes and lone surrogates, numbers are parsed out of the API's strings (``"1,980~"``, ``"125"`` or
``"02:05:00"``), URLs must be http(s), and the whole item is kept in ``raw`` with the same cleaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from twotower.catalog.dmm import SOURCE, parse_api_time
from twotower.ingest.parsing import release_date_problem
from twotower.ingest.records import VideoRecord

__all__ = ["parse_item"]

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MAX_INT = 2**31 - 1  # integer columns


def _safe(text: str) -> str:
    """Text Postgres stores: no NUL, no lone surrogates (from ``\\ud800`` escapes in the JSON)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _text(value: Any, limit: int = 1000) -> str | None:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = " ".join(_safe(str(value)).split())
        return text[:limit] or None
    return None


def _clean(value: Any, depth: int = 0) -> Any:
    """The item as JSON Postgres accepts (no NUL characters), at most 16 levels deep."""
    if isinstance(value, str):
        return _safe(value)
    if depth >= 16:
        return None
    if isinstance(value, dict):
        return {_safe(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    return value


def _names(info: Mapping[str, Any], key: str) -> list[str]:
    entries = info.get(key)
    if not isinstance(entries, list):
        return []
    return [n for e in entries if isinstance(e, dict) and (n := _text(e.get("name"), 200))]


def _url(value: Any) -> str | None:
    text = _text(value, 2048)
    return text if text and text.startswith(("https://", "http://")) else None


def _price(prices: Any) -> Decimal | None:
    """``"210~"``, ``"～980"``, ``"1480"``: the first number (the lowest price of the item's deliveries)."""
    if not isinstance(prices, dict):
        return None
    for value in (prices.get("price"), prices.get("list_price")):
        match = _NUMBER.search(str(value).replace(",", "")) if value is not None else None
        if match:
            price = Decimal(match.group())
            return price if price < Decimal("1e10") else None
    return None


def _duration(volume: Any) -> int | None:
    """``"125"`` (minutes, video floors) or ``"02:05:00"``."""
    text = _text(volume, 40)
    if not text:
        return None
    if re.fullmatch(r"\d{1,4}", text):  # minutes (up to a week is plausible, more is broken)
        return int(text) * 60 if int(text) <= 7 * 24 * 60 else None
    match = re.fullmatch(r"(\d{1,3}):(\d{2}):(\d{2})", text)
    if match:
        h, m, s = (int(g) for g in match.groups())
        return h * 3600 + m * 60 + s
    return None


def _review(review: Any) -> tuple[int | None, float | None]:
    if not isinstance(review, dict):
        return None, None
    try:
        count: int | None = int(review.get("count"))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        count = None
    try:
        average: float | None = float(review.get("average"))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        average = None
    if average is not None and not 0 <= average <= 100:  # NaN and Inf too
        average = None
    return (count if count is not None and 0 <= count <= _MAX_INT else None), average


def _sample_movie(urls: Any) -> str | None:
    if not isinstance(urls, dict):
        return None
    for key in ("size_720_480", "size_644_414", "size_560_360", "size_476_306"):
        if url := _url(urls.get(key)):
            return url
    return None


def parse_item(item: Mapping[str, Any]) -> VideoRecord:
    """One ``result.items[]`` entry as a video; raises ValueError when it lacks a content id or a title.

    Genres become tags and actresses performers; maker, label, series and director are the first of each.
    Any other block may be missing. The whole item is kept in ``raw``.
    """
    content_id = _text(item.get("content_id"), 200)
    if not content_id:
        raise ValueError("item without a content_id")
    title = _text(item.get("title"))
    if not title:
        raise ValueError(f"item {content_id}: no title")
    released = None
    if isinstance(item.get("date"), str):
        try:
            released = parse_api_time(item["date"])
        except ValueError:
            released = None
        if released is not None and release_date_problem(released):  # the catalog importers' rule
            released = None  # the product is real, its date is not: kept as unknown, like an unreadable one
    info = item.get("iteminfo") if isinstance(item.get("iteminfo"), dict) else {}
    assert isinstance(info, dict)
    images = item.get("imageURL") if isinstance(item.get("imageURL"), dict) else {}
    assert isinstance(images, dict)
    count, average = _review(item.get("review"))

    def first(key: str) -> str | None:
        names = _names(info, key)
        return names[0] if names else None

    return VideoRecord(
        source=SOURCE,
        external_id=content_id,
        title=title,
        duration_seconds=_duration(item.get("volume")),
        price=_price(item.get("prices")),
        maker=first("maker"),
        label=first("label"),
        series=first("series"),
        director=first("director"),
        product_released_at=released,
        thumbnail_url=_url(images.get("large")) or _url(images.get("list")),
        sample_video_url=_sample_movie(item.get("sampleMovieURL")),
        product_url=_url(item.get("affiliateURL")) or _url(item.get("URL")),
        review_count=count,
        review_average=average,
        raw=_clean(dict(item)),
        tags=_names(info, "genre"),
        performers=_names(info, "actress"),
    )

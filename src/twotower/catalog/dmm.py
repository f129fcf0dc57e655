"""The DMM Affiliate API v3 ``ItemList`` endpoint: one polite, retrying client (items → videos: ``dmm_items``).

Every request waits its turn in a :class:`RateLimiter` (retries included), and a failed request — a timeout, a
connection error, HTTP 429 or 5xx, a body that is not the expected JSON, or ``result.status`` other than 200 — is
retried with exponential backoff and full jitter (``Retry-After`` is honoured). Other HTTP 4xx answers mean the
request itself is wrong (an unknown ``api_id``, a bad parameter) and stop at once with the API's message.

Times in the API are Japan time (JST, UTC+9) without a zone: ``date`` of an item, ``gte_date``/``lte_date``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from twotower.errors import ConfigError, UpstreamError
from twotower.settings import Settings

__all__ = [
    "JST",
    "MAX_HITS",
    "MAX_OFFSET",
    "SOURCE",
    "DmmClient",
    "DmmConfig",
    "Page",
    "RateLimiter",
    "api_time",
    "parse_api_time",
]

log = logging.getLogger("twotower.catalog")

JST = timezone(timedelta(hours=9), "JST")
MAX_HITS = 100  # items per page
MAX_OFFSET = 50_000  # the largest `offset` the API accepts: a window must hold fewer items than this
SOURCE = "dmm"  # videos.source of synced items; external_id is the item's content_id
MAX_BODY_BYTES = 16 << 20  # a page of 100 items is ~300 KB; anything this large is broken or hostile
_API_TIME = "%Y-%m-%dT%H:%M:%S"


def api_time(ts: datetime) -> str:
    """An aware time as the API wants it: JST, to the second, no zone."""
    return ts.astimezone(JST).strftime(_API_TIME)


def parse_api_time(value: str) -> datetime:
    """``2026-01-11 10:00:53`` (or with a ``T``) in JST → an aware time."""
    return datetime.fromisoformat(value.strip().replace(" ", "T", 1)).replace(tzinfo=JST)


@dataclass(frozen=True)
class DmmConfig:
    api_id: str
    affiliate_id: str
    url: str = "https://api.dmm.com/affiliate/v3/ItemList"
    site: str = "FANZA"
    service: str = "digital"
    floor: str = "videoa"
    rate_limit: float = 1.0  # requests per second
    timeout: float = 20.0
    max_retries: int = 6
    hits: int = MAX_HITS
    max_offset: int = MAX_OFFSET  # the API's; smaller only to test window splitting on a small catalog
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DmmConfig:
        if settings.dmm_api_id is None or not settings.dmm_affiliate_id:
            raise ConfigError(
                "the DMM API needs credentials: set TWOTOWER_DMM_API_ID and TWOTOWER_DMM_AFFILIATE_ID "
                "(from https://affiliate.dmm.com/api/)"
            )
        values: dict[str, Any] = {
            "api_id": settings.dmm_api_id.get_secret_value(),
            "affiliate_id": settings.dmm_affiliate_id,
            "url": settings.dmm_api_url,
            "site": settings.dmm_site,
            "service": settings.dmm_service,
            "floor": settings.dmm_floor,
            "rate_limit": settings.dmm_rate_limit,
            "timeout": settings.dmm_timeout,
            "max_retries": settings.dmm_max_retries,
            "max_offset": settings.dmm_max_offset,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def scope(self) -> str:
        """The key of this catalog's sync state: one watermark per site/service/floor."""
        return f"{SOURCE}:{self.site}/{self.service}/{self.floor}"


class RateLimiter:
    """Request starts at least ``1/rate`` seconds apart: never more than ``rate`` in any one-second window.

    ``margin`` stretches the interval a little, so that jitter on the way (a request that leaves on time but
    arrives late, followed by one that does not) cannot push the rate the server sees over the limit.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = 0.02,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.interval = (1.0 + margin) / rate
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


@dataclass
class Page:
    total_count: int
    first_position: int
    items: list[dict[str, Any]]


class _Retry(Exception):
    """A failed attempt worth retrying: ``kind`` for the counters, ``wait`` from Retry-After."""

    def __init__(self, kind: str, detail: str, wait: float | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.wait = kind, detail, wait


@dataclass
class ClientStats:
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # by kind: 429, 5xx, timeout, network, malformed
    waited_seconds: float = 0.0


class DmmClient:
    """``ItemList`` pages, one at a time, within the rate limit, retrying what can be retried."""

    def __init__(
        self,
        config: DmmConfig,
        *,
        http: httpx.Client | None = None,
        limiter: RateLimiter | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._http = http or httpx.Client(
            timeout=config.timeout, headers={"User-Agent": "twotower-catalog-sync"}, follow_redirects=False
        )
        self._owns_http = http is None
        self.limiter = limiter or RateLimiter(config.rate_limit)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self.stats = ClientStats()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> DmmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def params(self, gte: datetime, lte: datetime, offset: int) -> dict[str, str]:
        c = self.config
        return {
            "api_id": c.api_id, "affiliate_id": c.affiliate_id, "site": c.site, "service": c.service,
            "floor": c.floor, "hits": str(c.hits), "offset": str(offset), "sort": "date",
            "gte_date": api_time(gte), "lte_date": api_time(lte), "output": "json",
        }  # fmt: skip

    def item_list(self, gte: datetime, lte: datetime, offset: int = 1) -> Page:
        """The page at ``offset`` (1-based) of the items dated in ``[gte, lte]``, newest first."""
        if not 1 <= offset <= self.config.max_offset:
            raise ValueError(f"offset must be in 1..{self.config.max_offset}, got {offset}")
        params = self.params(gte, lte, offset)
        where = f"offset {offset} of {api_time(gte)}..{api_time(lte)} JST"
        for attempt in range(self.config.max_retries + 1):
            self.limiter.wait()
            self.stats.requests += 1
            try:
                return self._attempt(params)
            except _Retry as exc:
                self.stats.failures[exc.kind] += 1
                if attempt == self.config.max_retries:
                    raise UpstreamError(
                        f"the DMM API failed {attempt + 1} times in a row at {where}: {exc.detail}"
                    ) from None
                backoff = self._rng.uniform(0, min(self.config.backoff_cap, self.config.backoff_base * 2**attempt))
                wait = max(backoff, min(exc.wait or 0.0, self.config.backoff_cap))
                log.info("DMM API %s at %s (attempt %d); retrying in %.2fs", exc.detail, where, attempt + 1, wait)
                self.stats.waited_seconds += wait
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, params: Mapping[str, str]) -> Page:
        try:
            with self._http.stream("GET", self.config.url, params=params) as response:
                body = _read_capped(response)
        except httpx.TimeoutException:
            raise _Retry("timeout", f"no answer within {self.config.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise _Retry("network", f"{type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            kind = "429" if status == 429 else "5xx"
            raise _Retry(kind, f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
        if status != 200:
            raise UpstreamError(f"the DMM API refused the request (HTTP {status}): {_error_message(body)}")
        return _parse_page(body, int(params["offset"]), int(params["hits"]))


def _read_capped(response: httpx.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Retry("malformed", f"response larger than {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare, and the backoff covers it


def _error_message(body: bytes) -> str:
    try:
        result = json.loads(body)["result"]
        message = str(result.get("message", ""))
        errors = result.get("errors")
        if isinstance(errors, dict):
            message += " (" + "; ".join(f"{k}: {v}" for k, v in errors.items()) + ")"
        elif isinstance(errors, list):
            message += " (" + "; ".join(str(e) for e in errors) + ")"
        return message[:500] or "no message"
    except (ValueError, KeyError, TypeError, AttributeError):
        return body[:200].decode("utf-8", "replace") or "empty body"


def _count(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise _Retry("malformed", f"result.{name} is {value!r}, not a number") from None
    if number < 0:
        raise _Retry("malformed", f"result.{name} is negative")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_page(body: bytes, offset: int = 1, hits: int = MAX_HITS) -> Page:
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Retry("malformed", "the body is not JSON") from None
    result = document.get("result") if isinstance(document, dict) else None
    if not isinstance(result, dict):
        raise _Retry("malformed", "the body has no `result` object")
    status = str(result.get("status"))
    if status != "200":
        if len(status) == 3 and status.startswith("4") and status != "429":  # a refused request, not a glitch
            raise UpstreamError(f"the DMM API refused the request (result.status {status}): {_error_message(body)}")
        raise _Retry("malformed", f"result.status is {result.get('status')!r}: {_error_message(body)}")
    total = _count(result.get("total_count"), "total_count")
    first = _count(result.get("first_position", offset), "first_position")
    items = result.get("items", [])
    if total and not isinstance(items, list):
        raise _Retry("malformed", "result.items is not a list")
    page = Page(total, first, [i for i in items or [] if isinstance(i, dict)])
    # a page that is short of what total_count promises is broken (or cut off): never take it as the end
    expected = max(0, min(hits, total - offset + 1))
    if len(page.items) < expected:
        raise _Retry("malformed", f"{len(page.items)} items where {expected} were due (total_count {total:,})")
    if page.items and first != offset:
        raise _Retry("malformed", f"first_position {first} for offset {offset}")
    return page

"""A local fake of the DMM Affiliate API v3 ``ItemList`` endpoint, for tests and demos.

It serves generated items in the schema of the real API (numbers as strings, prices like ``"210~"``, blocks that
may be missing, times in JST), pages and filters like it (``hits`` ≤ 100, ``offset`` ≤ 50,000, ``sort=date``
newest first, ``gte_date``/``lte_date`` inclusive), rejects bad credentials and parameters with an HTTP 400 and
the API's error body, and can be told to fail a share of requests the ways a real upstream does: 429 with
``Retry-After``, 500/503, answers slower than any sane timeout, truncated or non-JSON bodies, and
``result.status`` 500 inside an HTTP 200. It also enforces a rate limit of its own (answering 429 above it) and
logs every request with its arrival time, so a test can measure the rate a client really sent.

    twotower sync fake-dmm --items 20000 --port 8765 --failure-rate 0.1
"""

from __future__ import annotations

import bisect
import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from twotower.catalog.dmm import JST, MAX_HITS, MAX_OFFSET
from twotower.synth.names import director_name, label_name, maker_name, performer_name, series_name, tag_name

__all__ = ["FAULT_KINDS", "FakeCatalog", "FakeDmmServer", "Faults", "RequestRecord", "make_items"]

FAULT_KINDS = ("429", "500", "503", "slow", "truncated", "html", "status", "empty")
_TIME = "%Y-%m-%d %H:%M:%S"


def _item(i: int, date: datetime, seed: int, prefix: str) -> dict[str, Any]:
    rng = random.Random(seed * 1_000_003 + i)
    cid = f"{prefix}{i:06d}"
    maker_i = rng.randrange(40)
    maker = maker_name(maker_i)
    item: dict[str, Any] = {
        "service_code": "digital", "service_name": "動画", "floor_code": "videoa", "floor_name": "ビデオ",
        "category_name": "ビデオ (動画)", "content_id": cid, "product_id": cid,
        "title": f"{tag_name(rng.randrange(60))} {series_name(maker, rng.randrange(8)).split()[-1]} #{i}",
        "URL": f"https://example.invalid/content/?id={cid}",
        "affiliateURL": f"https://example.invalid/aff/?lurl={cid}&af_id=test-990&ch=api",
        "imageURL": {
            "list": f"https://example.invalid/img/{cid}pt.jpg",
            "small": f"https://example.invalid/img/{cid}ps.jpg",
            "large": f"https://example.invalid/img/{cid}pl.jpg",
        },
        "date": date.astimezone(JST).strftime(_TIME),
    }  # fmt: skip
    if rng.random() < 0.9:
        item["volume"] = str(rng.randrange(20, 240))
    if rng.random() < 0.7:
        item["review"] = {"count": rng.randrange(1, 500), "average": f"{rng.uniform(1, 5):.2f}"}
    if rng.random() < 0.8:
        size = rng.choice(["size_720_480", "size_560_360"])
        item["sampleMovieURL"] = {size: f"https://example.invalid/litevideo/cid={cid}/{size}/", "pc_flag": 1}
    price = rng.choice([210, 300, 500, 980, 1480, 2980])
    item["prices"] = {"price": rng.choice([f"{price}~", f"～{price}", str(price)])}
    info: dict[str, Any] = {
        "genre": [{"id": 1000 + g, "name": tag_name(g)} for g in sorted(rng.sample(range(60), rng.randrange(1, 6)))],
        "maker": [{"id": 500 + maker_i, "name": maker}],
    }
    if rng.random() < 0.85:
        info["actress"] = [{"id": 10_000 + a, "name": performer_name(a), "ruby": ""}
                           for a in sorted(rng.sample(range(300), rng.randrange(1, 4)))]  # fmt: skip
    if rng.random() < 0.6:
        info["series"] = [{"id": 4000 + maker_i, "name": series_name(maker, rng.randrange(8))}]
    if rng.random() < 0.8:
        info["label"] = [{"id": 9000 + maker_i, "name": label_name(maker, rng.randrange(6))}]
    if rng.random() < 0.5:
        info["director"] = [{"id": 100 + (d := rng.randrange(80)), "name": director_name(d)}]
    item["iteminfo"] = info
    return item


def make_items(
    count: int, start: datetime, end: datetime, *, seed: int = 0, prefix: str = "fk", first: int = 0
) -> list[dict[str, Any]]:
    """``count`` items dated evenly over ``[start, end]`` (to the second), numbered from ``first``."""
    span = (end - start).total_seconds()
    step = span / max(count - 1, 1)
    return [
        _item(first + k, (start + timedelta(seconds=round(k * step))).replace(microsecond=0), seed, prefix)
        for k in range(count)
    ]


class FakeCatalog:
    """Items ordered as ``sort=date`` serves them; ``add`` more while the server runs."""

    def __init__(self, items: Iterable[dict[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        self._dates: list[str] = []  # ascending, parallel to _items
        self.add(items)

    def add(self, items: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            merged = sorted([*self._items, *items], key=lambda it: (it["date"], str(it.get("content_id"))))
            self._items, self._dates = merged, [it["date"] for it in merged]

    def __len__(self) -> int:
        return len(self._items)

    def remove(self, content_ids: Iterable[str]) -> None:
        """Delist items (the rest move up in the listing, as on the real API)."""
        gone = set(content_ids)
        with self._lock:
            self._items = [it for it in self._items if it.get("content_id") not in gone]
            self._dates = [it["date"] for it in self._items]

    def content_ids(self) -> list[str]:
        return [str(it.get("content_id")) for it in self._items]

    def query(self, gte: str, lte: str, offset: int, hits: int) -> tuple[int, list[dict[str, Any]]]:
        """``(total_count, page)`` for dates in ``[gte, lte]`` (``YYYY-MM-DD HH:MM:SS``), newest first."""
        with self._lock:
            lo = bisect.bisect_left(self._dates, gte)
            hi = bisect.bisect_right(self._dates, lte)
            newest_first = self._items[lo:hi][::-1]
        return len(newest_first), newest_first[offset - 1 : offset - 1 + hits]


@dataclass
class Faults:
    """Fail ``rate`` of the requests, drawing the way from ``kinds`` (seeded: the same run fails the same way)."""

    rate: float = 0.0
    kinds: Sequence[str] = FAULT_KINDS
    slow_seconds: float = 3.0
    retry_after: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class RequestRecord:
    at: float  # time.monotonic() at arrival
    params: dict[str, str]
    status: int
    outcome: str  # "ok", a fault kind, "over_limit" or "bad_request"


@dataclass
class _State:
    catalog: FakeCatalog
    api_id: str
    affiliate_id: str
    faults: Faults
    rate_limit: float | None
    max_offset: int = MAX_OFFSET
    log: list[RequestRecord] = field(default_factory=list)
    recent: deque[float] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=random.Random)


def _error_body(params: dict[str, str], status: int, message: str, errors: dict[str, str]) -> dict[str, Any]:
    return {"request": {"parameters": params}, "result": {"status": status, "message": message, "errors": errors}}


def _check(params: dict[str, str], state: _State) -> dict[str, str]:
    """Parameter errors, as the API names them."""
    errors: dict[str, str] = {}
    if params.get("api_id") != state.api_id:
        errors["api_id"] = "unknown api_id"
    if params.get("affiliate_id") != state.affiliate_id:
        errors["affiliate_id"] = "unknown affiliate_id"
    for name, top in (("hits", MAX_HITS), ("offset", state.max_offset)):
        value = params.get(name, "1")
        if not value.isdigit() or not 1 <= int(value) <= top:
            errors[name] = f"{name} must be an integer in 1..{top}"
    if params.get("sort", "date") != "date":
        errors["sort"] = "this fake serves sort=date only"
    for name in ("gte_date", "lte_date"):
        if name in params:
            try:
                datetime.strptime(params[name], "%Y-%m-%dT%H:%M:%S")
            except ValueError:
                errors[name] = f"{name} must look like 2026-01-01T00:00:00"
    if params.get("output", "json") != "json":
        errors["output"] = "this fake serves output=json only"
    return errors


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate in an item: JSON can still carry it, as an escape
        return json.dumps(body).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json; charset=utf-8",
              headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        with suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): nothing to do
            self.wfile.write(body)

    def do_GET(self) -> None:
        arrived = time.monotonic()
        state = self.server.state
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with state.lock:
            over = False
            if state.rate_limit is not None:
                while state.recent and state.recent[0] <= arrived - 1.0:
                    state.recent.popleft()
                over = len(state.recent) >= state.rate_limit
                state.recent.append(arrived)
            fault = state.rng.choice(list(state.faults.kinds)) if state.rng.random() < state.faults.rate else None
        if url.path.rstrip("/") != "/affiliate/v3/ItemList":
            self._record(arrived, params, 404, "bad_request")
            return self._send(404, b'{"result": {"status": 404, "message": "not found"}}')
        if over:
            self._record(arrived, params, 429, "over_limit")
            return self._send(429, b'{"result": {"status": 429, "message": "too many requests"}}',
                              headers={"Retry-After": "1"})  # fmt: skip
        errors = _check(params, state)
        if errors:
            self._record(arrived, params, 400, "bad_request")
            body = _error_body(params, 400, "request error", errors)
            return self._send(400, json.dumps(body, ensure_ascii=False).encode())
        if fault == "slow":  # the right answer, later than a sane timeout
            self._record(arrived, params, 200, fault)
            time.sleep(state.faults.slow_seconds)
        elif fault is not None:
            return self._fault(fault, arrived, params)
        gte = params.get("gte_date", "0000-01-01T00:00:00").replace("T", " ")
        lte = params.get("lte_date", "9999-12-31T23:59:59").replace("T", " ")
        offset, hits = int(params.get("offset", "1")), int(params.get("hits", "20"))
        total, items = state.catalog.query(gte, lte, offset, hits)
        body = {
            "request": {"parameters": params},
            "result": {"status": 200, "result_count": len(items), "total_count": total, "first_position": offset,
                       "items": items},
        }  # fmt: skip
        if fault is None:
            self._record(arrived, params, 200, "ok")
        self._send(200, _encode(body))

    def _fault(self, kind: str, arrived: float, params: dict[str, str]) -> None:
        faults = self.server.state.faults
        status = {"429": 429, "500": 500, "503": 503}.get(kind, 200)
        self._record(arrived, params, status, kind)
        if kind == "429":
            self._send(429, b'{"result": {"status": 429}}', headers={"Retry-After": f"{faults.retry_after:g}"})
        elif kind in ("500", "503"):
            self._send(status, b"<html><body>Service Unavailable</body></html>", "text/html")
        elif kind == "truncated":
            self._send(200, b'{"request": {"parameters": {}}, "result": {"status": 200, "result_count": 100, "it')
        elif kind == "empty":  # valid JSON, but none of the items total_count promises
            offset = params.get("offset", "1")
            self._send(200, b'{"result": {"status": 200, "result_count": 0, "total_count": 1000000, '
                       b'"first_position": ' + offset.encode() + b', "items": []}}')  # fmt: skip
        elif kind == "html":
            self._send(200, b"<!DOCTYPE html><html><body>maintenance</body></html>", "text/html")
        else:  # "status": an error reported inside a 200
            self._send(200, b'{"result": {"status": 500, "message": "internal error"}}')

    def _record(self, arrived: float, params: dict[str, str], status: int, outcome: str) -> None:
        with self.server.state.lock:
            self.server.state.log.append(RequestRecord(arrived, params, status, outcome))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class FakeDmmServer:
    """``with FakeDmmServer(catalog) as fake: ...`` — serving on 127.0.0.1 at ``fake.url`` in a thread."""

    def __init__(
        self,
        catalog: FakeCatalog,
        *,
        api_id: str = "TEST_API_ID",
        affiliate_id: str = "test-990",
        faults: Faults | None = None,
        rate_limit: float | None = None,
        max_offset: int = MAX_OFFSET,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        faults = faults or Faults()
        self.state = _State(catalog, api_id, affiliate_id, faults, rate_limit, max_offset,
                            rng=random.Random(faults.seed))  # fmt: skip
        self._server = _Server((host, port), _Handler)
        self._server.state = self.state
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/affiliate/v3/ItemList"

    @property
    def log(self) -> list[RequestRecord]:
        with self.state.lock:
            return list(self.state.log)

    def max_requests_per_second(self) -> int:
        """The most requests that arrived within any one-second window."""
        times = sorted(r.at for r in self.log)
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while times[lo] <= t - 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def start(self) -> FakeDmmServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-dmm", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeDmmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

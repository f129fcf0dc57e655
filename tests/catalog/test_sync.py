"""``twotower sync dmm`` end to end against the fake API: failures, the watermark, SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.catalog.conftest import END, START, sync_cli
from twotower.catalog import DmmClient, DmmConfig, SyncOptions, sync_dmm
from twotower.catalog.fake import FakeCatalog, FakeDmmServer, Faults, make_items
from twotower.db import Database, locks
from twotower.registry import LocalStore
from twotower.settings import Settings

RATE = 25.0


def _synced(url: str) -> tuple[int, int, int, int]:
    """(dmm videos, distinct content ids, their embeddings for "v", distinct embedded videos)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT v.external_id), count(e.video_id), count(DISTINCT e.video_id) "
            "FROM videos v LEFT JOIN video_embeddings e ON e.video_id = v.id AND e.model_version = 'v' "
            "WHERE v.source = 'dmm'"
        ).fetchone()
    assert row is not None
    return row


def _external_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT external_id FROM videos WHERE source = 'dmm'").fetchall()}


def _sync(url: str, data: Path, fake: FakeDmmServer, options: SyncOptions, **config: Any) -> Any:
    values: dict[str, Any] = {"api_id": "TEST_API_ID", "affiliate_id": "test-990", "url": fake.url,
                              "rate_limit": RATE, "timeout": 0.5, "backoff_base": 0.05, "backoff_cap": 0.5,
                              "max_retries": 8, **config}  # fmt: skip
    options.cache_dir = data / "models"
    with Database.open(Settings(database_url=url, data_dir=data), migrate=False) as db, \
            DmmClient(DmmConfig(**values), rng=random.Random(1)) as client:  # fmt: skip
        return sync_dmm(db, client, LocalStore(data / "store"), options)


def test_20000_items_through_10_percent_failures_then_only_what_is_new(url: str, deployed: Path) -> None:
    catalog = FakeCatalog(make_items(20_000, START, END, seed=1))
    faults = Faults(rate=0.10, slow_seconds=1.0, retry_after=0.1, seed=7)
    # the fake answers 429 above the limit itself; max_offset 2,000 makes the sync split date windows
    with FakeDmmServer(catalog, faults=faults, rate_limit=RATE, max_offset=2000) as fake:
        summary = _sync(url, deployed, fake, SyncOptions(since=START, until=END), max_offset=2000)
        log = fake.log
        assert fake.max_requests_per_second() <= RATE
        assert "over_limit" not in {r.outcome for r in log}
        failed = [r for r in log if r.outcome != "ok"]
        assert len(failed) >= 0.05 * len(log) and len({r.outcome for r in failed}) >= 5  # mixed failures happened
        assert summary.requests == len(log) and sum(summary.failures.values()) == len(failed)
        assert summary.windows > 10 and summary.items >= 20_000 and summary.inserted == 20_000
        assert _synced(url) == (20_000, 20_000, 20_000, 20_000)
        assert _external_ids(url) == set(catalog.content_ids())
        assert summary.embedded == 20_000 and summary.version == "v"
        assert summary.watermark_after == END

        # the next day's 300 items: the second sync asks only for what is newer than the watermark
        catalog.add(make_items(300, END + timedelta(hours=1), END + timedelta(days=1), seed=2, first=20_000))
        fake.state.faults.rate = 0.0
        before = len(fake.log)
        second = _sync(url, deployed, fake, SyncOptions(until=END + timedelta(days=1)), max_offset=2000)
        asked = fake.log[before:]
        assert all(r.params["gte_date"] == "2026-01-01T00:00:01" for r in asked), {r.params["gte_date"] for r in asked}
        # 4 pages: each after the first overlaps the previous one by an item (see catalog.sync._fetch)
        assert (second.items, second.inserted, second.embedded, second.requests) == (300, 300, 300, 4)
        assert _synced(url) == (20_300, 20_300, 20_300, 20_300)
        with psycopg.connect(url) as conn:
            state = conn.execute("SELECT watermark, cursor, last_summary FROM sync_state").fetchone()
        assert state is not None and state[0] == END + timedelta(days=1) and state[1] == {}
        assert state[2]["inserted"] == 300


def test_a_sync_killed_mid_run_resumes_with_no_duplicates_and_no_gaps(url: str, deployed: Path) -> None:
    catalog = FakeCatalog(make_items(3000, START, END, seed=3))
    args = ("--since", "2025-01-01", "--until", "2026-01-01")
    with FakeDmmServer(catalog, max_offset=500) as fake:
        first = sync_cli(url, deployed, fake.url, *args, rate=8.0, max_offset=500)
        deadline = time.monotonic() + 60
        while sum(r.outcome == "ok" for r in fake.log) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT cursor FROM sync_state").fetchone()
        stored = len(_external_ids(url))
        assert row is not None and row[0]["done_until"] and 0 < stored < 3000
        killed_at = len(fake.log)

        again = sync_cli(url, deployed, fake.url, *args, "--json", rate=50.0, max_offset=500)
        out, err = again.communicate(timeout=180)
        assert again.returncode == 0, err
        summary = json.loads(out)
        assert summary["resumed"] is True and summary["inserted"] == 3000 - stored
        assert len(fake.log) - killed_at < 3000 / 100 + 8  # did not start over
    assert _synced(url) == (3000, 3000, 3000, 3000)
    assert _external_ids(url) == set(catalog.content_ids())


def test_the_first_sync_needs_since_and_bad_input_is_one_line(url: str, deployed: Path) -> None:
    with FakeDmmServer(FakeCatalog()) as fake:
        for args, code, message in [
            ((), 65, "this catalog was never synced: give --since"),
            (("--since", "yesterday"), 65, "--since 'yesterday': expected a date"),
            (("--since", "2026-02-01", "--until", "2026-01-01"), 65, "is after --until"),
            (("--since", "1900-01-01"), 65, "is before 1990"),
            (("--since", "2026-01-01", "--rate-limit", "0"), 2, "--rate-limit"),
        ]:
            run = sync_cli(url, deployed, fake.url, *args)
            _, err = run.communicate(timeout=60)
            assert run.returncode == code and message in err and "Traceback" not in err, (args, err)
            if code != 2:
                assert len(err.strip().splitlines()) == 1
        assert fake.log == []  # nothing was asked of the API


def test_missing_credentials_are_a_config_error(url: str, deployed: Path) -> None:
    run = sync_cli(url, deployed, "http://127.0.0.1:9/affiliate/v3/ItemList", "--since", "2026-01-01",
                   TWOTOWER_DMM_API_ID=None)  # fmt: skip
    _, err = run.communicate(timeout=60)
    assert run.returncode == 78 and "set TWOTOWER_DMM_API_ID and TWOTOWER_DMM_AFFILIATE_ID" in err, err
    assert len(err.strip().splitlines()) == 1


def test_an_api_that_keeps_failing_stops_cleanly_and_the_next_run_resumes(url: str, deployed: Path) -> None:
    catalog = FakeCatalog(make_items(1000, START, END, seed=4))
    with FakeDmmServer(catalog, max_offset=300) as fake:
        calls = {"n": 0}
        original = fake._server.RequestHandlerClass.do_GET  # type: ignore[attr-defined]

        def flaky(handler: Any) -> None:  # healthy for 4 requests, then down
            calls["n"] += 1
            if calls["n"] > 4:
                handler._send(503, b"down")
                return
            original(handler)

        fake._server.RequestHandlerClass.do_GET = flaky  # type: ignore[attr-defined]
        try:
            run = sync_cli(url, deployed, fake.url, "--since", "2025-01-01", "--until", "2026-01-01", max_offset=300,
                           TWOTOWER_DMM_MAX_RETRIES="2")  # fmt: skip
            _, err = run.communicate(timeout=120)
        finally:
            fake._server.RequestHandlerClass.do_GET = original  # type: ignore[attr-defined]
        assert run.returncode == 69 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "failed 3 times in a row" in err and "run the sync again to resume" in err
        stored = len(_external_ids(url))
        assert 0 < stored < 1000
        run = sync_cli(url, deployed, fake.url, max_offset=300)  # no range: resumes the interrupted one
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and "resumed the interrupted sync" in out, err
    assert _synced(url) == (1000, 1000, 1000, 1000)


def test_a_second_sync_at_once_is_refused(url: str, deployed: Path) -> None:
    with psycopg.connect(url, autocommit=True) as conn, FakeDmmServer(FakeCatalog()) as fake:
        locks.wait_lock(conn, "sync dmm:FANZA/digital/videoa")
        run = sync_cli(url, deployed, fake.url, "--since", "2026-01-01")
        _, err = run.communicate(timeout=60)
    assert run.returncode == 75 and "another sync of dmm:FANZA/digital/videoa is running" in err


def test_videos_added_outside_a_sync_get_embedded_by_the_next_one(url: str, deployed: Path) -> None:
    with psycopg.connect(url) as conn:  # e.g. imported from a file after the deploy, or a killed sync's last page
        conn.execute("INSERT INTO videos (source, external_id, title) VALUES ('app', 'x1', 'One'), ('app', 'x2', 'B')")
        conn.execute("UPDATE videos SET title = title || ' (cut)' WHERE external_id IN (SELECT external_id "
                     "FROM videos WHERE source = 'synthetic' ORDER BY external_id LIMIT 3)")  # fmt: skip
    with FakeDmmServer(FakeCatalog(make_items(10, START, END))) as fake:
        summary = _sync(url, deployed, fake, SyncOptions(since=START, until=END))
    assert summary.embedded == 10 + 2 + 3
    with psycopg.connect(url) as conn:
        missing = conn.execute(
            "SELECT count(*) FROM videos v LEFT JOIN video_embeddings e ON e.video_id = v.id "
            "AND e.model_version = 'v' WHERE e.video_id IS NULL OR e.created_at < v.updated_at"
        ).fetchone()
    assert missing == (0,)


def test_the_scheduler_runs_the_sync_where_credentials_are_set(url: str, deployed: Path) -> None:
    catalog = FakeCatalog(make_items(50, START, END))
    with FakeDmmServer(catalog) as fake:
        _sync(url, deployed, fake, SyncOptions(since=START, until=END))
        catalog.add(make_items(5, END + timedelta(hours=1), END + timedelta(hours=2), first=50))
        env = {**os.environ, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(deployed),
               "TWOTOWER_ARTIFACT_STORE": str(deployed / "store"), "TWOTOWER_DMM_API_URL": fake.url,
               "TWOTOWER_DMM_API_ID": "TEST_API_ID", "TWOTOWER_DMM_AFFILIATE_ID": "test-990",
               "TWOTOWER_DMM_RATE_LIMIT": "50"}  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "twotower", "schedule", "--once", "sync"], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    line = json.loads(run.stdout)
    assert run.returncode == 0 and line["status"] == "succeeded" and line["command"] == "twotower sync dmm", line
    assert _synced(url) == (55, 55, 55, 55)


def test_a_file_import_embeds_its_new_videos_too(url: str, deployed: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "videos.jsonl"
    jsonl.write_text("\n".join(json.dumps({"external_id": f"f{i}", "title": f"File video {i}", "tags": ["Drama"]})
                               for i in range(7)) + "\n")  # fmt: skip
    env = {**os.environ, "DATABASE_URL": url, "TWOTOWER_DATA_DIR": str(deployed),
           "TWOTOWER_ARTIFACT_STORE": str(deployed / "store")}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "twotower", "import", "catalog", str(jsonl), "--source", "shop"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and "7 video(s) embedded for the active version v" in run.stdout, run.stderr
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM videos v JOIN video_embeddings e ON e.video_id = v.id "
                           "AND e.model_version = 'v' WHERE v.source = 'shop'").fetchone()  # fmt: skip
    assert row == (7,)


def test_items_delisted_while_the_sync_pages_do_not_hide_others(url: str, deployed: Path) -> None:
    catalog = FakeCatalog(make_items(1000, START, END, seed=8))
    newest = catalog.content_ids()[::-1]  # the listing's order within the one window
    with FakeDmmServer(catalog) as fake:
        pages = {"n": 0}

        def delist(summary: Any, cursor: Any) -> None:  # after page 2: five items of page 1 leave the listing
            pages["n"] += 1
            if pages["n"] == 2:
                catalog.remove(newest[:5])

        values: dict[str, Any] = {"api_id": "TEST_API_ID", "affiliate_id": "test-990", "url": fake.url,
                                  "rate_limit": 100.0, "timeout": 5.0}  # fmt: skip
        with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db, \
                DmmClient(DmmConfig(**values)) as client:  # fmt: skip
            sync_dmm(db, client, None, SyncOptions(since=START, until=END, embed=False), on_page=delist)
    assert _external_ids(url) >= set(catalog.content_ids())  # every item still listed was stored


def test_hostile_items_are_stored_or_reported_never_block_the_sync(
    url: str, deployed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = make_items(30, START, END, seed=9)
    items[3]["review"] = {"count": "3000000000", "average": "1e400"}
    items[4]["title"] = "lone \ud800 surrogate"
    items[5]["volume"] = "99999"
    del items[6]["content_id"]
    from twotower.catalog import sync as sync_module

    real = sync_module.parse_item

    def parse(item: dict[str, Any]) -> Any:  # a value only the database refuses (a CHECK constraint)
        video = real(item)
        if video.external_id == items[7]["content_id"]:
            video.review_count = -1
        return video

    monkeypatch.setattr(sync_module, "parse_item", parse)
    with FakeDmmServer(FakeCatalog(items)) as fake:
        summary = _sync(url, deployed, fake, SyncOptions(since=START, until=END))
    assert summary.inserted == 28 and summary.skipped == 2, summary.problems
    assert any("without a content_id" in p for p in summary.problems)
    assert any(f"item {items[7]['content_id']}: refused by the database" in p for p in summary.problems)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT title, review_count, duration_seconds FROM videos WHERE external_id = %s",
                           (items[4]["content_id"],)).fetchone()  # fmt: skip
        big = conn.execute("SELECT review_count, review_average, duration_seconds FROM videos WHERE external_id = %s",
                           (items[3]["content_id"],)).fetchone()  # fmt: skip
        long = conn.execute("SELECT duration_seconds FROM videos WHERE external_id = %s",
                            (items[5]["content_id"],)).fetchone()  # fmt: skip
    assert row is not None and row[0] == "lone ? surrogate" and big == (None, None, big[2]) and long == (None,)


def test_the_watermark_never_runs_ahead_and_embedding_failures_do_not_hold_the_catalog(
    url: str, deployed: Path, tmp_path: Path
) -> None:
    catalog = FakeCatalog(make_items(20, START, END))
    with FakeDmmServer(catalog) as fake:
        ahead = datetime.now(UTC) + timedelta(days=30)
        values: dict[str, Any] = {"api_id": "TEST_API_ID", "affiliate_id": "test-990", "url": fake.url,
                                  "rate_limit": 100.0}  # fmt: skip
        with Database.open(Settings(database_url=url, data_dir=deployed), migrate=False) as db, \
                DmmClient(DmmConfig(**values)) as client:  # fmt: skip
            empty_store = LocalStore(tmp_path / "no-models-here")  # the active version cannot be fetched
            summary = sync_dmm(db, client, empty_store, SyncOptions(since=START, until=ahead,
                                                                    cache_dir=tmp_path / "cache"))  # fmt: skip
    assert summary.inserted == 20 and summary.embedded == 0 and summary.embed_error is not None
    assert summary.watermark_after is not None and summary.watermark_after <= datetime.now(UTC)
    with psycopg.connect(url) as conn:
        state = conn.execute("SELECT watermark, cursor FROM sync_state").fetchone()
    assert state == (summary.watermark_after, {})  # the catalog part is done: the next run starts after it
    with FakeDmmServer(catalog) as fake:
        run = sync_cli(url, deployed, fake.url, "--until", "2025-06-01")  # before the watermark, no --since
        _, err = run.communicate(timeout=60)
    assert run.returncode == 65 and "is not after the watermark" in err

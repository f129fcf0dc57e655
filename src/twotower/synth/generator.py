"""``twotower synth``: generate a catalog and swipes with planted tastes, and load them like any import.

Same seed, same data: every value (timestamps included) derives from ``numpy.random.default_rng(seed)`` and
a fixed epoch, and ids derive from the seed, so a second run into the same database changes nothing.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from twotower.errors import InputError
from twotower.ingest.loader import DecisionLoadResult, VideoLoadResult, load_decisions, load_videos
from twotower.ingest.records import DecisionRecord, VideoRecord, user_uuid
from twotower.synth.catalog import TAG_POOL, Catalog, make_catalog
from twotower.synth.names import (
    GENERIC_TAGS,
    TITLE_WORDS,
    director_name,
    label_name,
    maker_name,
    performer_name,
    series_name,
    tag_name,
)
from twotower.synth.swipes import Swipes, make_swipes

__all__ = ["EPOCH", "SynthConfig", "SynthResult", "generate", "validate"]

EPOCH = datetime(2021, 1, 1, tzinfo=UTC)  # the catalog's first day; never now(), so runs are reproducible
_CHUNK = 65_536


@dataclass(frozen=True)
class SynthConfig:
    videos: int = 2000
    users: int = 300
    decisions: int = 30000
    seed: int = 0
    tastes: int = 12  # number of planted latent tastes
    source: str = "synthetic"  # videos.source and the user-id namespace


@dataclass
class SynthResult:
    videos: VideoLoadResult
    decisions: DecisionLoadResult
    user_tastes: dict[uuid.UUID, list[int]]  # planted truth: each user's taste ids
    video_tastes: dict[str, int]  # external_id -> taste id
    seconds: float


def validate(config: SynthConfig) -> None:
    """Raise :class:`InputError` naming the flag and what it must be."""
    if config.videos < 1:
        raise InputError(f"--videos must be at least 1, got {config.videos:,}")
    if config.users < 1:
        raise InputError(f"--users must be at least 1, got {config.users:,}")
    if config.decisions < 0:
        raise InputError(f"--decisions must be at least 0, got {config.decisions:,}")
    cells = config.videos * config.users
    if config.decisions > cells:
        raise InputError(f"--decisions must be at most videos × users ({cells:,}), got {config.decisions:,}")
    if not 1 <= config.tastes <= config.videos:
        raise InputError(
            f"--tastes must be between 1 and the number of videos ({config.videos:,}), got {config.tastes:,}"
        )
    if config.seed < 0:
        raise InputError(f"--seed must be a non-negative integer, got {config.seed}")
    if not config.source.strip():
        raise InputError("--source must not be empty")


def external_id(seed: int, i: int) -> str:
    return f"syn-{seed}-{i:07d}"


def _video_records(config: SynthConfig, cat: Catalog, ext_ids: list[str]) -> Iterator[VideoRecord]:
    own_tags = cat.tastes * TAG_POOL
    tag_names = [tag_name(w) for w in cat.tag_word.tolist()] + list(GENERIC_TAGS)
    performers = [performer_name(i) for i in range(int(cat.performers.max()) + 1)]
    directors = [director_name(i) for i in range(int(cat.director.max()) + 1)]
    makers = [maker_name(i) for i in range(int(cat.maker.max()) + 1)]
    rows = zip(
        ext_ids, cat.taste.tolist(), cat.tags.tolist(), cat.performers.tolist(), cat.maker.tolist(),
        cat.label.tolist(), cat.series.tolist(), cat.volume.tolist(), cat.director.tolist(),
        cat.title_word.tolist(), cat.price.tolist(), cat.duration_s.tolist(), cat.released_s.tolist(),
        cat.review_count.tolist(), cat.review_average.tolist(), strict=True,
    )  # fmt: skip
    for ext, taste, tag_ids, perf_ids, mk, lb, sr, vol, dr, tw, price, dur, rel, n_rev, avg in rows:
        tags = [tag_names[t] for t in tag_ids if t >= 0]
        names = list(dict.fromkeys(performers[p] for p in perf_ids if p >= 0))
        maker = makers[mk]
        series = series_name(maker, sr) if sr >= 0 else None
        lead = next((tag_names[t] for t in tag_ids if 0 <= t < own_tags), tags[0])
        title = f"{lead} {TITLE_WORDS[tw % len(TITLE_WORDS)]}" + (f" Vol. {vol}" if series else "")
        yield VideoRecord(
            source=config.source,
            external_id=ext,
            title=title,
            description=(f"A {dur // 60}-minute {lead.lower()} feature from {maker}, starring {', '.join(names)}."),
            duration_seconds=dur,
            price=float(price),
            maker=maker,
            label=label_name(maker, lb),
            series=series,
            director=directors[dr] if dr >= 0 else None,
            product_released_at=EPOCH + timedelta(seconds=rel),
            thumbnail_url=f"https://img.example.com/thumbs/{ext}.jpg",
            sample_video_url=f"https://media.example.com/samples/{ext}.mp4",
            product_url=f"https://example.com/videos/{ext}",
            review_count=n_rev,
            review_average=None if math.isnan(avg) else avg,
            raw={"synthetic": {"taste": taste, "seed": config.seed}},
            tags=tags,
            performers=names,
        )


def _decision_records(
    source: str, ext_ids: list[str], user_ids: list[uuid.UUID], swipes: Swipes
) -> Iterator[DecisionRecord]:
    kinds = ("nope", "like")
    stamp = datetime.fromtimestamp
    epoch_s = int(EPOCH.timestamp())
    line = 0
    for lo in range(0, swipes.user.shape[0], _CHUNK):  # a chunk at a time: no million-object lists
        hi = lo + _CHUNK
        rows = zip(
            swipes.user[lo:hi].tolist(), swipes.video[lo:hi].tolist(), swipes.like[lo:hi].tolist(),
            (swipes.at_s[lo:hi] + epoch_s).tolist(), strict=True,
        )  # fmt: skip
        for u, v, like, at in rows:
            line += 1
            # positional: this loop runs once per decision, and keyword calls cost measurably more
            yield DecisionRecord(user_ids[u], kinds[like], stamp(at, UTC), None, source, ext_ids[v], line)


def generate(
    conn: psycopg.Connection[Any],
    config: SynthConfig,
    progress: Callable[[str], None] | None = None,
) -> SynthResult:
    """Generate and load a synthetic catalog and swipes inside the caller's transaction."""
    validate(config)
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)

    catalog = make_catalog(rng, config.videos, config.tastes)
    ext_ids = [external_id(config.seed, i) for i in range(config.videos)]
    say(f"generated {config.videos:,} videos in {config.tastes} tastes")
    # the swipes need only the catalog: draw them while the database inserts the videos (numpy and the
    # wait on the server both release the GIL); the thread is the only user of ``rng`` from here on
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make_swipes, rng, catalog, config.users, config.decisions)
        videos = load_videos(conn, _video_records(config, catalog, ext_ids))
        say(f"loaded videos: {videos.inserted:,} new, {videos.updated:,} updated, {videos.unchanged:,} unchanged")
        swipes = pending.result()
    user_ids = [user_uuid(config.source, f"{config.seed}-{j}") for j in range(config.users)]
    say(f"generated {config.decisions:,} decisions for {config.users:,} users")
    decisions = load_decisions(conn, _decision_records(config.source, ext_ids, user_ids, swipes))
    say(
        f"loaded decisions: {decisions.inserted:,} new, {decisions.updated:,} updated, "
        f"{decisions.unchanged:,} unchanged"
    )
    return SynthResult(
        videos=videos,
        decisions=decisions,
        user_tastes=dict(zip(user_ids, swipes.user_tastes, strict=True)),
        video_tastes=dict(zip(ext_ids, catalog.taste.tolist(), strict=True)),
        seconds=time.perf_counter() - started,
    )

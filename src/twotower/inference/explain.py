"""Reading a user and their feed the way a person would: their profile, the liked video behind each
recommendation, and (for demos) users with clearly different tastes. Read-only queries on the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

__all__ = [
    "Dataset",
    "Picked",
    "Profile",
    "data_signature",
    "dataset",
    "has_synthetic",
    "nearest_liked",
    "pick_users",
    "profile",
    "synthetic_tastes",
]


@dataclass
class Picked:
    user_id: uuid.UUID
    taste: str  # the dominant taste (synthetic: the planted taste id) or tag of the user's likes
    share: float  # of the user's likes
    likes: int


@dataclass
class Profile:
    likes: int
    nopes: int
    top_tags: list[tuple[str, int]]  # the tags of their likes, most frequent first


_TASTE_SQL = """
WITH likes AS (
    SELECT d.user_id, d.video_id FROM user_video_decisions d WHERE d.decision_type = 'like'
), total AS (
    SELECT user_id, count(*) AS n FROM likes GROUP BY 1 HAVING count(*) >= %(min_likes)s
), per AS (
    {per}
)
SELECT p.user_id, p.k, p.n, t.n FROM per p JOIN total t USING (user_id)
ORDER BY p.n::float8 / t.n * ln(1 + p.n) DESC, p.user_id
LIMIT 20000
"""
_PER_TASTE = """SELECT l.user_id, v.raw->'synthetic'->>'taste' AS k, count(*) AS n
    FROM likes l JOIN videos v ON v.id = l.video_id WHERE v.raw ? 'synthetic' GROUP BY 1, 2"""
_PER_TAG = """SELECT l.user_id, t.name AS k, count(*) AS n
    FROM likes l JOIN video_tags vt ON vt.video_id = l.video_id JOIN tags t ON t.id = vt.tag_id GROUP BY 1, 2"""


def has_synthetic(conn: psycopg.Connection[Any]) -> bool:
    """Whether the catalog holds synthetic videos (their planted taste explains a feed)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM videos WHERE raw ? 'synthetic')").fetchone()
    return bool(row and row[0])


def pick_users(conn: psycopg.Connection[Any], n: int, *, synthetic: bool, min_likes: int = 5) -> list[Picked]:
    """``n`` users whose likes are dominated by different tastes (synthetic: the planted taste of the liked
    videos; otherwise their most liked tag), preferring strong and well-supported preferences."""
    sql = _TASTE_SQL.format(per=_PER_TASTE if synthetic else _PER_TAG)
    rows = conn.execute(sql, {"min_likes": min_likes}).fetchall()
    picked: list[Picked] = []
    users: set[uuid.UUID] = set()
    tastes: set[str] = set()
    for user_id, k, count, total in rows:
        if user_id in users or k in tastes:
            continue
        picked.append(Picked(user_id, str(k), int(count) / int(total), int(total)))
        users.add(user_id)
        tastes.add(k)
        if len(picked) == n:
            return picked
    for user_id, k, count, total in rows:  # fewer tastes than users asked for: any other well-defined users
        if len(picked) == n:
            break
        if user_id not in users:
            picked.append(Picked(user_id, str(k), int(count) / int(total), int(total)))
            users.add(user_id)
    return picked


def profile(conn: psycopg.Connection[Any], user: uuid.UUID, top: int = 5) -> Profile:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE decision_type = 'like'), count(*) FILTER (WHERE decision_type = 'nope') "
        "FROM user_video_decisions WHERE user_id = %s",
        (user,),
    ).fetchone()
    likes, nopes = (int(x) for x in row) if row else (0, 0)
    tags = conn.execute(
        "SELECT t.name, count(*) FROM user_video_decisions d JOIN video_tags vt ON vt.video_id = d.video_id "
        "JOIN tags t ON t.id = vt.tag_id WHERE d.user_id = %s AND d.decision_type = 'like' "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s",
        (user, top),
    ).fetchall()
    return Profile(likes, nopes, [(str(t), int(c)) for t, c in tags])


def nearest_liked(
    conn: psycopg.Connection[Any], user: uuid.UUID, videos: list[uuid.UUID], version: str
) -> dict[uuid.UUID, tuple[str, float]]:
    """For each video, the user's liked video nearest to it (cosine of the version's item embeddings): its title
    and that cosine. Videos without an embedding in ``version`` are left out."""
    if not videos:
        return {}
    rows = conn.execute(
        """SELECT DISTINCT ON (r.id) r.id, v.title, 1 - (er.embedding <=> el.embedding)
           FROM unnest(%s::uuid[]) AS r (id)
           JOIN video_embeddings er ON er.video_id = r.id AND er.model_version = %s
           JOIN user_video_decisions d ON d.user_id = %s AND d.decision_type = 'like'
           JOIN video_embeddings el ON el.video_id = d.video_id AND el.model_version = %s
           JOIN videos v ON v.id = d.video_id
           ORDER BY r.id, er.embedding <=> el.embedding, v.title""",
        (videos, version, user, version),
    ).fetchall()
    return {r[0]: (str(r[1]), float(r[2])) for r in rows}


def synthetic_tastes(conn: psycopg.Connection[Any], videos: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The planted taste of each synthetic video."""
    rows = conn.execute("SELECT id, raw->'synthetic'->>'taste' FROM videos WHERE id = ANY(%s)", (videos,)).fetchall()
    return {r[0]: str(r[1]) for r in rows}


def data_signature(conn: psycopg.Connection[Any]) -> list[Any]:
    """Changes whenever videos or swipes change (counts and latest stamps): a cheap "is this the same data"."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM videos), (SELECT max(updated_at)::text FROM videos), "
        "(SELECT count(*) FROM user_video_decisions), (SELECT max(created_at)::text FROM user_video_decisions)"
    ).fetchone()
    return list(row) if row else []


@dataclass
class Dataset:
    videos: int  # of this source (and synthetic seed)
    decisions: int  # on those videos
    other_videos: int  # everything else in the catalog


def dataset(conn: psycopg.Connection[Any], source: str, synthetic_seed: int | None = None) -> Dataset:
    """How much of one data set is loaded: videos of ``source`` (and, for synthetic data, of that seed), the
    decisions on them, and how many other videos share the catalog."""
    seed = None if synthetic_seed is None else str(synthetic_seed)
    row = conn.execute(
        """WITH ours AS (
               SELECT id FROM videos WHERE source = %(source)s
                 AND (%(seed)s::text IS NULL OR raw->'synthetic'->>'seed' = %(seed)s::text))
           SELECT (SELECT count(*) FROM ours),
                  (SELECT count(*) FROM user_video_decisions d JOIN ours o ON o.id = d.video_id),
                  (SELECT count(*) FROM videos) - (SELECT count(*) FROM ours)""",
        {"source": source, "seed": seed},
    ).fetchone()
    return Dataset(*(int(x) for x in row)) if row else Dataset(0, 0, 0)

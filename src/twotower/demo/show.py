"""What the demo prints for a user: their taste, and their feed with the reason behind each video."""

from __future__ import annotations

import time
import uuid
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from twotower.inference.explain import Picked, Profile

__all__ = ["print_user", "stage_done"]


def print_user(
    out: Console,
    n: int,
    user: Picked,
    seen: Profile,
    answer: dict[str, Any],
    because: dict[uuid.UUID, tuple[str, float]],
    tastes: dict[uuid.UUID, str] | None,
) -> None:
    """``answer`` is the API's response; ``because``: the liked video nearest each recommendation; ``tastes``:
    the planted taste of each video (synthetic data only)."""
    synthetic = tastes is not None
    taste = f"are planted taste {user.taste}" if synthetic else f"carry the tag {escape(repr(user.taste))}"
    out.print(
        f"\n[bold]user {n}[/] {user.user_id}: {seen.likes:,} likes, {seen.nopes:,} nopes; {user.share:.0%} of the "
        f"likes {taste}"
    )
    out.print("  top liked tags: " + ", ".join(f"{t} ({c})" for t, c in seen.top_tags), markup=False)
    recs = answer.get("recommendations", [])
    algorithm = answer.get("algorithm", "?")
    table = Table(title=f"recommendations ({algorithm}, version {answer.get('model_version') or '-'})",
                  title_justify="left")  # fmt: skip
    for name in ("#", "title", "maker", "tags", *(["taste"] if synthetic else []), "score", "why"):
        table.add_column(name, justify="right" if name in ("#", "taste", "score") else "left")
    for i, rec in enumerate(recs, 1):
        vid = uuid.UUID(rec["id"])
        if algorithm == "popularity":
            why = "popular"
        elif vid in because:
            title, cosine = because[vid]
            why = f"like “{escape(title)}” (cos {cosine:.2f})"
        else:
            why = algorithm
        tags = ", ".join(rec.get("tags", [])[:4])
        row = [str(i), escape(rec.get("title", "")), escape(rec.get("maker") or "-"), escape(tags)]
        if tastes is not None:
            t = tastes.get(vid, "?")
            row.append(f"[green]{t}[/]" if t == user.taste else t)
        row += [f"{rec.get('similarity_score', 0):.3f}", why]
        table.add_row(*row)
    out.print(table)


def stage_done(out: Console, clock: dict[str, Any]) -> None:
    """One line for the deploy stage that just ended (``clock``: its name and start time)."""
    from twotower.pipeline.deploy import STAGE_TEXT  # lazy: torch, 2.5 s; show is imported before training

    if clock["stage"]:
        took = time.perf_counter() - clock["t"]
        text = STAGE_TEXT.get(clock["stage"], clock["stage"])
        out.print(f"   [dim]{clock['stage']:<9}[/] {text} [dim]({took:.1f}s)[/]")

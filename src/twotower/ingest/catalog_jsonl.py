"""``twotower import catalog FILE.jsonl``: one JSON object per line, one video each.

Required: ``external_id`` and ``title``. Optional: every column of ``videos`` (``source`` defaults to the
``--source`` option), ``tags`` and ``performers`` as lists of names. The whole object is kept in ``raw``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from twotower.ingest.parsing import has_nul, id_problem, open_text_lines, parse_timestamp, release_date_problem
from twotower.ingest.records import Problems, VideoRecord

__all__ = ["CatalogItem", "read_catalog_jsonl"]

_Name = Annotated[str, Field(min_length=1, max_length=200)]
_Url = Annotated[str, Field(max_length=2048, pattern=r"^https?://")]


class CatalogItem(BaseModel):
    """The accepted shape of one catalog line."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    external_id: Annotated[str, Field(min_length=1, max_length=200)]
    title: Annotated[str, Field(min_length=1, max_length=1000)]
    source: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] | None = None
    description: Annotated[str, Field(max_length=20000)] | None = None
    duration_seconds: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] | None = None
    price: Annotated[Decimal, Field(ge=0, le=Decimal("9999999999.99"), decimal_places=2)] | None = None
    maker: _Name | None = None
    label: _Name | None = None
    series: _Name | None = None
    director: _Name | None = None
    product_released_at: datetime | None = None
    thumbnail_url: _Url | None = None
    sample_video_url: _Url | None = None
    product_url: _Url | None = None
    review_count: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    review_average: Annotated[float, Field(ge=0, le=100)] | None = None
    is_active: bool = True
    tags: Annotated[list[_Name], Field(max_length=500)] = []
    performers: Annotated[list[_Name], Field(max_length=500)] = []

    @field_validator("external_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("external_id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if problem := id_problem(value, "external_id"):
            raise ValueError(problem)
        return value

    @field_validator("price", "review_average", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("product_released_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> Any:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return parse_timestamp(str(value))
        return value

    @field_validator("product_released_at")
    @classmethod
    def _release_rule(cls, value: datetime | None) -> datetime | None:
        if value is not None and (problem := release_date_problem(value)):
            raise ValueError(f"release date {problem}")
        return value


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "item"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def read_catalog_jsonl(path: Path, source: str, problems: Problems) -> list[VideoRecord]:
    """Parse and validate every line; bad lines go to ``problems`` with their line numbers."""
    records: list[VideoRecord] = []
    for number, text in open_text_lines(path, problems):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.add(number, f"malformed JSON: {exc.msg} at column {exc.colno}")
            continue
        except RecursionError:
            problems.add(number, "malformed JSON: nested too deeply")
            continue
        if not isinstance(obj, dict):
            problems.add(number, f"expected a JSON object, got {type(obj).__name__}")
            continue
        if has_nul(obj):
            problems.add(number, "contains a NUL character (\\u0000), which PostgreSQL cannot store")
            continue
        try:
            item = CatalogItem.model_validate(obj)
        except ValidationError as exc:
            problems.add(number, _describe(exc))
            continue
        records.append(
            VideoRecord(
                source=item.source or source,
                external_id=item.external_id,
                title=item.title,
                description=item.description,
                duration_seconds=item.duration_seconds,
                price=item.price,
                maker=item.maker,
                label=item.label,
                series=item.series,
                director=item.director,
                product_released_at=item.product_released_at,
                thumbnail_url=item.thumbnail_url,
                sample_video_url=item.sample_video_url,
                product_url=item.product_url,
                review_count=item.review_count,
                review_average=item.review_average,
                is_active=item.is_active,
                raw=obj,
                tags=item.tags,
                performers=item.performers,
                line=number,
            )
        )
    return records

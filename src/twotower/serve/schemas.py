"""Request and response bodies of the serving API (pydantic: validated, documented in the OpenAPI schema)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic import Strict as PydanticStrict

# names are matched against the database: no control characters (Postgres text cannot hold NUL), and not blank
# (the schema says so: white space around a name is stripped)
Name = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=200, strip_whitespace=True,
        pattern=r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$",
    ),
]  # fmt: skip
MAX_LIMIT = 100


def _iso_only(value: object) -> object:
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date-time string")
    return value


def whole_number(value: object) -> object:
    """A query parameter that is a whole number as written (``20``, not ``20.0`` or ``2e1``)."""
    if isinstance(value, str) and not value.isdigit():
        raise ValueError("expected a whole number")
    return value


def _json_integer(value: object) -> object:
    """A JSON integer (``5``, or ``5.0``, which JSON Schema counts as one): not ``true``, not ``"5"``."""
    if isinstance(value, bool | str):
        raise ValueError("expected an integer")
    return value


# JSON types are taken as they are: no true for 1, 0 for false, a number for a date (pydantic coerces by default)
JsonInteger = BeforeValidator(_json_integer)  # after the type's bounds: Annotated[int, Field(ge=..), JsonInteger]
Number = Annotated[float, PydanticStrict()]  # an integer is a number too; true is not
Bool = Annotated[bool, PydanticStrict()]
DateTime = Annotated[datetime, BeforeValidator(_iso_only)]


# a model version name: what registry/store.py's valid_version and the model_versions CHECK accept
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
VERSION_MAX_LENGTH = 128
Version = Annotated[str, Field(max_length=VERSION_MAX_LENGTH, pattern=VERSION_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersIn(Strict):
    exclude_tags: list[Name] = Field(default_factory=list, max_length=100, description="Skip videos with any of these.")
    include_tags: list[Name] = Field(default_factory=list, max_length=100, description="Only videos with one of these.")
    makers: list[Name] = Field(default_factory=list, max_length=100, description="Only videos from these makers.")
    max_price: Annotated[Number, Field(ge=0, le=1e9)] | None = None
    released_after: DateTime | None = None


class RecommendationsIn(Strict):
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), JsonInteger] = Field(
        default=20, description="How many videos (exactly this many if available)."
    )
    exclude_liked: Bool = Field(default=True, description="Also exclude videos the user liked (nopes always are).")
    filters: FiltersIn = Field(default_factory=FiltersIn)


class EdgeRecommendationsIn(BaseModel):
    """The app's edge-function request: its two fields and the filters of /v1/recommendations (other fields are
    ignored, as the app's function did)."""

    model_config = ConfigDict(extra="ignore")
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), JsonInteger] = 20
    exclude_liked: Bool = True
    filters: FiltersIn = Field(default_factory=FiltersIn)


class EdgeVideoOut(BaseModel):
    """A recommended video as the app's edge function returns it."""

    id: uuid.UUID
    title: str
    thumbnail_url: str | None = None
    maker: str | None = None
    price: float | None = None
    performers: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    similarity_score: float


class VideoOut(EdgeVideoOut):
    """... and with the rest of its metadata."""

    sample_video_url: str | None = None
    product_url: str | None = None
    duration_seconds: int | None = None
    product_released_at: datetime | None = None


class RecommendationsOut(BaseModel):
    recommendations: list[VideoOut]
    total_count: int
    algorithm: Literal["two_tower", "linear", "popularity"]
    model_version: str | None
    experiment_arm: Literal["control", "candidate"] | None = Field(
        default=None, description="The arm of the running experiment that answered (null outside one)."
    )


class EdgeRecommendationsOut(BaseModel):
    recommendations: list[EdgeVideoOut]
    total_count: int
    algorithm: str
    model_version: str | None = None
    experiment_arm: Literal["control", "candidate"] | None = None


class DecisionIn(Strict):
    video_id: uuid.UUID
    decision_type: Literal["like", "nope"]


class DecisionOut(BaseModel):
    video_id: uuid.UUID
    decision_type: Literal["like", "nope"]
    created_at: datetime


class EmbeddingOut(BaseModel):
    model_version: str
    dimension: int
    embedding: list[float]


class ItemIn(Strict):
    id: uuid.UUID | None = Field(default=None, description="A catalog video's id: its learned id embedding is used.")
    title: str = Field(default="", max_length=1000)
    tags: list[Name] = Field(default_factory=list, max_length=200)
    performers: list[Name] = Field(default_factory=list, max_length=100)
    maker: Name | None = None
    label: Name | None = None
    series: Name | None = None
    director: Name | None = None
    price: Annotated[Number, Field(ge=0, le=1e9)] | None = None
    duration_seconds: Annotated[int, Field(ge=0, le=10**7), JsonInteger] | None = None
    product_released_at: DateTime | None = None
    review_count: Annotated[int, Field(ge=0, le=10**9), JsonInteger] | None = None
    review_average: Annotated[Number, Field(ge=0, le=5)] | None = None


class ItemsIn(Strict):
    videos: list[ItemIn] = Field(min_length=1, max_length=1000)


class ItemsOut(BaseModel):
    model_version: str
    dimension: int
    embeddings: list[list[float]]


class ModelOut(BaseModel):
    version: str
    status: str
    embedding_dim: int
    created_at: datetime
    activated_at: datetime | None
    videos_embedded: int | None


class ReplicaOut(BaseModel):
    name: str
    state: Literal["ok", "lagging", "down", "not_a_standby", "starting"]
    lag_seconds: float | None = Field(description="null: unknown (down, or behind every position kept).")
    lag_bytes: int | None
    usable: bool = Field(description="It takes reads now.")


class ReadyOut(BaseModel):
    status: Literal["ready"]
    model_version: str | None = Field(description="The version answering (null: the fallbacks answer).")
    active_version: str | None
    algorithm: Literal["two_tower", "fallback"]
    note: str | None
    replicas: list[ReplicaOut] | None = Field(default=None, description="Only with read replicas (absent without).")


class ErrorOut(BaseModel):
    error: str
    message: str
